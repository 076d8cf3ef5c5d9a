//! The walk of one task over its blocks: per-thread scratch, scoring
//! (a dot per key for a decode step's few queries, a small matrix product
//! for a prompt tile), online softmax and the weighted values.

use std::ops::Range;

use super::{Heads, SequenceView, Unit, Visible, state_len};
use crate::sparse::VisibleBlock;
use crate::cpu::ops::exp_nonpositive;
#[cfg(target_arch = "x86_64")]
use super::avx2;
use crate::cpu::kernels::Isa;
use crate::cpu::kv::KvLayer;

/// Per-thread buffers, reused across tasks. A task's queries are its rows'
/// heads, `query = local_row * heads + head`.
#[derive(Default)]
pub(super) struct Scratch {
    /// `[queries, d]`, already multiplied by 1 / sqrt(d).
    queries: Vec<f32>,
    /// Per query: positions it may see (its own position + 1).
    limits: Vec<usize>,
    /// Per row: its visible blocks; and their union, in order.
    visible: Vec<Vec<VisibleBlock>>,
    union: Vec<usize>,
    /// `[d, lanes]`: the block's keys, transposed; `[block_size, d]`: its
    /// key rows converted to f32 (f16 caches); one converted key.
    keys: Vec<f32>,
    key_rows: Vec<f32>,
    key: Vec<f32>,
    /// The block's values as f32 rows (f16 caches only).
    values: Vec<f32>,
    /// `[queries, lanes]` (block size rounded up to `KEY_LANES`): scores,
    /// then weights.
    scores: Vec<f32>,
    /// Per query: running maximum, sum of weights, and how many of the
    /// block's positions it takes.
    max: Vec<f32>,
    sum: Vec<f32>,
    taken: Vec<usize>,
    /// `[queries, d]`: weighted values, normalised at the end.
    acc: Vec<f32>,
}

impl Scratch {
    pub(super) fn gather(&mut self, q: &[f32], seq: &SequenceView<'_>, unit: &Unit, visible: &dyn Visible, bs: usize, shape: Heads) {
        let (group, d) = (shape.heads / shape.kv_heads, shape.head_dim);
        let width = shape.heads * d;
        let scale = 1.0 / (d as f32).sqrt();
        let queries = unit.queries(group);
        self.queries.clear();
        self.limits.clear();
        self.visible.resize_with(unit.rows.len(), Vec::new);
        self.union.clear();
        for (local, row) in unit.rows.clone().enumerate() {
            let position = seq.past_len + (row - seq.rows.start);
            let row_queries = &q[row * width + unit.kv_head * group * d..][..group * d];
            self.queries.extend(row_queries.iter().map(|v| v * scale));
            self.limits.extend(std::iter::repeat_n(position + 1, group));
            visible.blocks(seq, position, bs, &mut self.visible[local]);
            self.union.extend(self.visible[local].iter().map(|b| b.block));
        }
        self.union.sort_unstable();
        self.union.dedup();
        self.max.clear();
        self.max.resize(queries, f32::NEG_INFINITY);
        self.sum.clear();
        self.sum.resize(queries, 0.0);
        self.taken.resize(queries, 0);
        self.acc.clear();
        self.acc.resize(queries * d, 0.0);
        self.scores.resize(queries * bs.next_multiple_of(KEY_LANES), 0.0);
        self.keys.resize(d * bs.next_multiple_of(KEY_LANES), 0.0);
        self.key_rows.resize(bs * d, 0.0);
        self.key.resize(d, 0.0);
        self.values.resize(bs * d, 0.0);
    }

    /// How many blocks the gathered rows see together (what parts split).
    pub(super) fn blocks(&self) -> usize {
        self.union.len()
    }

    /// Divides each query's weighted values by its sum of weights.
    pub(super) fn normalize(&mut self, d: usize) {
        for (sum, acc) in self.sum.iter().zip(self.acc.chunks_exact_mut(d)) {
            let inv = if *sum > 0.0 { 1.0 / sum } else { 0.0 };
            acc.iter_mut().for_each(|a| *a *= inv);
        }
    }

