//! AVX2 + FMA + F16C kernels (x86-64). One driver, generic over the block
//! format: each format only says how to turn 32 of its values into two
//! vectors of sixteen i16 (`q`), with the scale `d` and offset `m` that make
//! them weights (`w = d * q + m`).
//!
//! Dot products take the activations as i16 with one f32 scale per 32
//! ([`quantize_activations`]): `vpmaddwd` multiplies sixteen pairs and adds
//! them in one instruction, where widening every weight to f32 for FMA took
//! three times the instructions and left decode bound by arithmetic instead
//! of memory. Rounding `x` to 15 bits of its chunk's largest magnitude
//! errs by at most 1.5e-5 of that magnitude, 256 times finer than the 8-bit
//! activations llama.cpp uses (which change greedy answers of small models):
//! SmolLM2-135M's logits move by at most 0.023 (of ~20) and its greedy
//! answers stay those of the f32 model (`ember-engine/tests/smollm2.rs`). The driver
//! multiplies `q` into up to four tokens at once, so a block is unpacked
//! once per four tokens.
//!
//! Layouts follow ggml's `block_q*` structs (ggml-common.h) and the
//! reference `dequantize_row_*` in ggml-quants.c.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::ops::Range;

use crate::cpu::quant::{QuantMatrix, QuantType};

/// 32 values of a block, ready to multiply.
struct Chunk {
    /// Values 0..16 and 16..32 as i16.
    q: [__m256i; 2],
    /// Lane 0: `d`, which multiplies the dot of `q` with the activations;
    /// lane 1: `m`, added per element, so `m * sum(x)` per chunk (0 for
    /// symmetric formats). Together, so that one multiply by the
    /// activations' (step, sum) pair gives both factors.
    dm: __m128,
}

/// A GGML block format as the driver reads it.
trait Format {
    const BLOCK: usize;
    const BYTES: usize;
    /// Whether chunks carry an offset `m`.
    const OFFSET: bool;
    /// Chunk `sub` (0..BLOCK / 32) of the block at `b`.
    unsafe fn chunk(b: *const u8, sub: usize) -> Chunk;
}

/// The f16 at `p` in lane 0, zeros above.
#[inline(always)]
unsafe fn f16_one(p: *const u8) -> __m128 {
    // SAFETY: the caller points at two readable bytes.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<u16>()) };
    // SAFETY: F16C is enabled on every function that inlines this.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))) }
}

/// The two f16 at `p` (a block's `d` and `m`) in lanes 0 and 1, in one
/// conversion.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    // SAFETY: the caller points at four readable bytes; F16C is enabled on
    // every function that inlines this.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(read_u32(p) as i32)) }
}

/// Sixteen signed bytes each of `lo` (values 0..16) and `hi` (16..32) as i16.
#[inline(always)]
unsafe fn widen_signed(lo: __m128i, hi: __m128i) -> [__m256i; 2] {
    // SAFETY: plain AVX2 arithmetic on registers.
    unsafe { [_mm256_cvtepi8_epi16(lo), _mm256_cvtepi8_epi16(hi)] }
}

/// 32 bytes (values 0..32 in order) as i16, each byte read as `signed` or not.
#[inline(always)]
unsafe fn widen32(v: __m256i, signed: bool) -> [__m256i; 2] {
    // SAFETY: plain AVX2 arithmetic on registers.
    unsafe {
        let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        if signed {
            widen_signed(lo, hi)
        } else {
            [_mm256_cvtepu8_epi16(lo), _mm256_cvtepu8_epi16(hi)]
        }
    }
}

/// The 32 nibbles of 16 bytes as i16: low nibbles are values 0..16, high
/// nibbles 16..32 (ggml's Q4 order).
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> [__m256i; 2] {
    // SAFETY: the caller points at 16 readable bytes.
    unsafe {
        let bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
        [_mm256_and_si256(bytes, _mm256_set1_epi16(0x0F)), _mm256_srli_epi16::<4>(bytes)]
    }
}

/// Low and high nibbles of 16 bytes as bytes: values 0..16 and 16..32.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (__m128i, __m128i) {
    // SAFETY: the caller points at 16 readable bytes.
    unsafe {
        let raw = _mm_loadu_si128(p.cast());
        let mask = _mm_set1_epi8(0x0F);
        (_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16::<4>(raw), mask))
    }
}

