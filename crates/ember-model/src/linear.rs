//! Projection layers. Weights stay in PyTorch's `[out, in]` layout (the
//! checkpoint's own), which is also the layout a matrix-vector product reads
//! row by row while decoding.

use burn::tensor::Tensor;

use crate::error::Result;
use crate::weights::Loader;

/// `y = x W^T + b`.
///
/// The weight is an enum so that quantized block kernels can slot in beside
/// the dense float path without touching the layers that call `forward`.
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor<1>>,
}

pub enum LinearWeight {
    /// Dense float weight, `[out, in]`.
    Dense(Tensor<2>),
}

impl Linear {
    /// Loads `{prefix}.weight` (`[out_features, in_features]`) and, if `bias`, `{prefix}.bias`.
    pub fn load(
        loader: &Loader<'_>,
        prefix: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = loader.tensor(&format!("{prefix}.weight"), [out_features, in_features])?;
        let bias = loader.optional(&format!("{prefix}.bias"), [out_features], bias)?;
        Ok(Self::from_weight(weight, bias))
    }

    /// Wraps an `[out, in]` weight (used for tied embeddings).
    pub fn from_weight(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: LinearWeight::Dense(weight),
            bias,
        }
    }

    /// `x`: `[tokens, in]` -> `[tokens, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let LinearWeight::Dense(weight) = &self.weight;
        let y = x.matmul(weight.clone().transpose());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim(0),
            None => y,
        }
    }
}
