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

/// Query rows of one sequence that one task takes together: their keys and
/// values are read once per block for all of them.
const TILE_ROWS: usize = 16;

/// A run of one sequence's query rows for one KV head and every query head
/// of its group: each key and value row read serves all of them.
struct Unit {
    sequence: usize,
    rows: Range<usize>,
    kv_head: usize,
}

impl Unit {
    fn queries(&self, group: usize) -> usize {
        self.rows.len() * group
    }
}

/// One task: part `part` of a unit's visible blocks. When units are too few
/// to busy every thread (a single sequence's decode step), each is split
/// over its history, flash-decoding style: the parts run in parallel and
/// their partial softmax states (max, sum, weighted values) are merged
/// after, so every key and value is still read once.
struct Task {
    unit: usize,
    part: usize,
}

/// Floats of one part's state per query: max, sum, then `d` weighted values.
fn state_len(d: usize) -> usize {
    d + 2
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
    let units = units(sequences, shape.kv_heads);
    let wanted = 4 * pool::global().threads();
    let longest = sequences.iter().map(|s| (s.past_len + s.rows.len()).div_ceil(layer.block_size())).max().unwrap_or(1);
    let parts = wanted.div_ceil(units.len().max(1)).clamp(1, longest.max(1));
    attend_in_parts(q, layer, sequences, &units, parts, visible, shape, out);
}

/// Every sequence's rows in tiles, times the KV heads; longest histories
/// first, so the last tasks claimed are short ones.
fn units(sequences: &[SequenceView<'_>], kv_heads: usize) -> Vec<Unit> {
    let mut units = Vec::new();
    for (sequence, seq) in sequences.iter().enumerate() {
        let mut end = seq.rows.end;
        while end > seq.rows.start {
            let start = end.saturating_sub(TILE_ROWS).max(seq.rows.start);
            units.extend((0..kv_heads).map(|kv_head| Unit {
                sequence,
                rows: start..end,
                kv_head,
            }));
            end = start;
        }
    }
    units.sort_by_key(|u| {
        let seq = &sequences[u.sequence];
        std::cmp::Reverse((seq.past_len + u.rows.end - seq.rows.start) * u.rows.len())
    });
    units
}

/// [`paged_attention`] with every unit's blocks split into `parts`.
#[allow(clippy::too_many_arguments)]
fn attend_in_parts(
    q: &[f32],
    layer: &KvLayer<'_>,
    sequences: &[SequenceView<'_>],
    units: &[Unit],
    parts: usize,
    visible: &dyn Visible,
    shape: Heads,
    out: &mut [f32],
) {
    let (group, d) = (shape.heads / shape.kv_heads, shape.head_dim);
    let tasks: Vec<Task> = (0..units.len()).flat_map(|unit| (0..parts).map(move |part| Task { unit, part })).collect();
    // With parts, each task leaves its state at `states[(unit * parts +
    // part) * stride..]`, `stride` fitting the largest unit.
    let stride = units.iter().map(|u| u.queries(group)).max().unwrap_or(0) * state_len(d);
    let mut states = if parts > 1 { vec![0.0f32; tasks.len() * stride] } else { Vec::new() };
    let states_ptr = SharedOut::new(&mut states);
    let out_ptr = SharedOut::new(out);
    let isa = kernels::active();
    pool::global().run(tasks.len(), &|i| {
        let Task { unit, part } = tasks[i];
        let unit_ref = &units[unit];
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            let seq = &sequences[unit_ref.sequence];
            scratch.gather(q, seq, unit_ref, visible, layer.block_size(), shape);
            let walk = Walk {
                layer,
                block_table: seq.block_table,
                kv_head: unit_ref.kv_head,
            };
            let blocks = scratch.union.len();
            attend(isa, &walk, scratch, d, blocks * part / parts..blocks * (part + 1) / parts);
            if parts > 1 {
                // SAFETY: each task owns its `stride` floats of `states`.
                let state = unsafe { std::slice::from_raw_parts_mut(states_ptr.get().add(i * stride), stride) };
                scratch.save_state(state, d);
            } else {
                scratch.normalize(d);
                // SAFETY: each unit owns its rows' heads of its group.
                unsafe { scratch.write_out(out_ptr.get(), unit_ref, shape) };
            }
        });
    });
    if parts > 1 {
        // Serially: a few hundred multiply-adds per query, less than waking
        // the pool for another region.
        for (unit, unit_ref) in units.iter().enumerate() {
            let parts_states: Vec<&[f32]> = (0..parts).map(|p| &states[(unit * parts + p) * stride..][..stride]).collect();
            for query in 0..unit_ref.queries(group) {
                let (local, head) = (query / group, query % group);
                let row = unit_ref.rows.start + local;
                let at = (row * shape.heads + unit_ref.kv_head * group + head) * d;
                merge_states(&parts_states, query * state_len(d), &mut out[at..at + d]);
            }
        }
    }
}

