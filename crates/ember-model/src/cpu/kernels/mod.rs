//! Dot products of quantized weight rows with activations.
//!
//! Activations are never rounded to 8 bits: llama.cpp's Q8_1 activations
//! change the greedy answers of small models (SmolLM2-135M answers "What is
//! the capital of France?" with "L'Étoile..." instead of "The capital of
//! France is Paris."). The scalar path keeps them f32; the SIMD path rounds
//! them to i16 with one scale per 32 values (15 bits of the chunk's largest
//! magnitude), which keeps those answers and lets `vpmaddwd` do sixteen
//! multiply-adds per instruction.
//!
//! Written by hand because no maintained crate reads GGML blocks: candle's
//! `quantized` module and ggml's `ggml-cpu` (the sources these follow) both
//! pair them with quantized activations.
//!
//! Every kernel computes, for rows `rows` of `w` and tokens `0..m` of `x`
//! (`[m, cols]` row-major), `out[t * ldo + r] = dot(w[r], x[t])`.

mod avx2;
pub mod panel;
mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::hsum;

use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use super::quant::QuantMatrix;

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust: dequantize a block, then dot.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
}

const UNSET: u8 = 0;
static ISA: AtomicU8 = AtomicU8::new(UNSET);

fn encode(isa: Isa) -> u8 {
    match isa {
        Isa::Scalar => 1,
        Isa::Avx2 => 2,
    }
}

/// The best instruction set this CPU has.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        return Isa::Avx2;
    }
    Isa::Scalar
}

/// The instruction set in use: detected once, unless forced.
pub fn active() -> Isa {
    match ISA.load(Ordering::Relaxed) {
        1 => Isa::Scalar,
        2 => Isa::Avx2,
        _ => {
            let isa = detect();
            ISA.store(encode(isa), Ordering::Relaxed);
            isa
        }
    }
}

/// Forces an instruction set (the scalar one, to test what a CPU without
/// AVX2 runs). Asking for one the CPU lacks leaves the detected one.
pub fn force(isa: Isa) -> Isa {
    let chosen = if isa == Isa::Avx2 && detect() != Isa::Avx2 { detect() } else { isa };
    ISA.store(encode(chosen), Ordering::Relaxed);
    chosen
}

/// f16 values to f32: with F16C in place of `half`'s slice conversion,
/// which went through a call per eight values and made an f16 KV cache
/// decode slower than an f32 one.
pub(crate) fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if active() == Isa::Avx2 {
        // SAFETY: Avx2 is only active on CPUs with AVX2, FMA and F16C;
        // `f16` is a transparent `u16`.
        unsafe { avx2::f16_to_f32(std::slice::from_raw_parts(src.as_ptr().cast(), src.len()), dst) };
        return;
    }
    use half::slice::HalfFloatSliceExt;
    src.convert_to_f32_slice(dst);
}

/// The tokens of one matmul as the kernels read them, prepared once and
/// shared by every task and every projection of the input.
pub struct Activations<'a> {
    isa: Isa,
    x: &'a [f32],
    m: usize,
    /// SIMD only: `x` as i16, and per 32 values the f32 value of one step
    /// and the sum of the values (formats with an offset, `w = d * q + m`,
    /// add `m * sum(x)` once per block instead of per element).
    q: Vec<i16>,
    steps_sums: Vec<f32>,
}

impl<'a> Activations<'a> {
    /// `x` is `[m, cols]` row-major with `cols % 32 == 0` (every block
    /// format's row length is).
    pub fn new(isa: Isa, x: &'a [f32], m: usize) -> Self {
        assert!(x.len() % 32 == 0 && (m == 0 || x.len() % m == 0), "Activations: shape");
        let (mut q, mut steps_sums) = (Vec::new(), Vec::new());
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 {
            q = vec![0; x.len()];
            steps_sums = vec![0.0; x.len() / 16];
            // SAFETY: Avx2 is only chosen when the CPU has it; shapes as asked.
            unsafe { avx2::quantize_activations(x, &mut q, &mut steps_sums) };
        }
        Self { isa, x, m, q, steps_sums }
    }
}

/// `out[t * ldo + r] = dot(w[r], x[t])` for `r` in `rows`, `t` in `0..m`.
///
/// # Safety
/// `out` must be valid for writes at every such index, and no other thread
/// may write those elements during the call.
pub unsafe fn dot_rows(w: &QuantMatrix, rows: Range<usize>, a: &Activations<'_>, out: *mut f32, ldo: usize) {
    assert!(rows.end <= w.rows() && a.x.len() == a.m * w.cols(), "dot_rows: shape");
    match a.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active`/`force` only choose Avx2 when the CPU has it, and
        // `Activations::new` then filled `q` and `steps_sums`; the caller
        // guarantees `out`.
        Isa::Avx2 => unsafe { avx2::dot_rows(w, rows, &a.q, &a.steps_sums, a.m, out, ldo) },
        // SAFETY: as above for `out`.
        _ => unsafe { scalar::dot_rows(w, rows, a.x, a.m, out, ldo) },
    }
}

/// Rows `rows` of `w` as f32 into `out` (`[rows.len(), cols]`), replacing
/// its contents.
pub fn dequantize_rows(isa: Isa, w: &QuantMatrix, rows: Range<usize>, out: &mut Vec<f32>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // Every element is overwritten: only a longer panel than the
            // last one needs its tail filled (a reused buffer is not zeroed).
            let len = rows.len() * w.cols();
            out.truncate(len);
            out.resize(len, 0.0);
            // SAFETY: `active`/`force` only choose Avx2 when the CPU has it.
            unsafe { avx2::dequantize_rows(w, rows, out) }
        }
        _ => {
            out.clear();
            rows.for_each(|r| w.dequantize_row_into(r, out));
        }
    }
}

#[cfg(test)]
mod tests;
