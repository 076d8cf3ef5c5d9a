//! `y = x W^T` for quantized `W`, spread over the thread pool.
//!
//! Few tokens (decode): each task takes a run of output rows and streams
//! their blocks once through the SIMD kernels, up to four tokens per pass
//! (two rows per pass for a single token).
//! Many tokens (prefill): each task dequantizes a panel of rows small enough
//! to stay in cache and multiplies every token into it, so the unpacking is
//! paid once per panel instead of once per token: with AVX2 through the 6x16
//! FMA kernel of `kernels::panel` (tokens packed once per matmul), elsewhere
//! through `gemm`'s packed f32 kernels.
//!
//! Several projections of one input (q/k/v, gate/up) share one parallel
//! region, so their rows are balanced over the threads together.

use std::cell::RefCell;
use std::ops::Range;

use super::kernels::{self, Isa};
use super::pool;
use super::SharedOut;
use super::quant::QuantMatrix;

/// From this many tokens on, dequantized panels beat the row kernels (which
/// unpack every block once per four tokens): below it, a batch of decode
/// steps; from it, prompt chunks.
pub const PANEL_MIN_TOKENS: usize = 48;

/// Bytes of f32 a dequantized panel may take: half of a 512 KiB L2.
const PANEL_BYTES: usize = 256 * 1024;

/// One weight applied to the shared input, and where its `[m, rows]` output goes.
pub struct Projection<'a> {
    pub weight: &'a QuantMatrix,
    pub out: &'a mut [f32],
}

/// A run of one projection's output rows.
struct Task {
    projection: usize,
    rows: Range<usize>,
}

