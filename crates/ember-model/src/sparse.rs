//! Block-sparse attention for long inputs: which earlier positions a query
//! may attend to. Qwen3 was trained with dense attention, so this is an
//! opt-in approximation, built from the pieces the long-context literature
//! measured: attention sinks (StreamingLLM, Xiao et al. 2023), a sliding
//! window of local blocks and global tokens (Longformer, Beltagy et al.
//! 2020; BigBird, Zaheer et al. 2020), and strided blocks linking distant
//! chunks.
//!
//! With block size `B` and `blk(p) = p / B`, a query at position `q` sees a
//! key at position `k <= q` when any of these holds:
//! - `q < dense_below` (short sequences stay dense);
//! - `k < sinks`;
//! - `blk(k) >= blk(q) - local` (its own block and the `local` before it);
//! - `stride > 0` and `blk(k) % stride == 0`;
//! - `k` lies in one of the sequence's global spans.
//!
//! [`SparseLayout::sees`] is that definition, word for word;
//! [`SparseLayout::visible_blocks`] turns it into the list of KV-cache
//! blocks a query reads, with a mask for blocks it sees only in part, so
//! that attention touches nothing else.

use std::ops::Range;

/// The sparse layout's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseLayout {
    /// `B`, tokens per sparse block: a multiple of the KV cache's block size.
    pub block: usize,
    /// Blocks before the query's own that stay visible.
    pub local: usize,
    /// Leading positions every query sees.
    pub sinks: usize,
    /// Every `stride`-th block stays visible to all later queries (0: none).
    pub stride: usize,
    /// Queries at positions below this see everything.
    pub dense_below: usize,
}

impl Default for SparseLayout {
    /// A window of 16 blocks of 64 tokens, 64 sink tokens, dense below 4096.
    fn default() -> Self {
        Self {
            block: 64,
            local: 16,
            sinks: 64,
            stride: 0,
            dense_below: 4096,
        }
    }
}

/// The largest KV block size a [`VisibleBlock`] mask covers.
pub const MAX_MASKED_BLOCK: usize = 64;

/// One KV-cache block a query reads: its index in the sequence's block
/// table, and which of its positions it sees (bit `i`: the block's `i`-th
/// position). The causal limit is applied apart, so a block the query sees
/// whole up to its own position is [`VisibleBlock::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VisibleBlock {
    pub block: usize,
    pub mask: u64,
}

impl VisibleBlock {
    pub const ALL: u64 = u64::MAX;

    pub fn whole(block: usize) -> Self {
        Self { block, mask: Self::ALL }
    }

    /// Whether the block's `i`-th position is visible.
    pub fn sees(&self, i: usize) -> bool {
        i < 64 && self.mask & (1 << i) != 0
    }
}

/// Why a layout cannot be used with a KV cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("sparse_block must be a positive multiple of the KV block size {kv_block}, got {block}")]
    BlockNotMultiple { block: usize, kv_block: usize },
    #[error("sparse attention needs a KV block size of at most {MAX_MASKED_BLOCK}, got {0}")]
    KvBlockTooLarge(usize),
}

impl SparseLayout {
    /// Checks the layout against the KV cache's block size.
    pub fn validate(&self, kv_block: usize) -> Result<(), LayoutError> {
        if kv_block == 0 || kv_block > MAX_MASKED_BLOCK {
            return Err(LayoutError::KvBlockTooLarge(kv_block));
        }
        if self.block == 0 || !self.block.is_multiple_of(kv_block) {
            return Err(LayoutError::BlockNotMultiple {
                block: self.block,
                kv_block,
            });
        }
        Ok(())
    }

    fn blk(&self, p: usize) -> usize {
        p / self.block
    }

    /// Whether a query at position `q` sees the key at position `k`: the
    /// definition itself, one position at a time (tests and masks for the
    /// dense reference use it).
    pub fn sees(&self, spans: &[Range<usize>], q: usize, k: usize) -> bool {
        k <= q
            && (q < self.dense_below
                || k < self.sinks
                || self.blk(k) + self.local >= self.blk(q)
                || (self.stride > 0 && self.blk(k).is_multiple_of(self.stride))
                || spans.iter().any(|s| s.contains(&k)))
    }

    /// Whether a query at position `from` or later may still see a key in
    /// KV block `b` (of `kv_block` tokens; the layout validated against it).
    /// False once the window has moved past the block and it holds no sink,
    /// strided block or global span; the window only moves forward, so such
    /// a block is never read again and its memory can go back to the pool.
    pub fn kv_block_needed(&self, spans: &[Range<usize>], from: usize, b: usize, kv_block: usize) -> bool {
        let (start, end) = (b * kv_block, (b + 1) * kv_block);
        end > self.window_start(from)
            || start < self.sinks
            // A KV block lies inside one sparse block (`validate`).
            || (self.stride > 0 && self.blk(start).is_multiple_of(self.stride))
            || spans.iter().any(|s| s.start < end && s.end > start)
    }

