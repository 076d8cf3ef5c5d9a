//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.

use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::config::ModelConfig;
use crate::cpu::ops::silu_mul;
use crate::cpu::tensor::{HostF32, from_vec};
use crate::error::Result;
use crate::linear::{HostLinear, Linear};
use crate::weights::Loader;

pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    pub fn load(loader: &Loader<'_>, prefix: &str, c: &ModelConfig) -> Result<Self> {
        let (h, i, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Self {
            gate_proj: Linear::load(loader, &format!("{prefix}.gate_proj"), h, i, bias)?,
            up_proj: Linear::load(loader, &format!("{prefix}.up_proj"), h, i, bias)?,
            down_proj: Linear::load(loader, &format!("{prefix}.down_proj"), i, h, bias)?,
        })
    }

    /// The layer as host data, when every projection is quantized.
    pub(crate) fn host(&self) -> Option<MlpHost<'_>> {
        Some(MlpHost {
            gate: self.gate_proj.host()?,
            up: self.up_proj.host()?,
            down: self.down_proj.host()?,
        })
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [gate, up]: [Tensor<2>; 2] = Linear::forward_group(&[&self.gate_proj, &self.up_proj], x)
            .try_into()
            .unwrap_or_else(|_| unreachable!("two projections in, two out"));
        let hidden = match (HostF32::new(&gate), HostF32::new(&up)) {
            // The CPU fast path: one pass instead of silu's ops and a multiply.
            (Some(g), Some(u)) => {
                let dims = gate.dims();
                drop(gate);
                let mut values = g.into_vec();
                silu_mul(&mut values, u.as_slice());
                from_vec(values, dims)
            }
            _ => silu(gate) * up,
        };
        self.down_proj.forward(hidden)
    }
}

/// The MLP's weights on the host, for the fast path's layer loop.
pub(crate) struct MlpHost<'a> {
    gate: HostLinear<'a>,
    up: HostLinear<'a>,
    down: HostLinear<'a>,
}

/// The MLP's intermediate rows, reused from layer to layer.
#[derive(Default)]
pub(crate) struct MlpBuffers {
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl MlpHost<'_> {
    /// [`Mlp::forward`] on host rows: `x` is `[tokens, hidden]`; the output goes to `out`.
    pub(crate) fn forward(&self, x: &[f32], tokens: usize, buffers: &mut MlpBuffers, out: &mut Vec<f32>) {
        let MlpBuffers { gate, up } = buffers;
        Linear::project_host(&[self.gate, self.up], x, tokens, &mut [&mut *gate, &mut *up]);
        silu_mul(gate, up);
        Linear::project_host(&[self.down], gate, tokens, &mut [out]);
    }
}