/// 16 bits to 16 bytes, byte `j` = 0x10 when bit `j` is set: the fifth bit
/// of Q5_0/Q5_1 values.
#[inline(always)]
unsafe fn fifth_bits(bits: u32) -> __m128i {
    // SAFETY: plain SSE arithmetic on registers.
    unsafe {
        let spread = _mm_shuffle_epi8(
            _mm_cvtsi32_si128(bits as i32),
            _mm_set_epi8(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        );
        let select = _mm_set_epi8(-128, 64, 32, 16, 8, 4, 2, 1, -128, 64, 32, 16, 8, 4, 2, 1);
        let set = _mm_cmpeq_epi8(_mm_and_si128(spread, select), select);
        _mm_and_si128(set, _mm_set1_epi8(0x10))
    }
}

#[inline(always)]
unsafe fn read_u32(p: *const u8) -> u32 {
    // SAFETY: the caller points at four readable bytes.
    unsafe { std::ptr::read_unaligned(p.cast::<u32>()) }
}

struct Q8_0;
impl Format for Q8_0 {
    const BLOCK: usize = 32;
    const BYTES: usize = 34;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, _: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            let qs = b.add(2);
            Chunk {
                q: widen_signed(_mm_loadu_si128(qs.cast()), _mm_loadu_si128(qs.add(16).cast())),
                dm: f16_one(b),
            }
        }
    }
}

struct Q4_0;
impl Format for Q4_0 {
    const BLOCK: usize = 32;
    const BYTES: usize = 18;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, _: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            let [lo, hi] = nibbles16(b.add(2));
            let eight = _mm256_set1_epi16(8);
            Chunk {
                q: [_mm256_sub_epi16(lo, eight), _mm256_sub_epi16(hi, eight)],
                dm: f16_one(b),
            }
        }
    }
}

struct Q4_1;
impl Format for Q4_1 {
    const BLOCK: usize = 32;
    const BYTES: usize = 20;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, _: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            Chunk {
                q: nibbles16(b.add(4)),
                dm: f16_pair(b),
            }
        }
    }
}

struct Q5_0;
impl Format for Q5_0 {
    const BLOCK: usize = 32;
    const BYTES: usize = 22;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, _: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            let qh = read_u32(b.add(2));
            let (lo, hi) = nibbles(b.add(6));
            let sixteen = _mm_set1_epi8(16);
            let lo = _mm_sub_epi8(_mm_or_si128(lo, fifth_bits(qh & 0xFFFF)), sixteen);
            let hi = _mm_sub_epi8(_mm_or_si128(hi, fifth_bits(qh >> 16)), sixteen);
            Chunk {
                q: widen_signed(lo, hi),
                dm: f16_one(b),
            }
        }
    }
}

struct Q5_1;
impl Format for Q5_1 {
    const BLOCK: usize = 32;
    const BYTES: usize = 24;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, _: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            let qh = read_u32(b.add(4));
            let (lo, hi) = nibbles(b.add(8));
            let lo = _mm_or_si128(lo, fifth_bits(qh & 0xFFFF));
            let hi = _mm_or_si128(hi, fifth_bits(qh >> 16));
            Chunk {
                // Values 0..32: the same as signed bytes.
                q: widen_signed(lo, hi),
                dm: f16_pair(b),
            }
        }
    }
}

/// Scale and minimum factors (6 bits each) of sub-block `j` of a Q4_K/Q5_K
/// block (ggml's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Q4_K/Q5_K sub-block `sub`: its 4-bit values from the 32 bytes it shares
/// with its neighbour (low nibbles for even `sub`, high for odd), and its
/// scale and offset as [`Chunk::dm`].
#[inline(always)]
unsafe fn k4_sub(b: *const u8, qs: *const u8, sub: usize) -> (__m256i, __m128) {
    // SAFETY: `b` is a whole Q4_K/Q5_K block and `qs` its 128 nibble bytes.
    unsafe {
        let raw = _mm256_loadu_si256(qs.add((sub / 2) * 32).cast());
        let shift = _mm_cvtsi32_si128(((sub % 2) * 4) as i32);
        let v = _mm256_and_si256(_mm256_srl_epi16(raw, shift), _mm256_set1_epi8(0x0F));
        let scales = &*b.add(4).cast::<[u8; 12]>();
        let (sc, mn) = scale_min_k4(sub, scales);
        (v, _mm_mul_ps(f16_pair(b), _mm_setr_ps(f32::from(sc), -f32::from(mn), 0.0, 0.0)))
    }
}