    /// The most KV blocks (of `kv_block` tokens) a sequence of `len` tokens
    /// holds at once when it gives back every block `kv_block_needed` lets
    /// go after each step of at most `chunk` tokens, global spans aside:
    /// everything while it is below `dense_below`, then the sinks, the
    /// strided blocks so far, the window and the chunk being computed.
    pub fn max_kv_blocks_held(&self, len: usize, chunk: usize, kv_block: usize) -> usize {
        let all = len.div_ceil(kv_block);
        let dense = (self.dense_below + chunk).div_ceil(kv_block) + 1;
        let sinks = self.sinks.div_ceil(kv_block);
        let strided = match self.stride {
            0 => 0,
            s => len.div_ceil(self.block * s) * (self.block / kv_block),
        };
        let window = ((self.local + 1) * self.block + chunk).div_ceil(kv_block) + 2;
        all.min(dense.max(sinks + strided + window))
    }

    /// The first position of the window of a query at `q`: every key from
    /// it on is seen; 0 while `q` is below `dense_below`.
    pub fn window_start(&self, q: usize) -> usize {
        if q < self.dense_below { 0 } else { self.blk(q).saturating_sub(self.local) * self.block }
    }

    /// The KV blocks (of `kv_block` tokens; the layout validated against
    /// it) that a query at position `q` reads, increasing, into `out`.
    /// Cost: the blocks listed plus the spans, not the sequence length.
    pub fn visible_blocks(&self, spans: &[Range<usize>], q: usize, kv_block: usize, out: &mut Vec<VisibleBlock>) {
        out.clear();
        let last = q / kv_block;
        if q < self.dense_below {
            out.extend((0..=last).map(VisibleBlock::whole));
            return;
        }
        let per_block = self.block / kv_block;
        // Whole sparse blocks from `window` on: the window.
        let window = self.blk(q).saturating_sub(self.local) * per_block;
        // Strided sparse blocks before the window.
        if self.stride > 0 {
            let mut j = 0;
            while j * per_block < window {
                out.extend((j * per_block..((j + 1) * per_block).min(window)).map(VisibleBlock::whole));
                j += self.stride;
            }
        }
        // Sinks and global spans before the window, as position ranges.
        let before = window * kv_block;
        let mut add_positions = |range: Range<usize>| {
            let range = range.start..range.end.min(before);
            let mut p = range.start;
            while p < range.end {
                let block = p / kv_block;
                let block_end = ((block + 1) * kv_block).min(range.end);
                let mask = bits(p - block * kv_block..block_end - block * kv_block);
                out.push(VisibleBlock { block, mask });
                p = block_end;
            }
        };
        add_positions(0..self.sinks);
        for span in spans {
            add_positions(span.clone());
        }
        out.extend((window..=last).map(VisibleBlock::whole));
        // Merge: sorted by block, masks of one block OR-ed together.
        out.sort_unstable_by_key(|b| b.block);
        out.dedup_by(|later, kept| {
            let same = later.block == kept.block;
            if same {
                kept.mask |= later.mask;
            }
            same
        });
        let whole = bits(0..kv_block);
        for b in out.iter_mut() {
            if b.mask & whole == whole {
                b.mask = VisibleBlock::ALL;
            }
        }
    }
}

