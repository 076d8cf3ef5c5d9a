//! The portable path: each block is dequantized with the same code the GGUF
//! loader uses, then dotted with every token. Slower than the SIMD kernels
//! but exactly the reference they are tested against.

use std::ops::Range;

use crate::cpu::quant::QuantMatrix;
use crate::gguf::dequant::dequantize;

/// See [`super::dot_rows`].
///
/// # Safety
/// As [`super::dot_rows`].
pub unsafe fn dot_rows(w: &QuantMatrix, rows: Range<usize>, x: &[f32], m: usize, out: *mut f32, ldo: usize) {
    let (block, block_bytes) = w.quant_type().block();
    let cols = w.cols();
    let mut values = Vec::with_capacity(block);
    let mut acc = vec![0.0f32; m];
    for r in rows {
        acc.fill(0.0);
        for (b, bytes) in w.row(r).chunks_exact(block_bytes).enumerate() {
            values.clear();
            dequantize(w.quant_type().ggml(), bytes, &mut values);
            for (t, sum) in acc.iter_mut().enumerate() {
                let xs = &x[t * cols + b * block..t * cols + (b + 1) * block];
                *sum += values.iter().zip(xs).map(|(v, x)| v * x).sum::<f32>();
            }
        }
        for (t, sum) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees `out` for these indices.
            unsafe { *out.add(t * ldo + r) = *sum };
        }
    }
}
