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