    /// Each query's max, sum and unnormalised values, `state_len(d)` floats
    /// per query, into `state`.
    pub(super) fn save_state(&self, state: &mut [f32], d: usize) {
        for (i, acc) in self.acc.chunks_exact(d).enumerate() {
            let to = &mut state[i * state_len(d)..(i + 1) * state_len(d)];
            to[0] = self.max[i];
            to[1] = self.sum[i];
            to[2..].copy_from_slice(acc);
        }
    }

    /// The unit's normalised results into `out` (`[tokens, heads * d]`).
    ///
    /// # Safety
    /// `out` holds the step's rows and no other thread writes this unit's
    /// rows and heads.
    pub(super) unsafe fn write_out(&self, out: *mut f32, unit: &Unit, shape: Heads) {
        let (group, d) = (shape.heads / shape.kv_heads, shape.head_dim);
        for (local, row) in unit.rows.clone().enumerate() {
            let from = &self.acc[local * group * d..(local + 1) * group * d];
            // SAFETY: as the caller promises.
            let to = unsafe { std::slice::from_raw_parts_mut(out.add((row * shape.heads + unit.kv_head * group) * d), group * d) };
            to.copy_from_slice(from);
        }
    }
}

thread_local! {
    pub(super) static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Where one task reads: its sequence's blocks, for one KV head.
pub(super) struct Walk<'a> {
    pub(super) layer: &'a KvLayer<'a>,
    pub(super) block_table: &'a [u32],
    pub(super) kv_head: usize,
}

/// Walks the union's blocks `share` (indices into it), leaving each query's
/// max, sum and unnormalised weighted values in the scratch.
pub(super) fn attend(isa: Isa, walk: &Walk<'_>, scratch: &mut Scratch, d: usize, share: Range<usize>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only active on CPUs that have it.
        Isa::Avx2 => unsafe { attend_avx2(walk, scratch, d, share) },
        _ => attend_generic::<false>(walk, scratch, d, share),
    }
}

/// The generic walk compiled with AVX2 and FMA enabled, so its lane loops
/// become 8-wide vector code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(walk: &Walk<'_>, scratch: &mut Scratch, d: usize, share: Range<usize>) {
    attend_generic::<true>(walk, scratch, d, share);
}

/// `a * b + c`, fused where the instruction exists (without it, `mul_add`
/// would call libm's software fma).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Up to this many queries per task, keys are dotted row by row instead of
/// transposed (the transposition pays off once it serves more queries).
const ROW_DOT_QUERIES: usize = 4;

/// Four vectors of eight independent partial sums: the compiler keeps them
/// in registers (floating-point sums are not reassociated otherwise), and
/// four chains hide the FMA latency that one chain would wait on.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is only set inside `attend_avx2`, which has AVX2
        // and FMA enabled.
        return unsafe { avx2::dot(a, b) };
    }
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

/// Key positions scored at once: two AVX vectors per query.
const KEY_LANES: usize = 16;

/// Output elements accumulated in registers at once (eight AVX vectors).
const TILE: usize = 64;

/// Scores of `Q` queries (`[Q, d]` at `queries`) against `KEY_LANES` keys
/// of the transposed block (`keys[j * lanes + column..]`): `Q * 2` vector
/// accumulators, independent chains, no horizontal sums.
#[inline(always)]
fn score_tile<const FMA: bool, const Q: usize>(
    queries: &[f32],
    keys: &[f32],
    lanes: usize,
    column: usize,
    d: usize,
) -> [[f32; KEY_LANES]; Q] {
    let mut acc = [[0.0f32; KEY_LANES]; Q];
    for j in 0..d {
        let k = &keys[j * lanes + column..][..KEY_LANES];
        for (qi, acc) in acc.iter_mut().enumerate() {
            let qv = queries[qi * d + j];
            for l in 0..KEY_LANES {
                acc[l] = madd::<FMA>(qv, k[l], acc[l]);
            }
        }
    }
    acc
}

