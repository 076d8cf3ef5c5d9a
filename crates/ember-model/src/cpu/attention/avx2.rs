//! The walk's inner steps in AVX2 intrinsics. Left to the auto-vectorizer,
//! a query's block max and sum of weights were scalar chains of sixteen
//! dependent `vmaxss` / `vaddss`, and its weighted values reloaded its
//! accumulators for every block: a third of a prompt chunk's attention.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::cpu::kernels;

/// `dot(a, b)` with four chains of eight partial sums, which hide the FMA
/// latency one chain would wait on.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
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

/// Scores of a decode step's few queries (`[count, d]`, `d` a multiple of
/// 8) against `n` key rows `stride` apart, into `scores[q * lanes + p]`.
/// Four keys by up to three queries at a time: twelve accumulators, each
/// key chunk loaded once for every query, and one horizontal reduction per
/// four scores instead of one per score (a dot per key and query spent
/// more on its reduction than on its eight multiply-adds).
///
/// # Safety
/// The CPU has AVX2 and FMA; `keys` holds `n` rows of `d` floats, `stride`
/// apart; `scores` holds `count * lanes` floats with `n <= lanes`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn score_rows(queries: &[f32], count: usize, keys: *const f32, stride: usize, n: usize, scores: &mut [f32], lanes: usize, d: usize) {
    assert!(d.is_multiple_of(8) && queries.len() >= count * d && scores.len() >= count * lanes && n <= lanes, "score_rows: shape");
    let mut first = 0;
    while first < count {
        let q = (count - first).min(3);
        let (queries, out) = (queries[first * d..].as_ptr(), scores[first * lanes..].as_mut_ptr());
        let mut p = 0;
        // SAFETY: rows `p..p + 4 <= n` of `keys`, the queries' `d` columns
        // and their first `n` scores, as the caller and the assert promise.
        unsafe {
            while p + 4 <= n {
                let (keys, out) = (keys.add(p * stride), out.add(p));
                match q {
                    1 => score_four::<1>(queries, keys, stride, d, out, lanes),
                    2 => score_four::<2>(queries, keys, stride, d, out, lanes),
                    _ => score_four::<3>(queries, keys, stride, d, out, lanes),
                }
                p += 4;
            }
            for p in p..n {
                let key = std::slice::from_raw_parts(keys.add(p * stride), d);
                for i in 0..q {
                    *out.add(i * lanes + p) = dot(std::slice::from_raw_parts(queries.add(i * d), d), key);
                }
            }
        }
        first += q;
    }
}

/// `dst[j * lanes + p] = src[p * stride + j]` for `rows` rows of `d`
/// columns (both multiples of 8), by 8x8 tiles in registers: the scalar
/// loop spent a sixth of a prompt chunk's attention here.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
pub(super) unsafe fn transpose_rows(src: &[f32], stride: usize, rows: usize, d: usize, dst: &mut [f32], lanes: usize) {
    assert!(
        rows.is_multiple_of(8) && d.is_multiple_of(8) && rows <= lanes && dst.len() >= d * lanes && (rows == 0 || src.len() >= (rows - 1) * stride + d),
        "transpose_rows: shape"
    );
    // SAFETY: every load is inside the `rows` rows of `src` and every store
    // inside `dst`, as checked above.
    unsafe {
        let (s, t) = (src.as_ptr(), dst.as_mut_ptr());
        for p in (0..rows).step_by(8) {
            for j in (0..d).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(s.add((p + i) * stride + j)));
                let a: [__m256; 8] = std::array::from_fn(|i| {
                    let (x, y) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
                    if i % 2 == 0 { _mm256_unpacklo_ps(x, y) } else { _mm256_unpackhi_ps(x, y) }
                });
                // b[0..4] from rows 0-3, b[4..8] from rows 4-7: column c
                // of each 128-bit half in b[c].
                let b: [__m256; 8] = std::array::from_fn(|i| {
                    let (x, y) = (a[i / 4 * 4 + i % 4 / 2], a[i / 4 * 4 + i % 4 / 2 + 2]);
                    if i % 2 == 0 { _mm256_shuffle_ps::<0x44>(x, y) } else { _mm256_shuffle_ps::<0xEE>(x, y) }
                });
                for c in 0..4 {
                    _mm256_storeu_ps(t.add((j + c) * lanes + p), _mm256_permute2f128_ps::<0x20>(b[c], b[4 + c]));
                    _mm256_storeu_ps(t.add((j + 4 + c) * lanes + p), _mm256_permute2f128_ps::<0x31>(b[c], b[4 + c]));
                }
            }
        }
    }
}

