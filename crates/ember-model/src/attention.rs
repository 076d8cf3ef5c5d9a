//! Grouped-query self-attention with optional per-head q/k RMSNorm (Qwen3)
//! and q/k/v biases (Qwen2), following `modeling_qwen3.py`:
//! project -> q/k norm -> RoPE -> write to the paged cache -> causal attention.

use std::ops::Range;

use burn::tensor::module::attention;
use burn::tensor::{Int, Tensor};
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::KvPool;
use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::rope::apply_rotary;
use crate::weights::Loader;

pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// Where one step's tokens live: rows of the flattened token matrix, the
/// pool slots their new keys go to, and each sequence's history to read.
pub(crate) struct StepLayout {
    /// One slot per new token, in row order.
    pub write_slots: Tensor<1, Int>,
    /// Every sequence's full history (past and new), concatenated.
    pub read_slots: Tensor<1, Int>,
    pub sequences: Vec<SequenceRows>,
}

pub(crate) struct SequenceRows {
    /// This sequence's new tokens in the flattened matrix.
    pub rows: Range<usize>,
    /// Its history's span in `read_slots`.
    pub history: Range<usize>,
}

impl Attention {
    pub fn load(loader: &Loader<'_>, prefix: &str, c: &ModelConfig) -> Result<Self> {
        let (h, d) = (c.hidden_size, c.head_dim);
        let q_out = c.num_attention_heads * d;
        let kv_out = c.num_key_value_heads * d;
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            if c.architecture.has_qk_norm() {
                RmsNorm::load(loader, &format!("{prefix}.{name}"), d, c.rms_norm_eps).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q_proj: Linear::load(loader, &format!("{prefix}.q_proj"), h, q_out, c.qkv_bias)?,
            k_proj: Linear::load(loader, &format!("{prefix}.k_proj"), h, kv_out, c.qkv_bias)?,
            v_proj: Linear::load(loader, &format!("{prefix}.v_proj"), h, kv_out, c.qkv_bias)?,
            o_proj: Linear::load(loader, &format!("{prefix}.o_proj"), q_out, h, c.o_bias)?,
            q_norm: norm("q_norm")?,
            k_norm: norm("k_norm")?,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: d,
        })
    }

    /// `x`: `[tokens, hidden]` for all sequences of the step, in order;
    /// `cos`/`sin`: `[tokens, head_dim]` at each token's position.
    pub fn forward(
        &self,
        layer: usize,
        x: Tensor<2>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        pool: &mut KvPool,
        layout: &StepLayout,
    ) -> Result<Tensor<2>> {
        let tokens = x.dims()[0];
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);

        // 1. Projections, batched over every token of every sequence.
        let [q, k, v]: [Tensor<2>; 3] = Linear::forward_group(&[&self.q_proj, &self.k_proj, &self.v_proj], x)
            .try_into()
            .unwrap_or_else(|_| unreachable!("three projections in, three out"));
        let q = q.reshape([tokens, h, d]);
        let k = k.reshape([tokens, kvh, d]);

        // 2. Per-head RMSNorm (Qwen3), before RoPE.
        let q = match &self.q_norm {
            Some(n) => n.forward(q),
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(k),
            None => k,
        };

        // 3. RoPE at each token's own position, then into the paged cache.
        let q = apply_rotary(q, cos, sin);
        let k = apply_rotary(k, cos, sin);
        pool.write(layer, &layout.write_slots, k.reshape([tokens, kvh * d]), v);
        let (keys, values) = pool.read(layer, &layout.read_slots).ok_or(ModelError::KvPoolLost)?;

        // 4. Attention per sequence over its own history.
        let outputs = layout
            .sequences
            .iter()
            .map(|seq| {
                let (start, n) = (seq.rows.start, seq.rows.len());
                let (past_start, len) = (seq.history.start, seq.history.len());
                let heads_first = |t: Tensor<2>| t.narrow(0, past_start, len).reshape([len, kvh, d]).swap_dims(0, 1);
                let q = q.clone().narrow(0, start, n).swap_dims(0, 1).unsqueeze_dim::<4>(0);
                let k = self.repeat_kv(heads_first(keys.clone())).unsqueeze_dim::<4>(0);
                let v = self.repeat_kv(heads_first(values.clone())).unsqueeze_dim::<4>(0);
                // Causal masking is aligned bottom-right, so a chunk of new
                // queries over a longer history sees exactly its past.
                let options = AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: true,
                };
                let out = attention(q, k, v, None, None, options); // [1, h, n, d]
                out.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([n, h * d])
            })
            .collect();
        Ok(self.o_proj.forward(Tensor::cat(outputs, 0)))
    }

    /// `[kv_heads, len, d]` -> `[heads, len, d]`, each kv head serving its
    /// group of consecutive query heads (Hugging Face's `repeat_kv`). Done
    /// explicitly because not every device's attention kernel takes GQA shapes.
    fn repeat_kv(&self, t: Tensor<3>) -> Tensor<3> {
        let groups = self.num_heads / self.num_kv_heads;
        if groups == 1 {
            return t;
        }
        let [kvh, len, d] = t.dims();
        t.unsqueeze_dim::<4>(1)
            .repeat_dim(1, groups)
            .reshape([kvh * groups, len, d])
    }
}