/// Softmax-weighted values of one query from its parts' states (max, sum,
/// unnormalised values at `at` in each).
fn merge_states(parts: &[&[f32]], at: usize, out: &mut [f32]) {
    let max = parts.iter().map(|s| s[at]).fold(f32::NEG_INFINITY, f32::max);
    out.fill(0.0);
    let mut sum = 0.0;
    for state in parts {
        let (part_max, part_sum) = (state[at], state[at + 1]);
        if part_sum == 0.0 {
            continue;
        }
        let scale = exp_nonpositive(part_max - max);
        sum += part_sum * scale;
        let d = out.len();
        for (o, v) in out.iter_mut().zip(&state[at + 2..at + 2 + d]) {
            *o += v * scale;
        }
    }
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Per-thread buffers, reused across tasks. A task's queries are its rows'
/// heads, `query = local_row * heads + head`.
#[derive(Default)]
struct Scratch {
    /// `[queries, d]`, already multiplied by 1 / sqrt(d).
    queries: Vec<f32>,
    /// Per query: positions it may see (its own position + 1).
    limits: Vec<usize>,
    /// Per row: its visible blocks; and their union, in order.
    visible: Vec<Vec<usize>>,
    union: Vec<usize>,
    /// `[d, lanes]`: the block's keys, transposed; one converted key (f16).
    keys: Vec<f32>,
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
    fn gather(&mut self, q: &[f32], seq: &SequenceView<'_>, unit: &Unit, visible: &dyn Visible, bs: usize, shape: Heads) {
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
            self.union.extend_from_slice(&self.visible[local]);
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
        self.key.resize(d, 0.0);
        self.values.resize(bs * d, 0.0);
    }

    /// Divides each query's weighted values by its sum of weights.
    fn normalize(&mut self, d: usize) {
        for (sum, acc) in self.sum.iter().zip(self.acc.chunks_exact_mut(d)) {
            let inv = if *sum > 0.0 { 1.0 / sum } else { 0.0 };
            acc.iter_mut().for_each(|a| *a *= inv);
        }
    }

    /// Each query's max, sum and unnormalised values, `state_len(d)` floats
    /// per query, into `state`.
    fn save_state(&self, state: &mut [f32], d: usize) {
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
    unsafe fn write_out(&self, out: *mut f32, unit: &Unit, shape: Heads) {
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
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Where one task reads: its sequence's blocks, for one KV head.
struct Walk<'a> {
    layer: &'a KvLayer<'a>,
    block_table: &'a [u32],
    kv_head: usize,
}

/// Walks the union's blocks `share` (indices into it), leaving each query's
/// max, sum and unnormalised weighted values in the scratch.
fn attend(isa: Isa, walk: &Walk<'_>, scratch: &mut Scratch, d: usize, share: Range<usize>) {
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
        return unsafe { dot_avx2(a, b) };
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

/// [`dot`] in AVX2 intrinsics: left to the auto-vectorizer, the lane
/// arrays above became two-float SSE operations, four times the
/// instructions of a decode step's scoring.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let whole = n - n % 32;
    // SAFETY: every load reads 8 floats below `whole <= n` of both slices;
    // the caller enables AVX2 and FMA.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        for i in (0..whole).step_by(32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                let at = i + 8 * k;
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(at)), _mm256_loadu_ps(pb.add(at)), *acc);
            }
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let tail: f32 = a[whole..n].iter().zip(&b[whole..n]).map(|(a, b)| a * b).sum();
        kernels::hsum(v) + tail
    }
}