struct Q4K;
impl Format for Q4K {
    const BLOCK: usize = 256;
    const BYTES: usize = 144;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, sub: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            let (v, dm) = k4_sub(b, b.add(16), sub);
            Chunk {
                q: widen32(v, false),
                dm,
            }
        }
    }
}

struct Q5K;
impl Format for Q5K {
    const BLOCK: usize = 256;
    const BYTES: usize = 176;
    const OFFSET: bool = true;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, sub: usize) -> Chunk {
        // SAFETY: `b` is a whole block.
        unsafe {
            let (v, dm) = k4_sub(b, b.add(48), sub);
            // The fifth bit of element l of sub-block `sub` is bit `sub` of qh[l].
            let qh = _mm256_loadu_si256(b.add(16).cast());
            let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(sub as i32)), _mm256_set1_epi8(1));
            Chunk {
                q: widen32(_mm256_or_si256(v, _mm256_slli_epi16::<4>(high)), false),
                dm,
            }
        }
    }
}

struct Q6K;
impl Format for Q6K {
    const BLOCK: usize = 256;
    const BYTES: usize = 210;
    const OFFSET: bool = false;
    #[inline(always)]
    unsafe fn chunk(b: *const u8, sub: usize) -> Chunk {
        // Sub-block `sub` is run `sub % 4` of half `sub / 4`: low 4 bits from
        // ql (low nibbles for runs 0-1, high for 2-3), two high bits from qh,
        // minus 32; one signed scale per 16 values.
        let (half, run) = (sub / 4, sub % 4);
        // SAFETY: `b` is a whole block.
        unsafe {
            let ql = _mm256_loadu_si256(b.add(half * 64 + (run % 2) * 32).cast());
            let qh = _mm256_loadu_si256(b.add(128 + half * 32).cast());
            let low = _mm256_and_si256(
                _mm256_srl_epi16(ql, _mm_cvtsi32_si128((4 * (run / 2)) as i32)),
                _mm256_set1_epi8(0x0F),
            );
            let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128((2 * run) as i32)), _mm256_set1_epi8(3));
            let v = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16::<4>(high)), _mm256_set1_epi8(32));
            let [q0, q1] = widen32(v, true);
            let scales = b.add(192).cast::<i8>();
            let first = half * 8 + run * 2;
            // |q * scale| <= 32 * 128: products with 15-bit activations and
            // their pair sums stay far inside i32.
            let s0 = _mm256_set1_epi16(i16::from(*scales.add(first)));
            let s1 = _mm256_set1_epi16(i16::from(*scales.add(first + 1)));
            Chunk {
                q: [_mm256_mullo_epi16(q0, s0), _mm256_mullo_epi16(q1, s1)],
                dm: f16_one(b.add(208)),
            }
        }
    }
}

/// Bytes ahead of the chunk being read that are prefetched, into L2. A
/// task's rows are consecutive in memory, but a core running these kernels
/// keeps too few loads in flight for this machine's memory latency (one core
/// streams 8.9 GB/s with bare loads, `scripts/membw.c 1`, and decoded at
/// 4.3 GB/s with 1 KiB of prefetch into L1). Measured on tg128 (`ember bench
/// --engine-only`, tok/s, medians of interleaved A/B runs; this machine
/// drifts, so only figures within one comparison compare): per block into
/// L1, 1 KiB 73 vs 2 KiB 78; per cache line into L1, 2 KiB 86 vs 3 KiB 75;
/// per line, 2 KiB into L1 76 vs 4 KiB into L2 87 (one thread: 54 vs 60);
/// per line into L2, 3 KiB 82, 4 KiB 87, 8 KiB 88. 0 turns it off.
const PF: usize = 4096;

/// Rows a decode step's pass reads together.
const ROWS_PER_PASS: usize = 2;

/// The sum of the eight lanes of `v` (also the attention's dot products).
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: plain AVX arithmetic on registers.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

