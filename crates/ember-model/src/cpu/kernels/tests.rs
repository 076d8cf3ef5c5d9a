//! Every kernel against dequantize-then-dot, on random blocks of every
//! format: random bytes exercise every bit of the layouts, and the scales
//! are set to ordinary, tiny, huge and negative values.

use super::*;
use crate::cpu::quant::{QuantType, WeightBytes};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Byte offsets of a block's f16 scales (which must be finite).
fn scale_offsets(ty: QuantType) -> &'static [usize] {
    match ty {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[208],
    }
}

fn random_matrix(ty: QuantType, rows: usize, cols: usize, scale: f32, rng: &mut Rng) -> QuantMatrix {
    let (block, block_bytes) = ty.block();
    let blocks = rows * cols / block;
    let mut bytes: Vec<u8> = (0..blocks * block_bytes).map(|_| rng.byte()).collect();
    for b in 0..blocks {
        for &off in scale_offsets(ty) {
            let s = scale * (0.5 + rng.f32().abs());
            let s = if rng.byte() & 1 == 0 { s } else { -s };
            bytes[b * block_bytes + off..b * block_bytes + off + 2].copy_from_slice(&half::f16::from_f32(s).to_le_bytes());
        }
    }
    QuantMatrix::new(ty, rows, cols, WeightBytes::Owned(bytes.into())).expect("shape")
}

fn reference(w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
    let dense = w.dequantize();
    let (n, k) = (w.rows(), w.cols());
    let mut out = vec![0.0f32; m * n];
    for t in 0..m {
        for r in 0..n {
            out[t * n + r] = (0..k).map(|i| f64::from(dense[r * k + i]) * f64::from(x[t * k + i])).sum::<f64>() as f32;
        }
    }
    out
}

fn run(isa: Isa, w: &QuantMatrix, x: &[f32], m: usize) -> Vec<f32> {
    let n = w.rows();
    let mut out = vec![f32::NAN; m * n];
    let a = Activations::new(isa, x, m);
    // SAFETY: `out` holds m * n elements and is written by this thread only.
    unsafe { dot_rows(w, 0..n, &a, out.as_mut_ptr(), n) };
    out
}

fn check(isa: Isa, ty: QuantType, scale: f32, m: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (ty as u64) << 8 ^ m as u64);
    let (rows, cols) = (5, 512);
    let w = random_matrix(ty, rows, cols, scale, &mut rng);
    let x: Vec<f32> = (0..m * cols).map(|_| rng.f32()).collect();
    let want = reference(&w, &x, m);
    let got = run(isa, &w, &x, m);
    // Summation order differs (blocks, lanes); the error scales with the
    // magnitude of the terms, bounded by sum |w| |x|. The SIMD path also
    // rounds each activation to i16, off by at most half a step (1/65534
    // of its chunk's largest magnitude).
    let dense = w.dequantize();
    let rounding = |i: usize| match isa {
        Isa::Scalar => 0.0,
        _ => x[i / 32 * 32..i / 32 * 32 + 32].iter().fold(0.0f32, |a, v| a.max(v.abs())) / 65534.0,
    };
    for t in 0..m {
        for r in 0..rows {
            let bound: f32 = (0..cols).map(|i| (dense[r * cols + i] * x[t * cols + i]).abs()).sum();
            let rounded: f32 = (0..cols).map(|i| dense[r * cols + i].abs() * rounding(t * cols + i)).sum();
            let (g, e) = (got[t * rows + r], want[t * rows + r]);
            assert!(
                (g - e).abs() <= 2e-5 * bound.max(f32::MIN_POSITIVE) + 1.01 * rounded,
                "{isa:?} {ty:?} scale {scale} m {m}: row {r} token {t}: got {g}, want {e} (bound {bound})"
            );
        }
    }
}

#[test]
fn scalar_kernels_match_dequantize_then_dot() {
    for ty in QuantType::ALL {
        for scale in [0.01, 1e-6, 300.0] {
            check(Isa::Scalar, ty, scale, 1);
            check(Isa::Scalar, ty, scale, 3);
        }
    }
}

#[test]
fn simd_kernels_match_dequantize_then_dot() {
    let isa = detect();
    if isa == Isa::Scalar {
        eprintln!("no SIMD kernels on this CPU; the scalar test covers it");
        return;
    }
    for ty in QuantType::ALL {
        for scale in [0.01, 1e-6, 300.0, 4e4] {
            for m in [1, 2, 3, 4, 5, 9] {
                check(isa, ty, scale, m);
            }
        }
    }
}

