use super::*;
use std::ops::Range;
use crate::cpu::ops::exp_nonpositive;
use crate::cpu::kv::{HostKv, KvDtype};

/// The AVX2 exponential gives the scalar one's bits, so both paths weigh
/// alike.
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_exp_matches_the_scalar_one() {
    use std::arch::x86_64::*;
    if !is_x86_feature_detected!("avx2") {
        return;
    }
    for i in (0..=17_600).step_by(8) {
        let xs: [f32; 8] = std::array::from_fn(|l| -((i + l) as f32) * 0.005);
        let mut got = [0.0f32; 8];
        // SAFETY: AVX2 checked above.
        unsafe { _mm256_storeu_ps(got.as_mut_ptr(), avx2::exp_nonpositive(_mm256_loadu_ps(xs.as_ptr()))) };
        for (x, g) in xs.iter().zip(got) {
            assert_eq!(g.to_bits(), exp_nonpositive(*x).to_bits(), "exp({x})");
        }
    }
}

fn value(i: usize) -> f32 {
    ((i.wrapping_mul(2_654_435_761) % 1000) as f32 / 500.0 - 1.0) * 2.0
}

/// Naive attention in f64 for one query row of one head over keys
/// `0..limit` of that sequence (`keys[p]`, `values[p]` per position).
fn naive(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], limit: usize) -> Vec<f64> {
    naive_over(q, keys, values, &(0..limit).collect::<Vec<_>>())
}

/// Naive attention over the key positions `seen` only (a dense
/// computation under an explicit mask).
fn naive_over(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], seen: &[usize]) -> Vec<f64> {
    let d = q.len();
    let scale = 1.0 / (d as f64).sqrt();
    let scores: Vec<f64> = seen
        .iter()
        .map(|&p| q.iter().zip(&keys[p]).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * scale)
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    (0..d)
        .map(|j| seen.iter().zip(&weights).map(|(&p, w)| w * f64::from(values[p][j])).sum::<f64>() / total)
        .collect()
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
            SequenceView { rows: 0..3, past_len: 8, block_table: tables[0], global_spans: &[] },
            SequenceView { rows: 3..4, past_len: 5, block_table: tables[1], global_spans: &[] },
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
    // Heads of 40 take the vector paths' tiles of 32 and 8 columns; groups
    // of 2, 3 and 4 query heads take the decode scores' chunks of up to
    // three queries, and heads of 12 the path without vectors. Blocks of
    // 8 take the prompt path's 8x8 transposition of the keys, blocks of 4
    // its scalar one.
    for bs in [4, 8] {
        for (past, new) in [(13usize, 37usize), (49, 1)] {
            for parts in [1, 3, 20] {
                for d in [16, 40] {
                    chunk_matches_naive_attention(past, new, parts, d, 6, bs);
                }
            }
        }
    }
    for heads in [9, 12] {
        for d in [12, 16] {
            chunk_matches_naive_attention(49, 1, 2, d, heads, 4);
        }
    }
}

fn chunk_matches_naive_attention(past: usize, new: usize, parts: usize, d: usize, heads: usize, bs: usize) {
    let kv_heads = 3;
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
        let sequences = [SequenceView { rows: 0..new, past_len: past, block_table: &table, global_spans: &[] }];
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
                    let context = format!("{dtype:?} bs {bs} d {d} heads {heads} past {past} new {new} parts {parts} row {row} head {h}");
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
        fn blocks(&self, _: &SequenceView<'_>, position: usize, block_size: usize, out: &mut Vec<VisibleBlock>) {
            out.clear();
            out.push(VisibleBlock::whole(position / block_size));
        }
    }
    let (d, bs) = (4, 2);
    let mut kv = HostKv::new(1, 3, bs, d, KvDtype::F32).expect("pool");
    // Values 1, 2, 3, 4, 5 at positions 0..5 (all keys equal: uniform weights).
    for p in 0..5 {
        kv.write(0, p, &[0.0; 4], &[p as f32 + 1.0; 4]);
    }
    let table = [0, 1, 2];
    let sequences = [SequenceView { rows: 0..2, past_len: 3, block_table: &table, global_spans: &[] }];
    let mut out = vec![0.0; 2 * d];
    let shape = Heads { heads: 1, kv_heads: 1, head_dim: d };
    paged_attention(&[1.0; 8], &kv.layer(0), &sequences, &LastBlockOnly, shape, &mut out);
    // Position 3 sees block 1 only: positions 2 and 3, values 3 and 4;
    // position 4 sees block 2: position 4, value 5.
    assert!(out[..d].iter().all(|v| (v - 3.5).abs() < 1e-6), "{out:?}");
    assert!(out[d..].iter().all(|v| (v - 5.0).abs() < 1e-6), "{out:?}");
}