/// Key positions scored at once: two AVX vectors per query.
const KEY_LANES: usize = 16;

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
                _ => put(first, column, &score_tile::<FMA, 4>(q, keys, lanes, column, d)),
            }
            first += (count - first).min(4);
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
        if count <= ROW_DOT_QUERIES {
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
            let sees = visible[i / per_row].binary_search(&logical).is_ok();
            *taken = if sees { n.min(limits[i].saturating_sub(first)) } else { 0 };
            if *taken == 0 {
                continue;
            }
            let block_scores = &mut scores[i * lanes..i * lanes + *taken];
            let block_max = block_scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if block_max > max[i] {
                // Rescale what was accumulated under the smaller maximum.
                let correction = exp_nonpositive(max[i] - block_max);
                sum[i] *= correction;
                acc[i * d..(i + 1) * d].iter_mut().for_each(|a| *a *= correction);
                max[i] = block_max;
            }
            let m = max[i];
            for s in block_scores.iter_mut() {
                *s = exp_nonpositive(*s - m);
            }
            sum[i] += block_scores.iter().sum::<f32>();
        }
        // Values: in place for f32 caches, converted once per block for f16.
        let (source, base, stride) = match walk.layer.f32_values() {
            Some(all) => (all, slot(0) * walk.layer.width() + walk.kv_head * d, walk.layer.width()),
            None => {
                for p in 0..n {
                    walk.layer.copy_value(slot(p), walk.kv_head, &mut values[p * d..(p + 1) * d]);
                }
                (&values[..], 0, d)
            }
        };
        for (i, &n) in taken.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let weights = &scores[i * lanes..i * lanes + n];
            let out = &mut acc[i * d..(i + 1) * d];
            let mut tiles = out.chunks_exact_mut(TILE);
            for (c, tile) in tiles.by_ref().enumerate() {
                // Eight independent vector accumulators over the positions.
                let mut lanes = [0.0f32; TILE];
                lanes.copy_from_slice(tile);
                for (p, &w) in weights.iter().enumerate() {
                    let v = &source[base + p * stride + c * TILE..][..TILE];
                    for j in 0..TILE {
                        lanes[j] = madd::<FMA>(w, v[j], lanes[j]);
                    }
                }
                tile.copy_from_slice(&lanes);
            }
            let done = d - d % TILE;
            for (p, &w) in weights.iter().enumerate() {
                let v = &source[base + p * stride + done..][..d - done];
                for (a, v) in out[done..].iter_mut().zip(v) {
                    *a = madd::<FMA>(w, *v, *a);
                }
            }
        }
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

    /// A prompt chunk longer than one task's tile (37 rows after 13 cached
    /// positions, blocks of 4 in scattered order, 6 heads over 3): every
    /// row matches naive attention under its own causal limit.
    #[test]
    fn long_prompt_chunks_match_naive_attention() {
        // A prompt chunk of several tiles, and a decode step deep in its
        // history; each whole, split over its blocks in parts (the decode
        // split), and in more parts than blocks (empty parts).
        for (past, new) in [(13usize, 37usize), (49, 1)] {
            for parts in [1, 3, 20] {
                chunk_matches_naive_attention(past, new, parts);
            }
        }
    }

    fn chunk_matches_naive_attention(past: usize, new: usize, parts: usize) {
        let (heads, kv_heads, d, bs) = (6, 3, 16, 4);
        let width = kv_heads * d;
        let total = past + new;
        let table: Vec<u32> = (0..total.div_ceil(bs) as u32).map(|b| (b * 7) % 13).collect();
        for (dtype, tolerance) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-2)] {
            let mut kv = HostKv::new(1, 13, bs, width, dtype).expect("pool");
            let mut keys = Vec::new();
            let mut values = Vec::new();
            for p in 0..total {
                let k: Vec<f32> = (0..width).map(|j| value(p * 53 + j)).collect();
                let v: Vec<f32> = (0..width).map(|j| value(p * 29 + j + 3)).collect();
                kv.write(0, table[p / bs] as usize * bs + p % bs, &k, &v);
                keys.push(k);
                values.push(v);
            }
            let sequences = [SequenceView { rows: 0..new, past_len: past, block_table: &table }];
            let q: Vec<f32> = (0..new * heads * d).map(|i| value(i * 3 + 1)).collect();
            let mut out = vec![f32::NAN; new * heads * d];
            let shape = Heads { heads, kv_heads, head_dim: d };
            let units = units(&sequences, kv_heads);
            attend_in_parts(&q, &kv.layer(0), &sequences, &units, parts, &Causal, shape, &mut out);
            for row in 0..new {
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let head_keys: Vec<Vec<f32>> = keys.iter().map(|k| k[g * d..(g + 1) * d].to_vec()).collect();
                    let head_values: Vec<Vec<f32>> = values.iter().map(|v| v[g * d..(g + 1) * d].to_vec()).collect();
                    let at = (row * heads + h) * d;
                    let want = naive(&q[at..at + d], &head_keys, &head_values, past + row + 1);
                    for (got, w) in out[at..at + d].iter().zip(&want) {
                        let context = format!("{dtype:?} past {past} new {new} parts {parts} row {row} head {h}");
                        assert!((f64::from(*got) - w).abs() < tolerance, "{context}: {got} vs {w}");
                    }
                }
            }
        }
    }

    /// A sparse layout's block list is honoured per query: two rows in one
    /// task, each seeing only its own last block, attend to those positions
    /// alone.
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
        let sequences = [SequenceView { rows: 0..2, past_len: 3, block_table: &table }];
        let mut out = vec![0.0; 2 * d];
        let shape = Heads { heads: 1, kv_heads: 1, head_dim: d };
        paged_attention(&[1.0; 8], &kv.layer(0), &sequences, &LastBlockOnly, shape, &mut out);
        // Position 3 sees block 1 only: positions 2 and 3, values 3 and 4;
        // position 4 sees block 2: position 4, value 5.
        assert!(out[..d].iter().all(|v| (v - 3.5).abs() < 1e-6), "{out:?}");
        assert!(out[d..].iter().all(|v| (v - 5.0).abs() < 1e-6), "{out:?}");
    }
}
