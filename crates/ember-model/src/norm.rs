//! RMSNorm as in Hugging Face's `Qwen3RMSNorm` / `LlamaRMSNorm`: statistics in
//! f32 whatever the model dtype, then back to the input dtype before the
//! weight multiplies.

use burn::tensor::{DType, Tensor};

use crate::cpu::ops::rms_norm;
use crate::cpu::tensor::{HostF32, from_vec};
use crate::error::Result;
use crate::weights::Loader;

pub struct RmsNorm {
    weight: Tensor<1>,
    /// The weight on the host, for the CPU fast path.
    host_weight: Option<Vec<f32>>,
    eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` of length `dim`.
    pub fn load(loader: &Loader<'_>, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight: Tensor<1> = loader.tensor(&format!("{prefix}.weight"), [dim])?;
        let host_weight = if loader.keep_quantized { weight.to_data().try_to_vec::<f32>().ok() } else { None };
        Ok(Self {
            weight,
            host_weight,
            eps,
        })
    }

    /// The weight and epsilon on the host (the CPU fast path).
    pub(crate) fn host(&self) -> Option<(&[f32], f64)> {
        self.host_weight.as_deref().map(|w| (w, self.eps))
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let (Some(weight), Some(host)) = (&self.host_weight, HostF32::new(&x)) {
            let mut out = vec![0.0; host.as_slice().len()];
            rms_norm(host.as_slice(), weight, self.eps, &mut out);
            return from_vec(out, x.dims());
        }
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * variance.add_scalar(self.eps).sqrt().recip();
        let weight = self.weight.clone().unsqueeze::<D>();
        normed.cast(dtype) * weight
    }
}
