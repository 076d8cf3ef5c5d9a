//! RMSNorm as in Hugging Face's `Qwen3RMSNorm` / `LlamaRMSNorm`: statistics in
//! f32 whatever the model dtype, then back to the input dtype before the
//! weight multiplies.

use burn::tensor::{DType, Tensor};

use crate::error::Result;
use crate::weights::Loader;

pub struct RmsNorm {
    weight: Tensor<1>,
    eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` of length `dim`.
    pub fn load(loader: &Loader<'_>, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: loader.tensor(&format!("{prefix}.weight"), [dim])?,
            eps,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * variance.add_scalar(self.eps).sqrt().recip();
        let weight = self.weight.clone().unsqueeze::<D>();
        normed.cast(dtype) * weight
    }
}
