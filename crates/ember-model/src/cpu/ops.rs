//! The element-wise layers of the fast path on host slices: one pass over
//! memory each, where Burn's versions take several ops (cast, square, mean,
//! sqrt, recip, mul for RMSNorm; slice, neg, cat, two muls and an add for
//! RoPE). Formulas as in Hugging Face's `modeling_qwen3.py`.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::kernels::{self, Isa};
use super::{SharedOut, pool};

/// Elements per task of the element-wise passes: a prompt chunk's MLP
/// activations (512 x 1536 for SmolLM2) are split over the pool, a decode
/// step's stay on the calling thread.
const PARALLEL_CHUNK: usize = 16 * 1024;

/// Runs `pass(range, &mut out[range])` over runs of `chunk` elements of
/// `out` (a multiple of `chunk` when the caller needs whole rows), on the
/// thread pool when there are several, else on the calling thread.
fn over_pool(out: &mut [f32], chunk: usize, pass: &(dyn Fn(Range<usize>, &mut [f32]) + Sync)) {
    let len = out.len();
    if len <= chunk {
        pass(0..len, out);
        return;
    }
    let shared = SharedOut::new(out);
    pool::global().run(len.div_ceil(chunk), &|task| {
        let range = task * chunk..((task + 1) * chunk).min(len);
        // SAFETY: tasks take disjoint ranges of `out`, which outlives the region.
        let part = unsafe { std::slice::from_raw_parts_mut(shared.get().add(range.start), range.len()) };
        pass(range, part);
    });
}

/// RMSNorm over rows of `weight.len()`: `x / sqrt(mean(x^2) + eps) * weight`;
/// rows split over the thread pool when there are many.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    let dim = weight.len();
    assert!(x.len() == out.len() && dim > 0 && x.len() % dim == 0, "rms_norm: shapes");
    let rows_per_task = (PARALLEL_CHUNK / dim).max(1);
    over_pool(out, rows_per_task * dim, &|range, out| rms_norm_serial(&x[range], weight, eps, out));
}

/// `hidden += delta`, then `out = rms_norm(hidden)`: a layer's residual add
/// and the next norm in one pass over the rows (the same arithmetic as the
/// two done apart).
pub fn add_rms_norm(hidden: &mut [f32], delta: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    let dim = weight.len();
    assert!(
        hidden.len() == delta.len() && hidden.len() == out.len() && dim > 0 && hidden.len().is_multiple_of(dim),
        "add_rms_norm: shapes"
    );
    let rows_per_task = (PARALLEL_CHUNK / dim).max(1);
    let shared = SharedOut::new(hidden);
    over_pool(out, rows_per_task * dim, &|range, out| {
        // SAFETY: tasks take disjoint ranges, of `hidden` as of `out`.
        let hidden = unsafe { std::slice::from_raw_parts_mut(shared.get().add(range.start), range.len()) };
        for (h, d) in hidden.iter_mut().zip(&delta[range]) {
            *h += d;
        }
        rms_norm_serial(hidden, weight, eps, out);
    });
}

fn rms_norm_serial(x: &[f32], weight: &[f32], eps: f64, out: &mut [f32]) {
    let dim = weight.len();
    for (row, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (mean + eps as f32).sqrt();
        for ((o, v), w) in out.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// Rotary embedding in place, rotate-half layout: `x` is `[tokens, heads,
/// head_dim]`, `cos`/`sin` are `[tokens, head_dim]` (each half repeated).
pub fn rotary_in_place(x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let tokens = cos.chunks_exact(head_dim).zip(sin.chunks_exact(head_dim));
    for (row, (cos, sin)) in x.chunks_exact_mut(heads * head_dim).zip(tokens) {
        for head in row.chunks_exact_mut(head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * cos[i] - b * sin[i];
                x2[i] = b * cos[half + i] + a * sin[half + i];
            }
        }
    }
}

/// `gate = silu(gate) * up`, in place; over the thread pool when large (one
/// `exp` per element: run serially it took 3.5% of the calling thread in a
/// 512-token prefill, `perf record`, while the other threads waited).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert!(gate.len() == up.len(), "silu_mul: shapes");
    over_pool(gate, PARALLEL_CHUNK, &|range, gate| silu_mul_serial(gate, &up[range]));
}

fn silu_mul_serial(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if kernels::active() == Isa::Avx2 {
        // SAFETY: Avx2 is only active on CPUs that have it.
        unsafe { silu_mul_avx2(gate, up) };
        return;
    }
    silu_mul_generic(gate, up);
}

/// The generic loop compiled with AVX2: its `floor` becomes `vroundps`
/// (without SSE4.1 it is a libm call per element) and the loop 8-wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_generic(gate, up);
}

