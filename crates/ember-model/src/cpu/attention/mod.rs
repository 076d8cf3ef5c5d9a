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

mod avx2;
mod walk;

use super::kernels;
use super::kv::KvLayer;
use super::pool;
use super::SharedOut;
use super::ops::exp_nonpositive;
use crate::sparse::{SparseLayout, VisibleBlock};
use walk::{SCRATCH, Walk, attend};

/// One sequence of the step.
pub struct SequenceView<'a> {
    /// Its new tokens' rows in the step's `[tokens, heads * head_dim]` queries.
    pub rows: Range<usize>,
    /// Positions cached before this step (the first new token's position).
    pub past_len: usize,
    /// Pool blocks holding positions `0..past_len + rows.len()`, in order.
    pub block_table: &'a [u32],
    /// Position ranges every later query of the sequence sees, whatever the
    /// layout (a sparse layout's global spans; ignored by dense attention).
    pub global_spans: &'a [Range<usize>],
}

/// The blocks a query attends to: indices into its sequence's block table,
/// increasing, each with the mask of its positions the query sees.
/// Positions past the query's own are never visible, whatever the list
/// says (the causal limit is applied inside the last block).
pub trait Visible: Sync {
    fn blocks(&self, sequence: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<VisibleBlock>);
}

/// Dense causal attention: every block up to the query's own position.
pub struct Causal;

impl Visible for Causal {
    fn blocks(&self, _: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<VisibleBlock>) {
        out.clear();
        out.extend((0..=position / block_size).map(VisibleBlock::whole));
    }
}

/// Block-sparse attention (the layout validated against the pool's block
/// size), with each sequence's own global spans.
impl Visible for SparseLayout {
    fn blocks(&self, sequence: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<VisibleBlock>) {
        self.visible_blocks(sequence.global_spans, position, block_size, out);
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
            let blocks = scratch.blocks();
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

#[cfg(test)]
mod tests;