/// Scores of every query against the block's `lanes` transposed keys,
/// written as `scores[query * lanes + position]`.
#[inline(always)]
fn score_block<const FMA: bool>(queries: &[f32], keys: &[f32], lanes: usize, d: usize, scores: &mut [f32]) {
    let count = queries.len() / d;
    let mut put = |first: usize, column: usize, tile: &[[f32; KEY_LANES]]| {
        for (i, row) in tile.iter().enumerate() {
            scores[(first + i) * lanes + column..][..KEY_LANES].copy_from_slice(row);
        }
    };
    for column in (0..lanes).step_by(KEY_LANES) {
        let mut first = 0;
        while first < count {
            let q = &queries[first * d..];
            match count - first {
                1 => put(first, column, &score_tile::<FMA, 1>(q, keys, lanes, column, d)),
                2 => put(first, column, &score_tile::<FMA, 2>(q, keys, lanes, column, d)),
                3 => put(first, column, &score_tile::<FMA, 3>(q, keys, lanes, column, d)),
                4 => put(first, column, &score_tile::<FMA, 4>(q, keys, lanes, column, d)),
                5 => put(first, column, &score_tile::<FMA, 5>(q, keys, lanes, column, d)),
                _ => put(first, column, &score_tile::<FMA, 6>(q, keys, lanes, column, d)),
            }
            first += (count - first).min(6);
        }
    }
}

/// Block by block over the union of what the task's rows see: the block's
/// keys are transposed once and scored against every query (a small
/// matrix product), each query's scores get its causal limit and its own
/// block list, one max/rescale per query per block, the exponentials in one
/// vectorizable pass, then the weighted values with the accumulators in
/// registers.
#[inline(always)]
fn attend_generic<const FMA: bool>(walk: &Walk<'_>, scratch: &mut Scratch, d: usize, share: Range<usize>) {
    let bs = walk.layer.block_size();
    let lanes = bs.next_multiple_of(KEY_LANES);
    let Scratch {
        queries,
        limits,
        visible,
        union,
        keys,
        key_rows,
        key,
        values,
        scores,
        max,
        sum,
        taken,
        acc,
    } = scratch;
    let per_row = queries.len() / d / visible.len().max(1);
    let limit = limits.iter().copied().max().unwrap_or(0);
    for &logical in &union[share] {
        let first = logical * bs;
        let (Some(&block), true) = (walk.block_table.get(logical), first < limit) else { break };
        let n = bs.min(limit - first);
        let slot = |offset: usize| block as usize * bs + offset;
        let count = queries.len() / d;
        #[cfg(target_arch = "x86_64")]
        if FMA && d.is_multiple_of(8) && (count <= ROW_DOT_QUERIES || bs.is_multiple_of(8)) {
            // The block's key rows in place (f16 ones converted first).
            let (rows, stride) = walk.layer.key_rows(slot(0), n, walk.kv_head, d, key_rows);
            if count <= ROW_DOT_QUERIES {
                // Few queries (a decode step): scored row by row, without
                // transposing the block.
                // SAFETY: `FMA` is only set inside `attend_avx2`; `rows`
                // holds the block's `n` rows, `scores` `count` rows of `lanes`.
                unsafe { avx2::score_rows(queries, count, rows.as_ptr(), stride, n, scores, lanes, d) };
            } else {
                // The whole block is transposed, eight by eight: rows past
                // `n` are the block's own unused slots, and their scores
                // are never taken.
                // SAFETY: as above; `rows` holds the block's `bs` slots.
                unsafe { avx2::transpose_rows(rows, stride, bs, d, keys, lanes) };
                score_block::<FMA>(queries, keys, lanes, d, scores);
            }
        } else if count <= ROW_DOT_QUERIES {
            // Few queries (a decode step): a dot per key row costs less
            // than transposing the block.
            for p in 0..n {
                let k = walk.layer.key(slot(p), walk.kv_head, key);
                for i in 0..count {
                    scores[i * lanes + p] = dot::<FMA>(&queries[i * d..(i + 1) * d], k);
                }
            }
        } else {
            // Keys, transposed: keys[j * lanes + p].
            for p in 0..n {
                let k = walk.layer.key(slot(p), walk.kv_head, key);
                for (j, v) in k.iter().enumerate() {
                    keys[j * lanes + p] = *v;
                }
            }
            score_block::<FMA>(queries, keys, lanes, d, scores);
        }
        for (i, taken) in taken.iter_mut().enumerate() {
            let row_blocks = &visible[i / per_row];
            *taken = match row_blocks.binary_search_by_key(&logical, |b| b.block) {
                Ok(at) => mask_scores(&mut scores[i * lanes..], n.min(limits[i].saturating_sub(first)), row_blocks[at].mask),
                Err(_) => 0,
            };
            let (scores, acc) = (&mut scores[i * lanes..(i + 1) * lanes], &mut acc[i * d..(i + 1) * d]);
            #[cfg(target_arch = "x86_64")]
            if FMA {
                // SAFETY: `FMA` is only set inside `attend_avx2`.
                unsafe { avx2::softmax_step(scores, *taken, &mut max[i], &mut sum[i], acc) };
                continue;
            }
            softmax_step(scores, *taken, &mut max[i], &mut sum[i], acc);
        }
        // Values: in place for f32 caches, converted once per block for f16.
        let (source, stride) = walk.layer.value_rows(slot(0), n, walk.kv_head, d, values);
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: as above; the source holds the block's `n` rows.
            unsafe { avx2::weighted_values(scores, lanes, taken, source, stride, acc, d) };
            continue;
        }
        weighted_values::<FMA>(scores, lanes, taken, source, stride, acc, d);
    }
}