/// `dst[i] = src[i]` for f16 bits `src`, eight at a time with F16C: the
/// f16 KV cache's rows, converted where attention reads them.
///
/// # Safety
/// The CPU has AVX and F16C.
#[target_feature(enable = "avx,f16c")]
pub(crate) unsafe fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    assert!(src.len() == dst.len(), "f16_to_f32: lengths");
    let whole = src.len() - src.len() % 8;
    // SAFETY: every load and store is eight elements below `whole`.
    unsafe {
        for i in (0..whole).step_by(8) {
            let halves = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(halves));
        }
    }
    for (d, s) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *d = half::f16::from_bits(*s).to_f32();
    }
}

/// Activations as the driver reads them, from [`super::Activations`].
#[derive(Clone, Copy)]
struct Acts {
    /// `[m, cols]` i16.
    q: *const i16,
    /// Two per 32 values: the f32 value of a step of `q`, and the sum of
    /// the original f32 values.
    steps_sums: *const f32,
}

/// Prefetches, `PF` bytes ahead into L2, the cache line that starts within
/// chunk `sub` of `block`: chunks are less than a line apart, so exactly one
/// chunk per line issues it.
#[inline(always)]
unsafe fn prefetch_ahead<F: Format>(block: *const u8, sub: usize) {
    let stride = F::BYTES / (F::BLOCK / 32);
    let ahead = block.wrapping_add(sub * stride + PF);
    if PF > 0 && (ahead as usize) % 64 < stride {
        // SAFETY: prefetching never faults, wherever it points.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.cast()) };
    }
}

/// Adds one chunk's dot with the activations `x` (its two halves as i16)
/// into `acc`, scaled by `d * step`, and `(d * step, m * sum)` into
/// `offset` (lane 1 is what counts), from the chunk's `dm` and the
/// activations' (step, sum) pair at `step_sum`.
#[inline(always)]
unsafe fn accumulate<F: Format>(q: [__m256i; 2], dm: __m128, x: [__m256i; 2], step_sum: *const f32, acc: &mut __m256, offset: &mut __m128) {
    // SAFETY: register arithmetic and a load of the caller's pair; the
    // caller enables AVX2 and FMA.
    unsafe {
        let p = _mm256_add_epi32(_mm256_madd_epi16(q[0], x[0]), _mm256_madd_epi16(q[1], x[1]));
        let factors = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(step_sum.cast())));
        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(factors), *acc);
        if F::OFFSET {
            *offset = _mm_add_ps(*offset, factors);
        }
    }
}

/// Dots of one row with `T` consecutive tokens starting at `a`.
#[inline(always)]
unsafe fn row_tokens<F: Format, const T: usize>(row: *const u8, cols: usize, a: Acts) -> [f32; T] {
    let chunks = cols / 32;
    let per_block = F::BLOCK / 32;
    // SAFETY: the driver passes a whole row and `T` tokens of `cols`
    // activations and `cols / 32` scales and sums each.
    unsafe {
        // Two accumulators per token (even and odd chunks), so consecutive
        // chunks do not wait on each other's FMA.
        let mut acc = [[_mm256_setzero_ps(); T]; 2];
        // Lane 1 of each: the chunks' `m * sum(x)`.
        let mut offsets = [[_mm_setzero_ps(); T]; 2];
        let mut pair = 0;
        while pair < chunks {
            for (k, acc) in acc.iter_mut().enumerate() {
                let c = pair + k;
                if c >= chunks {
                    break;
                }
                let (b, sub) = (c / per_block, c % per_block);
                let block = row.add(b * F::BYTES);
                prefetch_ahead::<F>(block, sub);
                let Chunk { q, dm } = F::chunk(block, sub);
                for t in 0..T {
                    let xq = a.q.add(t * cols + c * 32);
                    let x = [_mm256_loadu_si256(xq.cast()), _mm256_loadu_si256(xq.add(16).cast())];
                    let step_sum = a.steps_sums.add(2 * (t * chunks + c));
                    accumulate::<F>(q, dm, x, step_sum, &mut acc[t], &mut offsets[k][t]);
                }
            }
            pair += 2;
        }
        let mut out = [0.0f32; T];
        for t in 0..T {
            let offset = _mm_add_ps(offsets[0][t], offsets[1][t]);
            out[t] = hsum(_mm256_add_ps(acc[0][t], acc[1][t])) + _mm_cvtss_f32(_mm_movehdup_ps(offset));
        }
        out
    }
}