/// `silu(g) = g * sigmoid(g)`, the sigmoid from `e = exp(-|g|)` (`1 / (1 +
/// e)` or `e / (1 + e)`): the exponential's argument is never positive, so
/// [`exp_nonpositive`] serves and the loop vectorizes, where libm's `expf`
/// ran once per element.
#[inline(always)]
fn silu_mul_generic(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        let e = exp_nonpositive(-g.abs());
        let sigmoid = if *g >= 0.0 { 1.0 } else { e } / (1.0 + e);
        *g = *g * sigmoid * u;
    }
}

/// `exp(x)` for `x <= 0` (attention scores minus their running maximum;
/// SiLU's `-|x|`), to within 2 ulp: Cephes' `expf` (range reduction by ln 2
/// in two parts, degree-5 polynomial). Written out so that loops over it
/// vectorize, where the libm call would run once per element.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn silu_mul_matches_the_formula() {
        let gate: Vec<f32> = (0..=400).map(|i| i as f32 / 10.0 - 20.0).chain([-100.0, 100.0, 0.0]).collect();
        let up: Vec<f32> = (0..gate.len()).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut got = gate.clone();
        silu_mul_serial(&mut got, &up);
        for ((g, x), u) in got.iter().zip(&gate).zip(&up) {
            let want = f64::from(*x) / (1.0 + (-f64::from(*x)).exp()) * f64::from(*u);
            assert!((f64::from(*g) - want).abs() <= 1e-6 * want.abs().max(1e-3), "silu({x}) * {u}: {g} vs {want}");
        }
    }

    #[test]
    fn rotary_rotates_each_pair_by_its_angle() {
        // One token, one head of 4: pairs (x0, x2) and (x1, x3).
        let (c0, s0, c1, s1) = (0.6f32, 0.8f32, 0.0f32, 1.0f32);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rotary_in_place(&mut x, 1, 4, &[c0, c1, c0, c1], &[s0, s1, s0, s1]);
        let want = [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + 1.0 * s0, 4.0 * c1 + 2.0 * s1];
        assert!(x.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{x:?}");
    }

    /// Large inputs split over the pool give what one pass gives.
    #[test]
    fn silu_mul_over_the_pool_matches_one_pass() {
        let len = 3 * PARALLEL_CHUNK + 123;
        let gate: Vec<f32> = (0..len).map(|i| (i % 200) as f32 / 20.0 - 5.0).collect();
        let up: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
        let (mut split, mut whole) = (gate.clone(), gate);
        silu_mul(&mut split, &up);
        silu_mul_serial(&mut whole, &up);
        assert_eq!(split, whole);
    }

    #[test]
    fn rms_norm_over_the_pool_matches_one_pass() {
        let dim = 96;
        let rows = 3 * PARALLEL_CHUNK / dim + 5;
        let x: Vec<f32> = (0..rows * dim).map(|i| (i % 37) as f32 / 9.0 - 2.0).collect();
        let weight: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 / 96.0).collect();
        let (mut split, mut whole) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        rms_norm(&x, &weight, 1e-6, &mut split);
        rms_norm_serial(&x, &weight, 1e-6, &mut whole);
        assert_eq!(split, whole);
    }

    #[test]
    fn add_rms_norm_is_the_add_then_the_norm() {
        let dim = 64;
        let rows = 2 * PARALLEL_CHUNK / dim + 3;
        let hidden: Vec<f32> = (0..rows * dim).map(|i| (i % 29) as f32 / 7.0 - 2.0).collect();
        let delta: Vec<f32> = (0..rows * dim).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
        let weight: Vec<f32> = (0..dim).map(|i| 0.25 + i as f32 / 64.0).collect();
        let mut fused = (hidden.clone(), vec![0.0; hidden.len()]);
        add_rms_norm(&mut fused.0, &delta, &weight, 1e-6, &mut fused.1);
        let sum: Vec<f32> = hidden.iter().zip(&delta).map(|(h, d)| h + d).collect();
        let mut apart = vec![0.0; sum.len()];
        rms_norm_serial(&sum, &weight, 1e-6, &mut apart);
        assert_eq!(fused.0, sum);
        assert_eq!(fused.1, apart);
    }

    #[test]
    fn rms_norm_scales_to_unit_rms_then_by_weight() {
        let mut out = [0.0; 4];
        rms_norm(&[3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0][..4], &[1.0, 2.0, 1.0, 1.0], 0.0, &mut out);
        let rms = (25.0f32 / 4.0).sqrt();
        assert!((out[0] - 3.0 / rms).abs() < 1e-6 && (out[1] - 8.0 / rms).abs() < 1e-6);
    }
}
