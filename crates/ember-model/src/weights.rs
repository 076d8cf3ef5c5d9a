//! The seam between weight files and the network: a [`WeightSource`] hands
//! out host tensors by checkpoint key (Hugging Face names), and [`Loader`]
//! puts them on the device in the chosen dtype. Safetensors and GGUF (which
//! renames, and can hand out quantized blocks as they are) both implement it.

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::cpu::QuantMatrix;
use crate::error::Result;

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
}

impl Loader<'_> {
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = self.source.read(name, &shape)?.convert_dtype(self.dtype);
        Ok(Tensor::from_data(data, (self.device, self.dtype)))
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