#[test]
fn kernels_write_only_their_rows_and_stride() {
    let mut rng = Rng(42);
    let w = random_matrix(QuantType::Q4_1, 8, 64, 0.02, &mut rng);
    let x: Vec<f32> = (0..2 * 64).map(|_| rng.f32()).collect();
    // One token takes the SIMD path's rows-in-pairs pass (three rows: a
    // pair and one left over).
    for (isa, m) in [(Isa::Scalar, 2), (detect(), 2), (detect(), 1)] {
        let ldo = 11;
        let mut out = vec![7.0f32; 2 * ldo];
        let a = Activations::new(isa, &x[..m * 64], m);
        // SAFETY: indices t * 11 + r for r in 2..5, t in 0..2 are inside `out`.
        unsafe { dot_rows(&w, 2..5, &a, out.as_mut_ptr(), ldo) };
        for (i, v) in out.iter().enumerate() {
            let written = i / ldo < m && (2..5).contains(&(i % ldo));
            assert_eq!(*v == 7.0, !written, "{isa:?} m {m}: index {i}");
        }
    }
}

#[test]
fn simd_dequantization_matches_the_reference() {
    let isa = detect();
    for ty in QuantType::ALL {
        let mut rng = Rng(7 + ty as u64);
        let w = random_matrix(ty, 4, 512, 0.02, &mut rng);
        let want = w.dequantize();
        let mut got = Vec::new();
        dequantize_rows(isa, &w, 1..3, &mut got);
        let want = &want[512..3 * 512];
        for (i, (g, e)) in got.iter().zip(want).enumerate() {
            assert!((g - e).abs() <= 1e-6 * e.abs().max(1e-3), "{isa:?} {ty:?}: element {i}: {g} vs {e}");
        }
        assert_eq!(got.len(), want.len());
    }
}

#[test]
fn activations_round_to_half_a_step_of_their_chunk() {
    let isa = detect();
    if isa == Isa::Scalar {
        return;
    }
    let mut rng = Rng(99);
    // Ordinary, huge, tiny, all-zero, below-reciprocal and mixed chunks.
    let mut x: Vec<f32> = (0..32).map(|_| rng.f32()).collect();
    x.extend((0..32).map(|_| rng.f32() * 3e38));
    x.extend((0..32).map(|_| rng.f32() * 1e-30));
    x.extend([0.0; 32]);
    x.extend([1e-40; 32]);
    x.extend((0..32).map(|i| if i == 5 { 1e4 } else { rng.f32() }));
    let a = Activations::new(isa, &x, 1);
    for (c, chunk) in x.chunks_exact(32).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        for (i, v) in chunk.iter().enumerate() {
            let back = f64::from(a.q[c * 32 + i]) * f64::from(a.steps_sums[2 * c]);
            let err = (back - f64::from(*v)).abs();
            assert!(err <= f64::from(amax) / 65534.0 * 1.0001 + 1e-34, "chunk {c} value {i}: {v} came back as {back}");
        }
    }
    assert_eq!(a.steps_sums[2 * 3], 0.0);
    assert_eq!(a.steps_sums[2 * 4], 0.0);
    // Each step is paired with its chunk's sum (the huge chunk's may overflow).
    for (c, chunk) in x.chunks_exact(32).enumerate().filter(|(c, _)| *c != 1) {
        let want: f64 = chunk.iter().map(|v| f64::from(*v)).sum();
        let got = f64::from(a.steps_sums[2 * c + 1]);
        assert!((got - want).abs() <= 1e-5 * want.abs().max(1e-30), "chunk {c}: sum {got} vs {want}");
    }
}

/// The F16C conversion gives `half`'s values, bit for bit, on every length
/// (whole vectors of eight and a tail), including infinities and NaN.
#[test]
fn f16_rows_convert_exactly() {
    use half::f16;
    let bits: Vec<u16> = (0..=u16::MAX).step_by(7).chain([0x7C00, 0xFC00, 0x7E00, 0x0001, 0x8000]).collect();
    for len in [0, 3, 8, 13, 64, bits.len()] {
        let src: Vec<f16> = bits[..len].iter().map(|b| f16::from_bits(*b)).collect();
        let mut got = vec![0.0f32; len];
        super::f16_to_f32(&src, &mut got);
        for (g, s) in got.iter().zip(&src) {
            let want = s.to_f32();
            assert!(g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()), "{:#06x}: {g} vs {want}", s.to_bits());
        }
    }
}
