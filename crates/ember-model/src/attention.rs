//! Grouped-query self-attention with optional per-head q/k RMSNorm (Qwen3)
//! and q/k/v biases (Qwen2), following `modeling_qwen3.py`:
//! project -> q/k norm -> RoPE -> write to the paged cache -> causal attention.

use std::ops::Range;

use burn::tensor::module::attention;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use burn::tensor::ops::AttentionModuleOptions;

use crate::config::ModelConfig;
use crate::cpu::attention::{Causal, Heads, SequenceView, Visible, paged_attention};
use crate::cpu::kv::HostKv;
use crate::cpu::tensor::{from_vec, into_host_vec};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvPool;
use crate::linear::{HostLinear, Linear};
use crate::norm::RmsNorm;
use crate::cpu::ops::{rms_norm, rotary_in_place};
use crate::rope::apply_rotary;
use crate::sparse::SparseLayout;
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
pub(crate) struct StepLayout<'a> {
    /// One slot per new token, in row order.
    pub write_slots: Vec<usize>,
    /// Each sequence's rows, cached length and block table.
    pub sequences: Vec<SequenceView<'a>>,
    /// The same as index tensors, for pools of Burn tensors (absent on the
    /// host pool, which is read in place).
    pub tensors: Option<SlotTensors>,
    /// The block-sparse layout, if attention is not dense.
    pub sparse: Option<&'a SparseLayout>,
}

impl StepLayout<'_> {
    /// What each query sees, for the paged-attention kernel.
    fn visible(&self) -> &dyn Visible {
        match self.sparse {
            Some(layout) => layout,
            None => &Causal,
        }
    }
}

pub(crate) struct SlotTensors {
    pub write_slots: Tensor<1, Int>,
    /// Every sequence's full history (past and new), concatenated.
    pub read_slots: Tensor<1, Int>,
    /// Each sequence's span in `read_slots`.
    pub history: Vec<Range<usize>>,
}

impl SlotTensors {
    pub fn new(pool: &KvPool, write_slots: &[usize], sequences: &[SequenceView<'_>]) -> Self {
        let bs = pool.block_size();
        let mut read = Vec::new();
        let mut history = Vec::with_capacity(sequences.len());
        for seq in sequences {
            let start = read.len();
            let total = seq.past_len + seq.rows.len();
            read.extend((0..total).map(|p| seq.block_table[p / bs] as usize * bs + p % bs));
            history.push(start..read.len());
        }
        Self {
            write_slots: pool.slot_tensor(write_slots.iter().copied()),
            read_slots: pool.slot_tensor(read.into_iter()),
            history,
        }
    }
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
        layout: &StepLayout<'_>,
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
        if let Some(host) = pool.host_mut() {
            return Ok(self.attend_host(layer, q, k, v, host, layout));
        }
        let slots = layout.tensors.as_ref().ok_or(ModelError::KvPoolLost)?;
        pool.write(layer, &slots.write_slots, k.reshape([tokens, kvh * d]), v);
        let (keys, values) = pool.read(layer, &slots.read_slots).ok_or(ModelError::KvPoolLost)?;

        // 4. Attention per sequence over its own history.
        let outputs = layout
            .sequences
            .iter()
            .zip(&slots.history)
            .map(|(seq, history)| {
                let (start, n) = (seq.rows.start, seq.rows.len());
                let (past_start, len) = (history.start, history.len());
                let heads_first = |t: Tensor<2>| t.narrow(0, past_start, len).reshape([len, kvh, d]).swap_dims(0, 1);
                let q = q.clone().narrow(0, start, n).swap_dims(0, 1).unsqueeze_dim::<4>(0);
                let k = self.repeat_kv(heads_first(keys.clone())).unsqueeze_dim::<4>(0);
                let v = self.repeat_kv(heads_first(values.clone())).unsqueeze_dim::<4>(0);
                // Causal masking is aligned bottom-right, so a chunk of new
                // queries over a longer history sees exactly its past. A
                // sparse layout is its explicit mask instead (the dense
                // reference the paged kernel is tested against).
                let mask = layout.sparse.map(|sparse| {
                    let hidden: Vec<bool> = (0..n)
                        .flat_map(|i| (0..len).map(move |k| !sparse.sees(seq.global_spans, seq.past_len + i, k)))
                        .collect();
                    Tensor::<2, Bool>::from_data(TensorData::new(hidden, [n, len]), &q.device())
                        .reshape([1, 1, n, len])
                        .expand([1, h, n, len])
                });
                let options = AttentionModuleOptions {
                    scale: None,
                    softcap: None,
                    is_causal: mask.is_none(),
                };
                let out = attention(q, k, v, mask, None, options); // [1, h, n, d]
                out.squeeze_dim::<3>(0).swap_dims(0, 1).reshape([n, h * d])
            })
            .collect();
        Ok(self.o_proj.forward(Tensor::cat(outputs, 0)))
    }