/// `Q` queries against four key rows.
#[inline(always)]
unsafe fn score_four<const Q: usize>(queries: *const f32, keys: *const f32, stride: usize, d: usize, out: *mut f32, lanes: usize) {
    // SAFETY: as `score_rows` promises.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 4]; Q];
        for c in (0..d).step_by(8) {
            let k: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(keys.add(j * stride + c)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let q = _mm256_loadu_ps(queries.add(i * d + c));
                for (a, k) in acc.iter_mut().zip(&k) {
                    *a = _mm256_fmadd_ps(q, *k, *a);
                }
            }
        }
        for (i, [a0, a1, a2, a3]) in acc.iter().enumerate() {
            // [s0 s1 s2 s3] of the low lanes, then of the high lanes.
            let pairs = _mm256_hadd_ps(_mm256_hadd_ps(*a0, *a1), _mm256_hadd_ps(*a2, *a3));
            let sums = _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps::<1>(pairs));
            _mm_storeu_ps(out.add(i * lanes), sums);
        }
    }
}

/// [`crate::cpu::ops::exp_nonpositive`] on eight lanes, step for step the same
/// operations (no fused multiply-adds), so both paths weigh alike.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
pub(super) unsafe fn exp_nonpositive(x: __m256) -> __m256 {
    // SAFETY: register arithmetic; the caller enables AVX2.
    unsafe {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _mm256_set1_ps(0.5)));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693_359_4))),
            _mm256_mul_ps(n, _mm256_set1_ps(-2.121_944_4e-4)),
        );
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: register arithmetic; the caller enables AVX.
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)))
    }
}

/// One query's online-softmax step over a block: `scores` (a multiple of
/// eight long) holds its scores, of which the first `taken` count. Leaves
/// their weights `exp(score - max)` there and zeroes the rest, so that
/// [`weighted_values`] can run several queries to the longest of their
/// lengths; rescales `sum` and `acc` when the block raises the maximum.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub(super) unsafe fn softmax_step(scores: &mut [f32], taken: usize, max: &mut f32, sum: &mut f32, acc: &mut [f32]) {
    let chunks = taken.div_ceil(8);
    assert!(scores.len().is_multiple_of(8) && taken <= scores.len(), "softmax_step: shape");
    // SAFETY: every load and store is a whole chunk of eight inside `scores`.
    unsafe {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let limit = _mm256_set1_epi32(taken as i32);
        let mask = |c: usize| _mm256_castsi256_ps(_mm256_cmpgt_epi32(limit, _mm256_add_epi32(lane, _mm256_set1_epi32(8 * c as i32))));
        let at = scores.as_mut_ptr();
        let low = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut block_max = low;
        for c in 0..chunks {
            block_max = _mm256_max_ps(block_max, _mm256_blendv_ps(low, _mm256_loadu_ps(at.add(8 * c)), mask(c)));
        }
        super::walk::raise_max(hmax(block_max), max, sum, acc);
        let m = _mm256_set1_ps(*max);
        let mut total = _mm256_setzero_ps();
        for c in 0..scores.len() / 8 {
            let weights = if c < chunks {
                _mm256_and_ps(exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(at.add(8 * c)), m)), mask(c))
            } else {
                _mm256_setzero_ps()
            };
            total = _mm256_add_ps(total, weights);
            _mm256_storeu_ps(at.add(8 * c), weights);
        }
        *sum += kernels::hsum(total);
    }
}