/// Computes `out = x W^T` for every projection; `x` is `[m, cols]` row-major
/// and every weight has `cols` columns.
///
/// # Panics
/// If shapes disagree (a bug in the caller, not something input can cause).
pub fn matmul(x: &[f32], m: usize, projections: &mut [Projection<'_>]) {
    let Some(first) = projections.first() else { return };
    let cols = first.weight.cols();
    assert!(x.len() == m * cols, "matmul: x has {} values, want {m} x {cols}", x.len());
    for p in projections.iter() {
        assert!(p.weight.cols() == cols && p.out.len() == m * p.weight.rows(), "matmul: projection shape");
    }
    if m == 0 {
        return;
    }
    let pool = pool::global();
    let outs: Vec<(SharedOut, &QuantMatrix)> =
        projections.iter_mut().map(|p| (SharedOut::new(p.out), &*p.weight)).collect();
    let isa = kernels::active();

    if m >= PANEL_MIN_TOKENS {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 {
            panel_products(x, m, cols, &outs);
            return;
        }
        let panel = (PANEL_BYTES / (cols * 4)).max(16) / 16 * 16;
        let tasks = split(&outs, |_| panel);
        pool.run(tasks.len(), &|i| {
            let Task { projection, rows } = &tasks[i];
            let (out, w) = outs[*projection];
            // SAFETY: tasks cover disjoint rows of each output.
            unsafe { panel_gemm(isa, w, rows.clone(), x, m, out.get()) };
        });
        return;
    }

    let activations = kernels::Activations::new(isa, x, m);
    let total_rows: usize = outs.iter().map(|(_, w)| w.rows()).sum();
    // Enough tasks to balance uneven threads, few enough to amortize claiming.
    let per_task = total_rows.div_ceil(pool.threads() * 8).max(16);
    let tasks = split(&outs, |_| per_task);
    pool.run(tasks.len(), &|i| {
        let Task { projection, rows } = &tasks[i];
        let (out, w) = outs[*projection];
        let n = w.rows();
        // SAFETY: `out` is `[m, n]`; tasks cover disjoint rows.
        unsafe { kernels::dot_rows(w, rows.clone(), &activations, out.get(), n) };
    });
}

/// The prefill path on AVX2: the tokens are packed once (by tiles, over the
/// pool), then each task dequantizes a panel of rows and multiplies every
/// token tile into it.
#[cfg(target_arch = "x86_64")]
fn panel_products(x: &[f32], m: usize, cols: usize, outs: &[(SharedOut, &QuantMatrix)]) {
    use kernels::panel::{self, PackedTokens};
    let pool = pool::global();
    PACKED.with(|packed| {
        let mut packed = packed.borrow_mut();
        let mut packed = PackedTokens::new(&mut packed, m, cols);
        let data = SharedOut::new(packed.data_mut());
        // SAFETY: each task writes its own tile of `packed`.
        pool.run(packed.tiles(), &|tile| unsafe { panel::pack_tile(x, m, cols, tile, data.get()) });
        let packed = &packed;
        // Panels that fit the cache, and small enough that every thread
        // gets several: with q/k/v's 960 rows in panels of 108, the last
        // of ten tasks left one of two threads idle for a tenth of the call.
        let fits = (PANEL_BYTES / (cols * 4)).max(panel::TILE_ROWS);
        let total_rows: usize = outs.iter().map(|(_, w)| w.rows()).sum();
        let balanced = total_rows.div_ceil(pool.threads() * 8);
        let rows = fits.min(balanced).next_multiple_of(panel::TILE_ROWS);
        let tasks = split(outs, |_| rows);
        pool.run(tasks.len(), &|i| {
            let Task { projection, rows } = &tasks[i];
            let (out, w) = outs[*projection];
            PANEL.with(|rowmajor| {
                PACKED_PANEL.with(|panel| {
                    let (rowmajor, panel) = (&mut *rowmajor.borrow_mut(), &mut *panel.borrow_mut());
                    kernels::dequantize_rows(Isa::Avx2, w, rows.clone(), rowmajor);
                    panel::pack_rows(rowmajor, rows.len(), cols, panel);
                    // SAFETY: Avx2 is only active on CPUs that have it; `out`
                    // is `[m, w.rows()]` and tasks cover disjoint columns.
                    unsafe { panel::multiply_panel(packed, panel, rows.len(), out.get().add(rows.start), w.rows()) };
                })
            });
        });
    });
}

/// Splits every projection's rows into runs of at most `rows_per_task`.
fn split(outs: &[(SharedOut, &QuantMatrix)], rows_per_task: impl Fn(&QuantMatrix) -> usize) -> Vec<Task> {
    let mut tasks = Vec::new();
    for (projection, (_, w)) in outs.iter().enumerate() {
        let step = rows_per_task(w).max(1);
        let mut start = 0;
        while start < w.rows() {
            let end = (start + step).min(w.rows());
            tasks.push(Task {
                projection,
                rows: start..end,
            });
            start = end;
        }
    }
    tasks
}

thread_local! {
    /// Each thread's dequantized panel (row-major), reused across calls.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's panel packed for the AVX2 microkernel.
    static PACKED_PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The calling thread's packed tokens, reused across calls.
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Dequantizes rows `rows` of `w` and multiplies them into `out[:, rows]`.
///
/// # Safety
/// `out` is `[m, w.rows()]` and no other thread writes these columns.
unsafe fn panel_gemm(isa: Isa, w: &QuantMatrix, rows: Range<usize>, x: &[f32], m: usize, out: *mut f32) {
    let (k, n) = (w.cols(), w.rows());
    PANEL.with(|panel| {
        let mut panel = panel.borrow_mut();
        kernels::dequantize_rows(isa, w, rows.clone(), &mut panel);
        // out[t, rows.start + j] = sum_i x[t, i] * panel[j, i]
        // SAFETY: the pointers and strides describe `x` ([m, k]), `panel`
        // ([rows, k], read transposed) and the caller's columns of `out`.
        unsafe {
            gemm::gemm(
                m,
                rows.len(),
                k,
                out.add(rows.start),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                panel.as_ptr(),
                k as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// Whether the SIMD kernels are in use (for logs and benchmarks).
pub fn kernel_name() -> &'static str {
    match kernels::active() {
        Isa::Avx2 => "avx2",
        Isa::Scalar => "scalar",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::quant::{QuantType, quantize};
    use crate::cpu::quant::WeightBytes;

    fn matrix(rows: usize, cols: usize, seed: u32) -> (QuantMatrix, Vec<f32>) {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut bytes = Vec::new();
        quantize(QuantType::Q8_0, &values, &mut bytes).expect("quantize");
        let w = QuantMatrix::new(QuantType::Q8_0, rows, cols, WeightBytes::Owned(bytes.into())).expect("shape");
        let dense = w.dequantize();
        (w, dense)
    }

    /// Both paths (row kernels below the panel threshold, panels from it)
    /// and several projections in one region agree with a plain loop.
    #[test]
    fn matmul_matches_a_plain_loop_on_both_paths() {
        // 320 columns take the panel kernel's two passes (256 + 64).
        for cols in [96, 320] {
            matmul_matches_a_plain_loop(cols);
        }
    }

    fn matmul_matches_a_plain_loop(cols: usize) {
        let (wa, da) = matrix(70, cols, 1);
        let (wb, db) = matrix(33, cols, 2);
        for m in [1, 3, PANEL_MIN_TOKENS - 1, PANEL_MIN_TOKENS, PANEL_MIN_TOKENS + 5] {
            let x: Vec<f32> = (0..m * cols).map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0).collect();
            let mut ya = vec![0.0; m * 70];
            let mut yb = vec![0.0; m * 33];
            matmul(
                &x,
                m,
                &mut [
                    Projection { weight: &wa, out: &mut ya },
                    Projection { weight: &wb, out: &mut yb },
                ],
            );
            for (w, dense, y) in [(&wa, &da, &ya), (&wb, &db, &yb)] {
                for t in 0..m {
                    for r in 0..w.rows() {
                        let want: f32 = (0..cols).map(|i| dense[r * cols + i] * x[t * cols + i]).sum();
                        let got = y[t * w.rows() + r];
                        // The row kernels round activations (|x| <= 1 here)
                        // to i16: half a step is 1 / 65534.
                        let rounding: f32 = (0..cols).map(|i| dense[r * cols + i].abs() / 65534.0).sum();
                        let tolerance = 1e-5 * cols as f32 / 96.0 + rounding;
                        assert!((got - want).abs() < tolerance, "cols {cols} m {m} row {r} token {t}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