    /// The CPU fast path from rotated q/k tensors on (projections that are
    /// not quantized, so the layer loop stayed on Burn tensors).
    fn attend_host(
        &self,
        layer: usize,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<2>,
        pool: &mut HostKv,
        layout: &StepLayout<'_>,
    ) -> Tensor<2> {
        let [tokens, h, d] = q.dims();
        let (k, v) = (into_host_vec(k.reshape([tokens, self.num_kv_heads * d])), into_host_vec(v));
        let q = into_host_vec(q.reshape([tokens, h * d]));
        let mut out = Vec::new();
        attend_rows(layer, &q, &k, &v, self.heads(), pool, layout, &mut out);
        self.o_proj.forward(from_vec(out, [tokens, h * d]))
    }

    fn heads(&self) -> Heads {
        Heads {
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// The layer as host data, when every projection is quantized.
    pub(crate) fn host(&self) -> Option<AttentionHost<'_>> {
        fn norm(n: &Option<RmsNorm>) -> Option<Option<(&[f32], f64)>> {
            match n {
                Some(n) => n.host().map(Some),
                None => Some(None),
            }
        }
        Some(AttentionHost {
            q: self.q_proj.host()?,
            k: self.k_proj.host()?,
            v: self.v_proj.host()?,
            o: self.o_proj.host()?,
            q_norm: norm(&self.q_norm)?,
            k_norm: norm(&self.k_norm)?,
            heads: self.heads(),
        })
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

/// Attention's weights on the host, for the fast path's layer loop.
pub(crate) struct AttentionHost<'a> {
    q: HostLinear<'a>,
    k: HostLinear<'a>,
    v: HostLinear<'a>,
    o: HostLinear<'a>,
    q_norm: Option<(&'a [f32], f64)>,
    k_norm: Option<(&'a [f32], f64)>,
    heads: Heads,
}

/// Attention's intermediate rows, reused from layer to layer.
#[derive(Default)]
pub(crate) struct AttentionBuffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    normed: Vec<f32>,
    attended: Vec<f32>,
}

impl AttentionHost<'_> {
    /// [`Attention::forward`] on host rows: `x` is `[tokens, hidden]`,
    /// `cos`/`sin` `[tokens, head_dim]`; the output goes to `out`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        layer: usize,
        x: &[f32],
        (cos, sin): (&[f32], &[f32]),
        pool: &mut HostKv,
        layout: &StepLayout<'_>,
        buffers: &mut AttentionBuffers,
        out: &mut Vec<f32>,
    ) {
        let tokens = layout.write_slots.len();
        let Heads { heads, kv_heads, head_dim } = self.heads;
        let AttentionBuffers { q, k, v, normed, attended } = buffers;
        Linear::project_host(&[self.q, self.k, self.v], x, tokens, &mut [&mut *q, &mut *k, &mut *v]);
        for (rows, norm) in [(&mut *q, self.q_norm), (&mut *k, self.k_norm)] {
            if let Some((weight, eps)) = norm {
                normed.resize(rows.len(), 0.0);
                rms_norm(rows, weight, eps, normed);
                std::mem::swap(rows, normed);
            }
        }
        rotary_in_place(q, heads, head_dim, cos, sin);
        rotary_in_place(k, kv_heads, head_dim, cos, sin);
        attend_rows(layer, q, k, v, self.heads, pool, layout, attended);
        Linear::project_host(&[self.o], attended, tokens, &mut [out]);
    }
}

/// Writes the new keys and values (`[tokens, kv_heads * head_dim]`) into
/// their pool slots, then attends every query row over its sequence's
/// history in one paged-attention call; `out` becomes `[tokens, heads *
/// head_dim]`.
#[allow(clippy::too_many_arguments)]
fn attend_rows(
    layer: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Heads,
    pool: &mut HostKv,
    layout: &StepLayout<'_>,
    out: &mut Vec<f32>,
) {
    let width = shape.kv_heads * shape.head_dim;
    for (row, &slot) in layout.write_slots.iter().enumerate() {
        pool.write(layer, slot, &k[row * width..(row + 1) * width], &v[row * width..(row + 1) * width]);
    }
    out.resize(q.len(), 0.0);
    paged_attention(q, &pool.layer(layer), &layout.sequences, layout.visible(), shape, out);
}