/// Dots of `R` rows with one token (a decode step): the rows' chunks are
/// interleaved, so `R` independent streams of loads are in flight and each
/// chunk of activations is loaded once for all of them.
#[inline(always)]
unsafe fn rows_one_token<F: Format, const R: usize>(rows: [*const u8; R], cols: usize, a: Acts) -> [f32; R] {
    let chunks = cols / 32;
    let per_block = F::BLOCK / 32;
    // SAFETY: the driver passes whole rows and one token of `cols`
    // activations and `cols / 16` steps and sums.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); R];
        // Lane 1 of each: the chunks' `m * sum(x)`.
        let mut offsets = [_mm_setzero_ps(); R];
        for c in 0..chunks {
            let (b, sub) = (c / per_block, c % per_block);
            let xq = a.q.add(c * 32);
            let x = [_mm256_loadu_si256(xq.cast()), _mm256_loadu_si256(xq.add(16).cast())];
            for r in 0..R {
                let block = rows[r].add(b * F::BYTES);
                prefetch_ahead::<F>(block, sub);
                let Chunk { q, dm } = F::chunk(block, sub);
                accumulate::<F>(q, dm, x, a.steps_sums.add(2 * c), &mut acc[r], &mut offsets[r]);
            }
        }
        std::array::from_fn(|r| hsum(acc[r]) + _mm_cvtss_f32(_mm_movehdup_ps(offsets[r])))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive<F: Format>(w: &QuantMatrix, rows: Range<usize>, a: Acts, m: usize, out: *mut f32, ldo: usize) {
    let cols = w.cols();
    let chunks = cols / 32;
    let data = w.data().as_ptr();
    let mut rows = rows;
    if m == 1 {
        // SAFETY: as below, for rows `r` and `r + 1`.
        unsafe {
            while rows.len() >= ROWS_PER_PASS {
                let r = rows.start;
                let row = |i: usize| data.add((r + i) * w.row_bytes());
                let dots = rows_one_token::<F, ROWS_PER_PASS>(std::array::from_fn(row), cols, a);
                for (i, v) in dots.iter().enumerate() {
                    *out.add(r + i) = *v;
                }
                rows.start += ROWS_PER_PASS;
            }
        }
    }
    for r in rows {
        // SAFETY: `r < w.rows()`, so the row is inside `data`; tokens and
        // output indices are within what the caller vouched for.
        unsafe {
            let row = data.add(r * w.row_bytes());
            let mut t = 0;
            while t < m {
                let a = Acts {
                    q: a.q.add(t * cols),
                    steps_sums: a.steps_sums.add(2 * t * chunks),
                };
                let store = |v: &[f32]| v.iter().enumerate().for_each(|(i, v)| *out.add((t + i) * ldo + r) = *v);
                match m - t {
                    1 => store(&row_tokens::<F, 1>(row, cols, a)),
                    2 => store(&row_tokens::<F, 2>(row, cols, a)),
                    3 => store(&row_tokens::<F, 3>(row, cols, a)),
                    _ => store(&row_tokens::<F, 4>(row, cols, a)),
                }
                t += (m - t).min(4);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_drive<F: Format>(w: &QuantMatrix, rows: Range<usize>, out: &mut [f32]) {
    let cols = w.cols();
    let data = w.data().as_ptr();
    for (i, r) in rows.enumerate() {
        let dst = &mut out[i * cols..(i + 1) * cols];
        // SAFETY: `r < w.rows()`; every chunk's 32 values land inside `dst`.
        unsafe {
            let row = data.add(r * w.row_bytes());
            for b in 0..cols / F::BLOCK {
                for sub in 0..F::BLOCK / 32 {
                    let Chunk { q, dm } = F::chunk(row.add(b * F::BYTES), sub);
                    let (d, m) = (_mm256_broadcastss_ps(dm), _mm256_broadcastss_ps(_mm_movehdup_ps(dm)));
                    let at = dst.as_mut_ptr().add((b * (F::BLOCK / 32) + sub) * 32);
                    for (j, q) in q.iter().enumerate() {
                        let lo = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(*q)));
                        let hi = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(*q)));
                        _mm256_storeu_ps(at.add(16 * j), _mm256_fmadd_ps(lo, d, m));
                        _mm256_storeu_ps(at.add(16 * j + 8), _mm256_fmadd_ps(hi, d, m));
                    }
                }
            }
        }
    }
}

/// `x` (`cols % 32 == 0` values per token) as i16 with one scale per 32
/// values: `q = round(x / s)`, `s = max |x| / 32767`, stored as `(s,
/// sum(x))` pairs in `steps_sums`. A chunk too small for its reciprocal to
/// be finite (all below ~1e-34) becomes zeros.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `q` holds `x.len()` and `steps_sums`
/// `x.len() / 16` elements.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn quantize_activations(x: &[f32], q: &mut [i16], steps_sums: &mut [f32]) {
    assert!(
        x.len().is_multiple_of(32) && q.len() == x.len() && steps_sums.len() == x.len() / 16,
        "quantize_activations: shape"
    );
    // SAFETY: every chunk reads 32 values of `x` and writes 32 of `q`.
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        for (c, step_sum) in steps_sums.chunks_exact_mut(2).enumerate() {
            let p = x.as_ptr().add(c * 32);
            let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
            step_sum[1] = hsum(_mm256_add_ps(_mm256_add_ps(v[0], v[1]), _mm256_add_ps(v[2], v[3])));
            let mx = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps::<1>(mx));
            let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            let amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps::<1>(h, h)));
            let inverse = 32767.0 / amax;
            let (s, inverse) = if amax > 0.0 && inverse.is_finite() { (amax / 32767.0, inverse) } else { (0.0, 0.0) };
            step_sum[0] = s;
            let iv = _mm256_set1_ps(inverse);
            let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, iv)));
            // packs interleaves 128-bit lanes; the permute puts them back in order.
            let lo = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(i[0], i[1]));
            let hi = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(i[2], i[3]));
            let out = q.as_mut_ptr().add(c * 32);
            _mm256_storeu_si256(out.cast(), lo);
            _mm256_storeu_si256(out.add(16).cast(), hi);
        }
    }
}