/// Block-sparse layouts, batched: a prompt chunk of two tiles and a decode
/// step, each sequence with its own global spans, sinks and spans that end
/// mid-block (partial masks), strided blocks, scattered block tables, whole
/// and split into parts, f32 and f16: every row equals dense attention
/// under the layout's explicit mask.
#[test]
fn sparse_layouts_match_dense_attention_under_their_mask() {
    use crate::sparse::SparseLayout;
    let (heads, kv_heads, d, bs) = (6, 3, 16, 4);
    let width = kv_heads * d;
    let layout = SparseLayout { block: 8, local: 1, sinks: 3, stride: 3, dense_below: 10 };
    layout.validate(bs).expect("layout");
    let lengths = [70usize, 61];
    let spans: [Vec<Range<usize>>; 2] = [vec![21..26, 40..41], vec![5..7]];
    let tables: [Vec<u32>; 2] = [(0..18).rev().collect(), (0..16).map(|b| 18 + (b * 5) % 16).collect()];
    for (dtype, tolerance) in [(KvDtype::F32, 1e-5), (KvDtype::F16, 2e-2)] {
        let mut kv = HostKv::new(1, 34, bs, width, dtype).expect("pool");
        let mut keys = vec![Vec::new(), Vec::new()];
        let mut values = vec![Vec::new(), Vec::new()];
        for s in 0..2 {
            for p in 0..lengths[s] {
                let k: Vec<f32> = (0..width).map(|j| value(s * 5000 + p * 37 + j)).collect();
                let v: Vec<f32> = (0..width).map(|j| value(s * 9000 + p * 23 + j + 1)).collect();
                kv.write(0, tables[s][p / bs] as usize * bs + p % bs, &k, &v);
                keys[s].push(k);
                values[s].push(v);
            }
        }
        // Rows 0..30: sequence 0's positions 40..70; row 30: sequence 1's 60.
        let sequences = [
            SequenceView { rows: 0..30, past_len: 40, block_table: &tables[0], global_spans: &spans[0] },
            SequenceView { rows: 30..31, past_len: 60, block_table: &tables[1], global_spans: &spans[1] },
        ];
        let q: Vec<f32> = (0..31 * heads * d).map(|i| value(i * 7 + 2)).collect();
        for parts in [1, 3] {
            let mut out = vec![f32::NAN; q.len()];
            let units = units(&sequences, kv_heads);
            let shape = Heads { heads, kv_heads, head_dim: d };
            attend_in_parts(&q, &kv.layer(0), &sequences, &units, parts, &layout, shape, &mut out);
            for (row, s, position) in (0..30).map(|r| (r, 0, 40 + r)).chain([(30, 1, 60)]) {
                let seen: Vec<usize> = (0..=position).filter(|&k| layout.sees(&spans[s], position, k)).collect();
                assert!(seen.len() < position + 1, "position {position} must not see everything");
                for h in 0..heads {
                    let g = h / (heads / kv_heads);
                    let head_keys: Vec<Vec<f32>> = keys[s].iter().map(|k| k[g * d..(g + 1) * d].to_vec()).collect();
                    let head_values: Vec<Vec<f32>> = values[s].iter().map(|v| v[g * d..(g + 1) * d].to_vec()).collect();
                    let at = (row * heads + h) * d;
                    let want = naive_over(&q[at..at + d], &head_keys, &head_values, &seen);
                    for (got, w) in out[at..at + d].iter().zip(&want) {
                        let context = format!("{dtype:?} parts {parts} row {row} head {h}");
                        assert!((f64::from(*got) - w).abs() < tolerance, "{context}: {got} vs {w}");
                    }
                }
            }
        }
    }
}
