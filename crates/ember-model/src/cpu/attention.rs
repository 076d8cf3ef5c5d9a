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
use super::SharedOut;

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
    let out_ptr = SharedOut::new(out);
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

/// Running softmax state of a group of heads, one block's scores, and room
/// for one converted key and value row (f16 caches).
#[derive(Default)]
struct State {
    max: Vec<f32>,
    sum: Vec<f32>,
    scores: Vec<f32>,
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
        _ => attend_generic::<false>(q, walk, state, head_dim, scale, out),
    }
}

/// The generic walk compiled with AVX2 and FMA enabled, so its lane loops
/// become 8-wide vector code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(q: &[f32], walk: &Walk<'_>, state: &mut State, head_dim: usize, scale: f32, out: &mut [f32]) {
    attend_generic::<true>(q, walk, state, head_dim, scale, out);
}

/// `a * b + c`, fused where the instruction exists (without it, `mul_add`
/// would call libm's software fma).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Four vectors of eight independent partial sums: the compiler keeps them
/// in registers (floating-point sums are not reassociated otherwise), and
/// four chains hide the FMA latency that one chain would wait on.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [[0.0f32; 8]; 4];
    let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
    let (a_rest, b_rest) = (a32.remainder(), b32.remainder());
    for (a, b) in a32.zip(b32) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            for j in 0..8 {
                lane[j] = madd::<FMA>(a[i * 8 + j], b[i * 8 + j], lane[j]);
            }
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    let mut total = [0.0f32; 8];
    for lane in &lanes {
        for j in 0..8 {
            total[j] += lane[j];
        }
    }
    total.iter().sum::<f32>() + tail
}

/// Output elements accumulated in registers at once (eight AVX vectors).
const TILE: usize = 64;

