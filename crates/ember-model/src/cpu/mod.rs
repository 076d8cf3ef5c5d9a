//! The CPU fast path, used when the model runs on Burn's flex device in f32:
//! quantized weights stay in their GGML blocks and are multiplied by
//! hand-written SIMD kernels on a persistent thread pool. The layers reach
//! it through their own seams (`Linear`, the embedding), so the generic Burn
//! code stays the one implementation for wgpu and CUDA, and the reference
//! the fast path is tested against.

pub mod attention;
pub mod kernels;
pub mod kv;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quant;
pub(crate) mod tensor;

use burn::tensor::{DType, Device};

pub use kernels::Isa;
pub use quant::{QuantMatrix, QuantType, WeightBytes};

/// Whether a model on `device` in `dtype` takes the fast path.
pub fn applies(device: &Device, dtype: DType) -> bool {
    dtype == DType::F32 && *device == Device::flex()
}

/// A raw output pointer that the tasks of one parallel region write through,
/// each to its own disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(*mut f32);

// SAFETY: the regions that create one give every task disjoint elements.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self(out.as_mut_ptr())
    }

    /// A method, so closures capture the whole (Sync) wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