/// A query's first `taken` scores of a block under its visibility mask:
/// hidden positions score minus infinity (a weight of at most `exp(-87)`,
/// nothing against a visible one). Returns how many scores to take, 0 when
/// none is visible.
#[inline(always)]
fn mask_scores(scores: &mut [f32], taken: usize, mask: u64) -> usize {
    if mask == VisibleBlock::ALL {
        return taken;
    }
    let within = if taken >= 64 { u64::MAX } else { (1u64 << taken) - 1 };
    if mask & within == 0 {
        return 0;
    }
    for (p, score) in scores[..taken].iter_mut().enumerate() {
        if mask & (1 << p) == 0 {
            *score = f32::NEG_INFINITY;
        }
    }
    taken
}

/// One query's online-softmax step over a block: its first `taken` scores
/// become weights `exp(score - max)`, rescaling `sum` and `acc` when the
/// block raises the maximum.
#[inline(always)]
fn softmax_step(scores: &mut [f32], taken: usize, max: &mut f32, sum: &mut f32, acc: &mut [f32]) {
    if taken == 0 {
        return;
    }
    let block_scores = &mut scores[..taken];
    let block_max = block_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    raise_max(block_max, max, sum, acc);
    let m = *max;
    for s in block_scores.iter_mut() {
        *s = exp_nonpositive(*s - m);
    }
    *sum += block_scores.iter().sum::<f32>();
}

/// Makes `block_max` the query's running maximum if it is larger,
/// rescaling the sum and weighted values accumulated under the old one.
#[inline(always)]
pub(super) fn raise_max(block_max: f32, max: &mut f32, sum: &mut f32, acc: &mut [f32]) {
    if block_max > *max {
        let correction = exp_nonpositive(*max - block_max);
        *sum *= correction;
        acc.iter_mut().for_each(|a| *a *= correction);
        *max = block_max;
    }
}

/// `acc[q] += sum_p weights[q][p] * values[p]` over each query's `taken`
/// positions, eight vector accumulators over the positions at a time.
#[inline(always)]
fn weighted_values<const FMA: bool>(weights: &[f32], lanes: usize, taken: &[usize], values: &[f32], stride: usize, acc: &mut [f32], d: usize) {
    for (i, &n) in taken.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let weights = &weights[i * lanes..i * lanes + n];
        let out = &mut acc[i * d..(i + 1) * d];
        let mut tiles = out.chunks_exact_mut(TILE);
        for (c, tile) in tiles.by_ref().enumerate() {
            let mut lanes = [0.0f32; TILE];
            lanes.copy_from_slice(tile);
            for (p, &w) in weights.iter().enumerate() {
                let v = &values[p * stride + c * TILE..][..TILE];
                for j in 0..TILE {
                    lanes[j] = madd::<FMA>(w, v[j], lanes[j]);
                }
            }
            tile.copy_from_slice(&lanes);
        }
        let done = d - d % TILE;
        for (p, &w) in weights.iter().enumerate() {
            let v = &values[p * stride + done..][..d - done];
            for (a, v) in out[done..].iter_mut().zip(v) {
                *a = madd::<FMA>(w, *v, *a);
            }
        }
    }
}