/// A mask with bits `range` set (`range.end <= 64`).
fn bits(range: Range<usize>) -> u64 {
    let upto = |n: usize| if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    upto(range.end) & !upto(range.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position the block list says is visible is, and no other:
    /// checked against the definition for every (query, key) pair over a
    /// range of layouts, block sizes and spans.
    #[test]
    fn visible_blocks_match_the_definition() {
        let spans_sets: [&[Range<usize>]; 4] = [&[], &[5..9], &[70..75, 130..260], &[0..3, 33..34, 300..400]];
        let mut out = Vec::new();
        for kv_block in [4, 8, 16] {
            for (block, local, sinks, stride, dense_below) in [
                (16, 1, 0, 0, 0),
                (16, 2, 5, 0, 40),
                (32, 1, 12, 3, 0),
                (kv_block, 0, 1, 2, 100),
                (64, 16, 64, 0, 4096),
            ] {
                let layout = SparseLayout { block, local, sinks, stride, dense_below };
                if layout.validate(kv_block).is_err() {
                    continue;
                }
                for spans in spans_sets {
                    for q in 0..450 {
                        layout.visible_blocks(spans, q, kv_block, &mut out);
                        assert!(out.windows(2).all(|w| w[0].block < w[1].block), "{layout:?} q {q}: not increasing");
                        for k in 0..=q {
                            let listed = out.iter().find(|b| b.block == k / kv_block).is_some_and(|b| b.sees(k % kv_block));
                            assert_eq!(listed, layout.sees(spans, q, k), "{layout:?} kv_block {kv_block} spans {spans:?} q {q} k {k}");
                        }
                        assert!(out.iter().all(|b| b.block <= q / kv_block), "{layout:?} q {q}: a block past the query");
                    }
                }
            }
        }
    }

    /// With the window covering the whole sequence, sparse is dense.
    #[test]
    fn a_window_over_everything_is_dense() {
        let layout = SparseLayout { block: 16, local: 1000, sinks: 0, stride: 0, dense_below: 0 };
        let mut out = Vec::new();
        for q in [0, 15, 16, 1000, 15_999] {
            layout.visible_blocks(&[], q, 16, &mut out);
            assert_eq!(out, (0..=q / 16).map(VisibleBlock::whole).collect::<Vec<_>>());
        }
    }

    /// Deep in a long sequence a decode step reads a bounded number of
    /// blocks: the sinks, the window and the spans, whatever the length.
    #[test]
    fn blocks_read_stay_bounded_as_the_sequence_grows() {
        let layout = SparseLayout::default();
        let spans = [10_000..10_050];
        let mut out = Vec::new();
        for q in [8_192, 65_536, 262_143] {
            layout.visible_blocks(&spans, q, 16, &mut out);
            // 64 sinks = 4 blocks, 17 sparse blocks of 4, the span's 4 or 5.
            assert!(out.len() <= 4 + 17 * 4 + 5, "q {q}: {} blocks", out.len());
        }
    }

    #[test]
    fn layouts_are_checked_against_the_kv_block() {
        let layout = SparseLayout { block: 24, ..SparseLayout::default() };
        assert_eq!(layout.validate(16), Err(LayoutError::BlockNotMultiple { block: 24, kv_block: 16 }));
        assert!(layout.validate(8).is_ok());
        assert_eq!(SparseLayout::default().validate(128), Err(LayoutError::KvBlockTooLarge(128)));
    }

    /// A block `kv_block_needed` lets go is seen by no later query, and one
    /// it keeps is seen by some query at or after `from`.
    #[test]
    fn blocks_let_go_are_never_seen_again() {
        let spans: &[Range<usize>] = &[70..75, 200..203];
        for kv_block in [4, 8] {
            for (block, local, sinks, stride, dense_below) in [(8, 1, 0, 0, 0), (16, 2, 5, 3, 40), (kv_block, 0, 1, 2, 100)] {
                let layout = SparseLayout { block, local, sinks, stride, dense_below };
                for from in (0..300usize).step_by(7) {
                    for b in 0..from.div_ceil(kv_block) {
                        let keys = b * kv_block..(b + 1) * kv_block;
                        let horizon = from + block * (local + 2);
                        let seen = (from..horizon).any(|q| keys.clone().any(|k| layout.sees(spans, q, k)));
                        assert_eq!(
                            layout.kv_block_needed(spans, from, b, kv_block),
                            seen,
                            "{layout:?} kv_block {kv_block} from {from} block {b}"
                        );
                    }
                }
            }
        }
    }

    /// Stepping a sequence through prefill chunks and decode steps, the
    /// blocks it holds (those still needed plus the chunk's new ones) never
    /// exceed `max_kv_blocks_held`, and the bound stays flat with length
    /// when there is no stride.
    #[test]
    fn blocks_held_stay_under_the_bound() {
        let kv_block = 8;
        for (block, local, sinks, stride, dense_below) in [(8, 1, 0, 0, 0), (16, 2, 5, 3, 40), (32, 4, 64, 0, 256)] {
            let layout = SparseLayout { block, local, sinks, stride, dense_below };
            for chunk in [1, 24, 64] {
                let (len, mut computed, mut peak) = (3000usize, 0usize, 0usize);
                while computed < len {
                    let step = if computed < 1000 { chunk } else { 1 }.min(len - computed);
                    let kept = (0..computed.div_ceil(kv_block))
                        .filter(|&b| layout.kv_block_needed(&[], computed, b, kv_block))
                        .count();
                    let new = (computed + step).div_ceil(kv_block) - computed.div_ceil(kv_block);
                    peak = peak.max(kept + new);
                    computed += step;
                }
                let bound = layout.max_kv_blocks_held(len, chunk, kv_block);
                assert!(peak <= bound, "{layout:?} chunk {chunk}: held {peak} > bound {bound}");
                if stride == 0 {
                    assert_eq!(bound, layout.max_kv_blocks_held(100 * len, chunk, kv_block), "{layout:?}");
                }
            }
        }
    }
}