/// `exp(x)` for `x <= 0` (scores minus their running maximum), to within
/// 2 ulp: Cephes' `expf` (range reduction by ln 2 in two parts, degree-5
/// polynomial). Written out so that a loop over a block of scores
/// vectorizes, where the libm call would run once per score.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Block by block: every visible position's score for every head of the
/// group, then one max/rescale per head per block (not per position), the
/// block's exponentials in one vectorizable pass, then the values.
#[inline(always)]
fn attend_generic<const FMA: bool>(q: &[f32], walk: &Walk<'_>, state: &mut State, d: usize, scale: f32, out: &mut [f32]) {
    let group = q.len() / d;
    let bs = walk.layer.block_size();
    let State { max, sum, scores, key, value } = state;
    max.clear();
    max.resize(group, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(group, 0.0);
    scores.resize(group * bs, 0.0);
    key.resize(d, 0.0);
    value.resize(d, 0.0);
    out.fill(0.0);
    for &logical in walk.visible {
        let first = logical * bs;
        let (Some(&block), true) = (walk.block_table.get(logical), first < walk.limit) else { break };
        let n = bs.min(walk.limit - first);
        let slot = |offset: usize| block as usize * bs + offset;
        for offset in 0..n {
            let k = walk.layer.key(slot(offset), walk.kv_head, key);
            for h in 0..group {
                scores[h * bs + offset] = dot::<FMA>(&q[h * d..(h + 1) * d], k) * scale;
            }
        }
        for h in 0..group {
            let block_scores = &mut scores[h * bs..h * bs + n];
            let block_max = block_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if block_max > max[h] {
                // Rescale what was accumulated under the smaller maximum.
                let correction = exp_nonpositive(max[h] - block_max);
                sum[h] *= correction;
                out[h * d..(h + 1) * d].iter_mut().for_each(|a| *a *= correction);
                max[h] = block_max;
            }
            let m = max[h];
            for s in block_scores.iter_mut() {
                *s = exp_nonpositive(*s - m);
            }
            sum[h] += block_scores.iter().sum::<f32>();
        }
        // Values: 64 output elements at a time (eight independent vector
        // accumulators) stay in registers over the block's positions (f16
        // caches, or a head size that is not a multiple of 64, take each
        // row in turn).
        let f32_values = walk.layer.f32_values().filter(|_| d.is_multiple_of(TILE));
        for offset in 0..n {
            if f32_values.is_none() {
                let v = walk.layer.value(slot(offset), walk.kv_head, value);
                for h in 0..group {
                    let weight = scores[h * bs + offset];
                    for (a, v) in out[h * d..(h + 1) * d].iter_mut().zip(v) {
                        *a = madd::<FMA>(weight, *v, *a);
                    }
                }
            }
        }
        if let Some(values) = f32_values {
            let width = walk.layer.width();
            let base = slot(0) * width + walk.kv_head * d;
            for h in 0..group {
                let weights = &scores[h * bs..h * bs + n];
                for (c, acc) in out[h * d..(h + 1) * d].chunks_exact_mut(TILE).enumerate() {
                    let mut lanes: [f32; TILE] = acc.try_into().unwrap_or([0.0; TILE]);
                    for (p, &w) in weights.iter().enumerate() {
                        let v = &values[base + p * width + c * TILE..][..TILE];
                        for j in 0..TILE {
                            lanes[j] = madd::<FMA>(w, v[j], lanes[j]);
                        }
                    }
                    acc.copy_from_slice(&lanes);
                }
            }
        }
    }
    for h in 0..group {
        let inv = if sum[h] > 0.0 { 1.0 / sum[h] } else { 0.0 };
        out[h * d..(h + 1) * d].iter_mut().for_each(|a| *a *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kv::{HostKv, KvDtype};

    #[test]
    fn exp_matches_libm_to_a_few_ulp() {
        // Down to -87, where it clamps (exp(-87) is 1.6e-38: a weight of 0).
        for i in 0..=17_400 {
            let x = -(i as f32) * 0.005;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 4.0 * f32::EPSILON * want.max(f32::MIN_POSITIVE), "exp({x}): {got} vs {want}");
        }
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), exp_nonpositive(-87.0));
        assert!(exp_nonpositive(-1e30) < 1e-37);
    }

    fn value(i: usize) -> f32 {
        ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0) * 2.0
    }

    /// Naive attention in f64 for one query row of one head over keys
    /// `0..limit` of that sequence (`keys[p]`, `values[p]` per position).
    fn naive(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], limit: usize) -> Vec<f64> {
        let d = q.len();
        let scale = 1.0 / (d as f64).sqrt();
        let scores: Vec<f64> = (0..limit)
            .map(|p| q.iter().zip(&keys[p]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * scale)
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d).map(|j| (0..limit).map(|p| weights[p] * f64::from(values[p][j])).sum::<f64>() / total).collect()
    }

    /// Two sequences with scattered, out-of-order blocks, one mid-prompt
    /// chunk (three new queries over a longer history, each with its own
    /// causal limit) and one decode step, grouped-query heads (4 over 2):
    /// every output row matches naive attention, in f32 and (looser) f16.
    #[test]
    fn paged_attention_matches_naive_attention() {
        let (heads, kv_heads, d, bs) = (4, 2, 8, 4);
        let width = kv_heads * d;
        for (dtype, tolerance) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-2)] {
            let mut kv = HostKv::new(1, 8, bs, width, dtype).expect("pool");
            // Sequence 0: 11 positions in blocks [5, 1, 6]; sequence 1: 6 in [0, 7].
            let tables: [&[u32]; 2] = [&[5, 1, 6], &[0, 7]];
            let lengths = [11, 6];
            let mut keys = vec![Vec::new(), Vec::new()];
            let mut values = vec![Vec::new(), Vec::new()];
            for s in 0..2 {
                for p in 0..lengths[s] {
                    let k: Vec<f32> = (0..width).map(|j| value(s * 1000 + p * 31 + j)).collect();
                    let v: Vec<f32> = (0..width).map(|j| value(s * 7000 + p * 17 + j + 5)).collect();
                    let slot = tables[s][p / bs] as usize * bs + p % bs;
                    kv.write(0, slot, &k, &v);
                    keys[s].push(k);
                    values[s].push(v);
                }
            }
            // Rows 0..3: sequence 0's positions 8, 9, 10; row 3: sequence 1's position 5.
            let sequences = [
                SequenceView { rows: 0..3, past_len: 8, block_table: tables[0] },
                SequenceView { rows: 3..4, past_len: 5, block_table: tables[1] },
            ];
            let q: Vec<f32> = (0..4 * heads * d).map(|i| value(i + 99)).collect();
            let mut out = vec![f32::NAN; 4 * heads * d];
            let shape = Heads { heads, kv_heads, head_dim: d };
            paged_attention(&q, &kv.layer(0), &sequences, &Causal, shape, &mut out);
            for (row, (s, position)) in [(0, 8), (0, 9), (0, 10), (1, 5)].into_iter().enumerate() {
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let head_keys: Vec<Vec<f32>> = keys[s].iter().map(|k| k[g * d..(g + 1) * d].to_vec()).collect();
                    let head_values: Vec<Vec<f32>> = values[s].iter().map(|v| v[g * d..(g + 1) * d].to_vec()).collect();
                    let qh = &q[(row * heads + h) * d..(row * heads + h + 1) * d];
                    let want = naive(qh, &head_keys, &head_values, position + 1);
                    let got = &out[(row * heads + h) * d..(row * heads + h + 1) * d];
                    for (g, w) in got.iter().zip(&want) {
                        assert!((f64::from(*g) - w).abs() < tolerance, "{dtype:?} row {row} head {h}: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// A sparse layout's block list is honoured: a query that sees only its
    /// own last block attends to those positions alone.
    #[test]
    fn visible_blocks_limit_what_a_query_reads() {
        struct LastBlockOnly;
        impl Visible for LastBlockOnly {
            fn blocks(&self, _: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<usize>) {
                out.clear();
                out.push(position / block_size);
            }
        }
        let (d, bs) = (4, 2);
        let mut kv = HostKv::new(1, 3, bs, d, KvDtype::F32).expect("pool");
        // Values 1, 2, 3, 4, 5 at positions 0..5 (all keys equal: uniform weights).
        for p in 0..5 {
            kv.write(0, p, &[0.0; 4], &[p as f32 + 1.0; 4]);
        }
        let table = [0, 1, 2];
        let sequences = [SequenceView { rows: 0..1, past_len: 3, block_table: &table }];
        let mut out = vec![0.0; d];
        let shape = Heads { heads: 1, kv_heads: 1, head_dim: d };
        paged_attention(&[1.0; 4], &kv.layer(0), &sequences, &LastBlockOnly, shape, &mut out);
        // Position 3 sees block 1 only: positions 2 and 3, values 3 and 4.
        assert!(out.iter().all(|v| (v - 3.5).abs() < 1e-6), "{out:?}");
    }
}