/// `acc[q] += sum_p weights[q][p] * v[p]` for every query of a block, the
/// weights as [`softmax_step`] left them (`lanes` apart, zero past each
/// query's `taken`), the values `stride` apart from `values`. Three
/// queries by 32 columns at a time: twelve accumulators in registers, and
/// each value row loaded once for three queries.
///
/// # Safety
/// The CPU has AVX2 and FMA; `values` holds `max(taken)` rows of `d`
/// floats, `stride` apart.
#[inline(always)]
pub(super) unsafe fn weighted_values(weights: &[f32], lanes: usize, taken: &[usize], values: &[f32], stride: usize, acc: &mut [f32], d: usize) {
    assert!(weights.len() >= taken.len() * lanes && acc.len() >= taken.len() * d, "weighted_values: shape");
    let mut first = 0;
    while first < taken.len() {
        let count = (taken.len() - first).min(3);
        let n = taken[first..first + count].iter().copied().max().unwrap_or(0);
        assert!(n <= lanes && (n == 0 || values.len() >= (n - 1) * stride + d), "weighted_values: rows");
        let w = weights[first * lanes..].as_ptr();
        let mut column = 0;
        // SAFETY: the tiles read `n` weights per query and `n` value rows,
        // and write the queries' columns of `acc`, all checked above.
        unsafe {
            let a = acc.as_mut_ptr().add(first * d);
            while column + 32 <= d {
                values_tile::<4>(count, w, lanes, n, values.as_ptr().add(column), stride, a.add(column), d);
                column += 32;
            }
            while column + 8 <= d {
                values_tile::<1>(count, w, lanes, n, values.as_ptr().add(column), stride, a.add(column), d);
                column += 8;
            }
        }
        for q in 0..count {
            for j in column..d {
                let mut s = acc[(first + q) * d + j];
                for p in 0..n {
                    s = weights[(first + q) * lanes + p].mul_add(values[p * stride + j], s);
                }
                acc[(first + q) * d + j] = s;
            }
        }
        first += count;
    }
}

/// `count` (1 to 3) queries by `8 V` columns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn values_tile<const V: usize>(count: usize, w: *const f32, lanes: usize, n: usize, v: *const f32, stride: usize, acc: *mut f32, d: usize) {
    // SAFETY: as `weighted_values` checks.
    unsafe {
        match count {
            1 => values_tile_rows::<1, V>(w, lanes, n, v, stride, acc, d),
            2 => values_tile_rows::<2, V>(w, lanes, n, v, stride, acc, d),
            _ => values_tile_rows::<3, V>(w, lanes, n, v, stride, acc, d),
        }
    }
}

#[inline(always)]
unsafe fn values_tile_rows<const R: usize, const V: usize>(w: *const f32, lanes: usize, n: usize, v: *const f32, stride: usize, acc: *mut f32, d: usize) {
    // SAFETY: as `weighted_values` checks.
    unsafe {
        let mut sums = [[_mm256_setzero_ps(); V]; R];
        for (q, sums) in sums.iter_mut().enumerate() {
            for (k, s) in sums.iter_mut().enumerate() {
                *s = _mm256_loadu_ps(acc.add(q * d + 8 * k));
            }
        }
        for p in 0..n {
            let weights: [__m256; R] = std::array::from_fn(|q| _mm256_broadcast_ss(&*w.add(q * lanes + p)));
            for k in 0..V {
                let row = _mm256_loadu_ps(v.add(p * stride + 8 * k));
                for (sums, weight) in sums.iter_mut().zip(&weights) {
                    sums[k] = _mm256_fmadd_ps(*weight, row, sums[k]);
                }
            }
        }
        for (q, sums) in sums.iter().enumerate() {
            for (k, s) in sums.iter().enumerate() {
                _mm256_storeu_ps(acc.add(q * d + 8 * k), *s);
            }
        }
    }
}
