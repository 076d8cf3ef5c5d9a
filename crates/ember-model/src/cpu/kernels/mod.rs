//! Dot products of quantized weight rows with f32 activations.
//!
//! Weights are dequantized in registers and multiplied into f32 activations
//! with FMA, never the other way round: quantizing activations to 8 bits (as
//! llama.cpp's Q8_1 path does) changes greedy answers of small models, while
//! f32 activations keep them. At batch 1 a projection is bound by reading its
//! weights, so the extra arithmetic is free.
//!
//! Written by hand because no maintained crate reads GGML blocks: candle's
//! `quantized` module and ggml's `ggml-cpu` (the sources these follow) both
//! pair them with quantized activations.
//!
//! Every kernel computes, for rows `rows` of `w` and tokens `0..m` of `x`
//! (`[m, cols]` row-major), `out[t * ldo + r] = dot(w[r], x[t])`.

mod avx2;
mod scalar;

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

/// Per-token sums of every 32 activations: formats with an offset
/// (`x = d * q + m`) add `m * sum(x)` once per block instead of per element.
pub fn chunk_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(32).map(|c| c.iter().sum()).collect()
}

/// `out[t * ldo + r] = dot(w[r], x[t])` for `r` in `rows`, `t` in `0..m`.
///
/// # Safety
/// `out` must be valid for writes at every such index, and no other thread
/// may write those elements during the call.
pub unsafe fn dot_rows(isa: Isa, w: &QuantMatrix, rows: Range<usize>, x: &[f32], sums: &[f32], m: usize, out: *mut f32, ldo: usize) {
    debug_assert!(rows.end <= w.rows() && x.len() >= m * w.cols() && sums.len() >= m * w.cols() / 32);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active`/`force` only choose Avx2 when the CPU has it; the
        // caller guarantees `out`.
        Isa::Avx2 => unsafe { avx2::dot_rows(w, rows, x, sums, m, out, ldo) },
        // SAFETY: as above for `out`.
        _ => unsafe { scalar::dot_rows(w, rows, x, m, out, ldo) },
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