/// See [`super::dequantize_rows`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
pub unsafe fn dequantize_rows(w: &QuantMatrix, rows: Range<usize>, out: &mut [f32]) {
    assert!(rows.end <= w.rows() && out.len() >= rows.len() * w.cols(), "dequantize_rows: shape");
    // SAFETY: forwarded from the caller; shapes checked above.
    unsafe {
        match w.quant_type() {
            QuantType::Q4_0 => dequantize_drive::<Q4_0>(w, rows, out),
            QuantType::Q4_1 => dequantize_drive::<Q4_1>(w, rows, out),
            QuantType::Q5_0 => dequantize_drive::<Q5_0>(w, rows, out),
            QuantType::Q5_1 => dequantize_drive::<Q5_1>(w, rows, out),
            QuantType::Q8_0 => dequantize_drive::<Q8_0>(w, rows, out),
            QuantType::Q4K => dequantize_drive::<Q4K>(w, rows, out),
            QuantType::Q5K => dequantize_drive::<Q5K>(w, rows, out),
            QuantType::Q6K => dequantize_drive::<Q6K>(w, rows, out),
        }
    }
}

/// See [`super::dot_rows`]; `q` and `steps_sums` as in
/// [`super::Activations`].
///
/// # Safety
/// As [`super::dot_rows`], and the CPU must have AVX2, FMA and F16C.
pub unsafe fn dot_rows(
    w: &QuantMatrix,
    rows: Range<usize>,
    q: &[i16],
    steps_sums: &[f32],
    m: usize,
    out: *mut f32,
    ldo: usize,
) {
    let a = Acts {
        q: q.as_ptr(),
        steps_sums: steps_sums.as_ptr(),
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        match w.quant_type() {
            QuantType::Q4_0 => drive::<Q4_0>(w, rows, a, m, out, ldo),
            QuantType::Q4_1 => drive::<Q4_1>(w, rows, a, m, out, ldo),
            QuantType::Q5_0 => drive::<Q5_0>(w, rows, a, m, out, ldo),
            QuantType::Q5_1 => drive::<Q5_1>(w, rows, a, m, out, ldo),
            QuantType::Q8_0 => drive::<Q8_0>(w, rows, a, m, out, ldo),
            QuantType::Q4K => drive::<Q4K>(w, rows, a, m, out, ldo),
            QuantType::Q5K => drive::<Q5K>(w, rows, a, m, out, ldo),
            QuantType::Q6K => drive::<Q6K>(w, rows, a, m, out, ldo),
        }
    }
}
