//! Paged attention on the host: one call per layer per step for every
//! sequence of the batch. Keys and values are read in place from their pool
//! slots through each sequence's block table (no gather, no copy of the
//! history), the query heads of a group share each K/V row they read, and
//! softmax is computed online (running max and sum), so no score matrix is
//! materialised (the FlashAttention / PagedAttention formulation).
//!
//! Which blocks a query sees is an input to the walk ([`Visible`]): dense
//! causal attention passes every block up to the query's position; a
//! block-sparse layout passes its own subset.

use std::ops::Range;

use super::kernels::{self, Isa};
use super::kv::KvLayer;
use super::pool;

/// One sequence of the step.
pub struct SequenceView<'a> {
    /// Its new tokens' rows in the step's `[tokens, heads * head_dim]` queries.
    pub rows: Range<usize>,
    /// Positions cached before this step (the first new token's position).
    pub past_len: usize,
    /// Pool blocks holding positions `0..past_len + rows.len()`, in order.
    pub block_table: &'a [u32],
}

/// The blocks a query attends to: indices into its sequence's block table,
/// increasing. Positions past the query's own are never visible, whatever
/// the list says (the causal limit is applied inside the last block).
pub trait Visible: Sync {
    fn blocks(&self, sequence: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<usize>);
}

/// Dense causal attention: every block up to the query's own position.
pub struct Causal;

impl Visible for Causal {
    fn blocks(&self, _: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<usize>) {
        out.clear();
        out.extend(0..=position / block_size);
    }
}

/// Shapes of one layer's attention.
#[derive(Clone, Copy)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, head group) slices.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so closures capture the whole (Sync) wrapper, not the raw field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[row, head]` = softmax(q k^T / sqrt(d)) v over what each query sees.
/// `q` and `out` are `[tokens, heads * head_dim]`.
pub fn paged_attention(
    q: &[f32],
    layer: &KvLayer<'_>,
    sequences: &[SequenceView<'_>],
    visible: &dyn Visible,
    shape: Heads,
    out: &mut [f32],
) {
    let Heads {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    let tasks: Vec<(usize, usize)> = sequences
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| seq.rows.clone().map(move |row| (s, row)))
        .flat_map(|(s, row)| (0..kv_heads).map(move |g| (s, row * kv_heads + g)))
        .collect();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let isa = kernels::active();
    let scale = 1.0 / (head_dim as f32).sqrt();
    let group = heads / kv_heads;
    pool::global().run(tasks.len(), &|i| {
        let (s, unit) = tasks[i];
        let (row, kv_head) = (unit / kv_heads, unit % kv_heads);
        let seq = &sequences[s];
        let position = seq.past_len + (row - seq.rows.start);
        let width = heads * head_dim;
        let q = &q[row * width + kv_head * group * head_dim..][..group * head_dim];
        // SAFETY: each (row, kv_head) task owns these `group` heads of its row.
        let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(row * width + kv_head * group * head_dim), group * head_dim) };
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            visible.blocks(seq, position, layer.block_size(), &mut scratch.blocks);
            let walk = Walk {
                layer,
                block_table: seq.block_table,
                visible: &scratch.blocks,
                limit: position + 1,
                kv_head,
            };
            attend(isa, q, &walk, &mut scratch.state, shape.head_dim, scale, out);
        });
    });
}

/// Per-thread buffers, reused across tasks.
#[derive(Default)]
struct Scratch {
    blocks: Vec<usize>,
    state: State,
}

/// Running softmax state of a group of heads, and room for one converted
/// key and value row (f16 caches).
#[derive(Default)]
struct State {
    max: Vec<f32>,
    sum: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// What one query reads: the visible blocks of its sequence, up to `limit`
/// positions, for one KV head.
struct Walk<'a> {
    layer: &'a KvLayer<'a>,
    block_table: &'a [u32],
    visible: &'a [usize],
    limit: usize,
    kv_head: usize,
}

/// One query row's group of heads.
fn attend(isa: Isa, q: &[f32], walk: &Walk<'_>, state: &mut State, head_dim: usize, scale: f32, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only active on CPUs that have it.
        Isa::Avx2 => unsafe { attend_avx2(q, walk, state, head_dim, scale, out) },
        _ => attend_generic(q, walk, state, head_dim, scale, out),
    }
}

/// The generic walk compiled with AVX2 and FMA enabled, so its lane loops
/// become 8-wide vector code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(q: &[f32], walk: &Walk<'_>, state: &mut State, head_dim: usize, scale: f32, out: &mut [f32]) {
    attend_generic(q, walk, state, head_dim, scale, out);
}

/// Eight independent partial sums, so the compiler keeps them in one vector
/// register (floating-point sums are not reassociated otherwise).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for (a, b) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for j in 0..8 {
            lanes[j] += a[j] * b[j];
        }
    }
    let tail: f32 = a.chunks_exact(8).remainder().iter().zip(b.chunks_exact(8).remainder()).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + tail
}

#[inline(always)]
fn attend_generic(q: &[f32], walk: &Walk<'_>, state: &mut State, d: usize, scale: f32, out: &mut [f32]) {
    let group = q.len() / d;
    let bs = walk.layer.block_size();
    let State { max, sum, key, value } = state;
    max.clear();
    max.resize(group, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(group, 0.0);
    key.resize(d, 0.0);
    value.resize(d, 0.0);
    out.fill(0.0);
    for &logical in walk.visible {
        let first = logical * bs;
        let (Some(&block), true) = (walk.block_table.get(logical), first < walk.limit) else { break };
        for offset in 0..bs.min(walk.limit - first) {
            let slot = block as usize * bs + offset;
            let k = walk.layer.key(slot, walk.kv_head, key);
            let v = walk.layer.value(slot, walk.kv_head, value);
            for h in 0..group {
                let score = dot(&q[h * d..(h + 1) * d], k) * scale;
                let acc = &mut out[h * d..(h + 1) * d];
                // Online softmax: rescale what was accumulated when the max grows.
                if score > max[h] {
                    let correction = (max[h] - score).exp();
                    sum[h] *= correction;
                    acc.iter_mut().for_each(|a| *a *= correction);
                    max[h] = score;
                }
                let weight = (score - max[h]).exp();
                sum[h] += weight;
                for (a, v) in acc.iter_mut().zip(v) {
                    *a += weight * v;
                }
            }
        }
    }
    for h in 0..group {
        let inv = if sum[h] > 0.0 { 1.0 / sum[h] } else { 0.0 };
        out[h * d..(h + 1) * d].iter_mut().for_each(|a| *a *= inv);
    }
}
