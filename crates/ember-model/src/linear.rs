//! Projection layers. Weights stay in PyTorch's `[out, in]` layout (the
//! checkpoint's own), which is also the layout a matrix-vector product reads
//! row by row while decoding.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};

use crate::cpu::matmul::{Projection, matmul};
use crate::cpu::tensor::{HostF32, from_vec};
use crate::cpu::QuantMatrix;
use crate::error::Result;
use crate::weights::Loader;

/// `y = x W^T + b`.
///
/// The weight is an enum so that quantized block kernels slot in beside the
/// dense float path without touching the layers that call `forward`.
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor<1>>,
    /// The bias on the host, beside a quantized weight (the CPU fast path).
    host_bias: Option<Vec<f32>>,
}

/// A quantized projection as the fast path's host loop applies it.
#[derive(Clone, Copy)]
pub(crate) struct HostLinear<'a> {
    weight: &'a QuantMatrix,
    bias: Option<&'a [f32]>,
}

pub enum LinearWeight {
    /// Dense float weight, `[out, in]`, on any device.
    Dense(Tensor<2>),
    /// GGML blocks, `[out, in]`, multiplied by the CPU kernels (flex, f32).
    Quantized(Arc<QuantMatrix>),
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
        let name = format!("{prefix}.weight");
        let bias = loader.optional(&format!("{prefix}.bias"), [out_features], bias)?;
        if let Some(q) = loader.quantized(&name, [out_features, in_features])? {
            return Ok(Self::quantized(Arc::new(q), bias));
        }
        let weight = loader.tensor(&name, [out_features, in_features])?;
        Ok(Self::from_weight(weight, bias))
    }

    /// Wraps an `[out, in]` weight (used for tied embeddings).
    pub fn from_weight(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self {
            weight: LinearWeight::Dense(weight),
            bias,
            host_bias: None,
        }
    }

    /// Wraps a quantized `[out, in]` weight (a projection, or a tied embedding).
    pub fn quantized(weight: Arc<QuantMatrix>, bias: Option<Tensor<1>>) -> Self {
        let host_bias = bias.as_ref().and_then(|b| b.to_data().try_to_vec::<f32>().ok());
        Self {
            weight: LinearWeight::Quantized(weight),
            bias,
            host_bias,
        }
    }

    /// The projection as host data, when its weight is quantized.
    pub(crate) fn host(&self) -> Option<HostLinear<'_>> {
        match (&self.weight, &self.bias, &self.host_bias) {
            (LinearWeight::Quantized(weight), None, _) => Some(HostLinear { weight, bias: None }),
            (LinearWeight::Quantized(weight), Some(_), Some(bias)) => Some(HostLinear {
                weight,
                bias: Some(bias),
            }),
            _ => None,
        }
    }

    /// `x`: `[tokens, in]` -> `[tokens, out]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let mut outputs = Self::forward_group(&[self], x);
        outputs.pop().unwrap_or_else(|| unreachable!("one layer in, one output out"))
    }

    /// Several projections of the same input. Quantized ones run in one
    /// parallel region, so their rows are shared out over the threads together.
    pub fn forward_group(layers: &[&Linear], x: Tensor<2>) -> Vec<Tensor<2>> {
        let [tokens, cols] = x.dims();
        let hosts: Option<Vec<HostLinear<'_>>> =
            layers.iter().map(|l| l.host().filter(|h| h.weight.cols() == cols)).collect();
        let (Some(hosts), Some(host)) = (hosts.as_ref(), hosts.as_ref().and_then(|_| HostF32::new(&x))) else {
            return layers.iter().map(|l| l.forward_alone(x.clone())).collect();
        };
        let mut outs: Vec<Vec<f32>> = vec![Vec::new(); hosts.len()];
        Self::project_host(hosts, host.as_slice(), tokens, &mut outs.iter_mut().collect::<Vec<_>>());
        hosts.iter().zip(outs).map(|(h, out)| from_vec(out, [tokens, h.weight.rows()])).collect()
    }

    /// Several projections of `x` (`[tokens, cols]`) on the host, each into
    /// its buffer (resized to `[tokens, rows]`), in one parallel region.
    pub(crate) fn project_host(layers: &[HostLinear<'_>], x: &[f32], tokens: usize, outs: &mut [&mut Vec<f32>]) {
        for (layer, out) in layers.iter().zip(outs.iter_mut()) {
            // Every element is written by the kernels: no zeroing needed
            // beyond what growing the buffer does.
            out.resize(tokens * layer.weight.rows(), 0.0);
        }
        let mut projections: Vec<Projection<'_>> = layers
            .iter()
            .zip(outs.iter_mut())
            .map(|(layer, out)| Projection {
                weight: layer.weight,
                out: out.as_mut_slice(),
            })
            .collect();
        matmul(x, tokens, &mut projections);
        for (layer, out) in layers.iter().zip(outs.iter_mut()) {
            if let Some(bias) = layer.bias {
                for row in out.chunks_exact_mut(bias.len()) {
                    row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                }
            }
        }
    }

    /// One projection through Burn: dense weights on any device, or a
    /// quantized weight met by an input the kernels cannot read (dequantized
    /// on the fly; correct, and never the case on the fast path).
    fn forward_alone(&self, x: Tensor<2>) -> Tensor<2> {
        let y = match &self.weight {
            LinearWeight::Dense(weight) => x.matmul(weight.clone().transpose()),
            LinearWeight::Quantized(w) => {
                let dense = Tensor::<2>::from_data(
                    TensorData::new(w.dequantize(), [w.rows(), w.cols()]),
                    (&x.device(), x.dtype()),
                );
                x.matmul(dense.transpose())
            }
        };
        self.add_bias(y)
    }

    fn add_bias(&self, y: Tensor<2>) -> Tensor<2> {
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim(0),
            None => y,
        }
    }
}
