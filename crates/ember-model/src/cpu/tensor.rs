//! Zero-copy passage between Burn tensors on flex and the slices the CPU
//! kernels work on: inputs are borrowed from the flex primitive's storage,
//! outputs are wrapped `Vec`s.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Tensor, TensorData};

/// A flex tensor's f32 storage, contiguous (copied only if it was a strided
/// view). `None` if the tensor is not an f32 tensor on flex.
pub struct HostF32 {
    primitive: FlexTensor,
}

impl HostF32 {
    pub fn new<const D: usize>(tensor: Tensor<D>) -> Option<Self> {
        if tensor.dtype() != DType::F32 {
            return None;
        }
        let primitive = tensor.try_into_primitive::<Flex>().ok()?;
        let primitive = if primitive.as_slice::<f32>().is_some() { primitive } else { primitive.to_contiguous() };
        Some(Self { primitive })
    }

    pub fn as_slice(&self) -> &[f32] {
        // `new` made it contiguous f32.
        self.primitive.as_slice::<f32>().unwrap_or(&[])
    }
}

/// Wraps `values` (row-major, `shape`) as a flex tensor without copying.
pub fn from_vec<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}
