//! The seam between weight files and the network: a [`WeightSource`] hands
//! out host tensors by checkpoint key (Hugging Face names), and [`Loader`]
//! puts them on the device in the chosen dtype. Safetensors and GGUF (which
//! renames, and can hand out quantized blocks as they are) both implement it.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::cpu::quant::quantize;
use crate::cpu::{QuantMatrix, QuantType, WeightBytes};
use crate::error::{ModelError, Result};

/// Tensors by Hugging Face checkpoint key.
pub trait WeightSource {
    /// Whether the checkpoint holds `name` (e.g. `lm_head.weight` is absent when tied).
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name` in its stored float dtype, after checking its shape.
    fn read(&self, name: &str, expected_shape: &[usize]) -> Result<TensorData>;
    /// The matrix `name` as the quantized blocks it is stored in, for the
    /// CPU kernels; `None` when it is stored as floats (then `read` it).
    fn read_quantized(&self, name: &str, expected_shape: [usize; 2]) -> Result<Option<QuantMatrix>> {
        let _ = (name, expected_shape);
        Ok(None)
    }
}

/// Moves tensors from a source to a device, converting to one dtype.
pub struct Loader<'a> {
    pub source: &'a dyn WeightSource,
    pub device: &'a Device,
    pub dtype: DType,
    /// Whether matrices stored quantized stay so (the CPU fast path).
    pub keep_quantized: bool,
    /// In-situ quantization: float matrices are quantized to this at load
    /// (only with `keep_quantized`).
    pub quantize: Option<QuantType>,
}

impl Loader<'_> {
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = self.source.read(name, &shape)?.convert_dtype(self.dtype);
        Ok(Tensor::from_data(data, (self.device, self.dtype)))
    }

    /// The matrix `name` as blocks for the CPU kernels, when the fast path
    /// is on: as stored if the file has it quantized, else quantized now if
    /// in-situ quantization is asked for (and its rows are whole blocks).
    /// `None`: load it as a dense tensor.
    pub fn quantized(&self, name: &str, shape: [usize; 2]) -> Result<Option<QuantMatrix>> {
        if !self.keep_quantized {
            return Ok(None);
        }
        if let Some(stored) = self.source.read_quantized(name, shape)? {
            return Ok(Some(stored));
        }
        let Some(ty) = self.quantize else { return Ok(None) };
        let [rows, cols] = shape;
        if !cols.is_multiple_of(ty.block().0) {
            return Ok(None);
        }
        let bad = |reason: String| ModelError::BadTensor {
            path: "in-situ quantization".into(),
            tensor: name.to_owned(),
            reason,
        };
        let values = self.source.read(name, &shape)?.convert_dtype(DType::F32);
        let values: Vec<f32> = values.try_into_vec().map_err(|e| bad(format!("{e:?}")))?;
        let mut bytes = Vec::with_capacity(rows * cols / ty.block().0 * ty.block().1);
        quantize(ty, &values, &mut bytes).map_err(|e| bad(e.to_string()))?;
        QuantMatrix::new(ty, rows, cols, WeightBytes::Owned(bytes.into()))
            .map(Some)
            .map_err(|e| bad(e.to_string()))
    }

    pub fn optional<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
        present: bool,
    ) -> Result<Option<Tensor<D>>> {
        if present { self.tensor(name, shape).map(Some) } else { Ok(None) }
    }
}
