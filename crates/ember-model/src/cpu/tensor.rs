//! Zero-copy passage between Burn tensors on flex and the slices the CPU
//! kernels work on: inputs are borrowed from the flex primitive's storage,
//! outputs are wrapped `Vec`s.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// A flex tensor's f32 storage, contiguous (copied only if it was a strided
/// view).
pub struct HostF32 {
    primitive: FlexTensor,
}

impl HostF32 {
    /// `None` if `tensor` is not an f32 tensor on flex. Shares the storage.
    pub fn new<const D: usize>(tensor: &Tensor<D>) -> Option<Self> {
        if tensor.dtype() != DType::F32 || tensor.device() != Device::flex() {
            return None;
        }
        let primitive = tensor.clone().try_into_primitive::<Flex>().ok()?;
        let primitive = if primitive.as_slice::<f32>().is_some() { primitive } else { primitive.to_contiguous() };
        Some(Self { primitive })
    }

    pub fn as_slice(&self) -> &[f32] {
        // `new` made it contiguous f32.
        self.primitive.as_slice::<f32>().unwrap_or(&[])
    }

    /// The values as an owned `Vec`: no copy once the source tensor is dropped.
    pub fn into_vec(self) -> Vec<f32> {
        // `new` checked the dtype, the one way this conversion can fail.
        self.primitive.into_data().try_into_vec::<f32>().unwrap_or_default()
    }
}

/// Wraps `values` (row-major, `shape`) as a flex tensor without copying.
pub fn from_vec<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(values, shape)))
}

/// A tensor's values as a host `Vec`: no copy for an unshared f32 tensor on
/// flex (the fast path's own), converted otherwise.
pub fn into_host_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    match HostF32::new(&t) {
        Some(host) => {
            drop(t);
            host.into_vec()
        }
        None => t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default(),
    }
}
