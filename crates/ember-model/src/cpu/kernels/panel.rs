//! Prefill products on AVX2: many tokens times a panel of dequantized
//! weight rows.
//!
//! `gemm` packed each dequantized panel a second time, and the tokens again
//! for every panel. Here the tokens are packed once per matmul, transposed
//! in tiles of sixteen (`[k][16]`), and the panel's rows six at a time
//! (`[k][6]`, [`pack_rows`]): each step of the microkernel broadcasts one
//! weight of six rows and multiplies it into the two vectors of sixteen
//! tokens, 12 FMAs for 8 loads with all twelve accumulators in registers,
//! the shape of BLIS's 6x16 Haswell sgemm kernel
//! (`bli_sgemm_haswell_asm_6x16`).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Tokens per tile: two AVX vectors.
pub const TILE_TOKENS: usize = 16;

/// Weight rows per microkernel call: 6 x 2 accumulators, two token vectors
/// and one broadcast fill 15 of the 16 ymm registers.
pub const TILE_ROWS: usize = 6;

/// Columns per pass: a tile's slice of tokens (16 KiB) then stays in the
/// 32 KiB L1 while every row group of the panel passes over it.
const DEPTH: usize = 256;

/// Tokens `[m, k]` transposed in tiles: tile `t` is `[k, 16]` holding tokens
/// `16t..16t+16`, the missing tail of the last one zero. Borrows its
/// storage, so a caller can keep one buffer across matmuls.
pub struct PackedTokens<'a> {
    data: &'a mut [f32],
    m: usize,
    k: usize,
}

impl<'a> PackedTokens<'a> {
    /// Space for `m` tokens of `k` values in `buffer`, grown as needed.
    pub fn new(buffer: &'a mut Vec<f32>, m: usize, k: usize) -> Self {
        let len = m.div_ceil(TILE_TOKENS) * TILE_TOKENS * k;
        if buffer.len() < len {
            buffer.resize(len, 0.0);
        }
        Self {
            data: &mut buffer[..len],
            m,
            k,
        }
    }

    pub fn tiles(&self) -> usize {
        self.m.div_ceil(TILE_TOKENS)
    }

    /// The whole buffer, for [`pack_tile`] on several threads.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data
    }
}

/// Transposes tokens `16 tile..` of `x` (`[m, k]`) into their tile of
/// `packed`, the data of a [`PackedTokens`] of the same shape, zeroing the
/// lanes past `m`.
///
/// # Safety
/// `packed` comes from `data_mut` of a live `PackedTokens` for `m`, `k`,
/// and no other thread writes this tile.
pub unsafe fn pack_tile(x: &[f32], m: usize, k: usize, tile: usize, packed: *mut f32) {
    assert!(
        x.len() == m * k && tile < m.div_ceil(TILE_TOKENS),
        "pack_tile: shape"
    );
    let first = tile * TILE_TOKENS;
    // SAFETY: the tile starts inside the buffer (the caller's contract).
    let dst = unsafe { packed.add(first * k) };
    // Column by column, so the writes run along the tile; the sixteen
    // tokens are sixteen read streams.
    let present = TILE_TOKENS.min(m - first);
    for i in 0..k {
        for lane in 0..TILE_TOKENS {
            let v = if lane < present { x[(first + lane) * k + i] } else { 0.0 };
            // SAFETY: `i * 16 + lane` is inside the tile (the caller's contract).
            unsafe { *dst.add(i * TILE_TOKENS + lane) = v };
        }
    }
}

/// Packs `rows` dequantized weight rows (`[rows, k]`, row-major) for
/// [`multiply_panel`]: groups of [`TILE_ROWS`] rows, each stored `[k][6]`,
/// so that the microkernel's six broadcasts per column read one contiguous
/// stream instead of six rows a stride apart; the last group's missing rows
/// are zero.
pub fn pack_rows(rowmajor: &[f32], rows: usize, k: usize, packed: &mut Vec<f32>) {
    assert!(rowmajor.len() >= rows * k, "pack_rows: shape");
    let groups = rows.div_ceil(TILE_ROWS);
    // Every element is written below: only growth needs a fill.
    packed.resize(groups * TILE_ROWS * k, 0.0);
    for (g, group) in packed[..groups * TILE_ROWS * k].chunks_exact_mut(TILE_ROWS * k).enumerate() {
        let present = TILE_ROWS.min(rows - g * TILE_ROWS);
        let source = &rowmajor[g * TILE_ROWS * k..];
        for (i, column) in group.chunks_exact_mut(TILE_ROWS).enumerate() {
            for (r, v) in column.iter_mut().enumerate() {
                *v = if r < present { source[r * k + i] } else { 0.0 };
            }
        }
    }
}

/// `out[t * ldo + r] = dot(tokens[t], row r)` for every token and
/// `r < rows`, the rows packed by [`pack_rows`].
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out` is valid for writes at those
/// indices and no other thread writes them.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn multiply_panel(
    tokens: &PackedTokens<'_>,
    panel: &[f32],
    rows: usize,
    out: *mut f32,
    ldo: usize,
) {
    let k = tokens.k;
    let groups = rows.div_ceil(TILE_ROWS);
    assert!(
        panel.len() >= groups * TILE_ROWS * k && rows <= ldo,
        "multiply_panel: shape"
    );
    // The tile's sums, `[groups * 6, 16]`, carried from one pass of DEPTH
    // columns to the next (the first pass overwrites them).
    let mut sums = SUMS.take();
    sums.resize(groups * TILE_ROWS * TILE_TOKENS, 0.0);
    for tile in 0..tokens.tiles() {
        let first = tile * TILE_TOKENS;
        for depth in (0..k).step_by(DEPTH) {
            let pass = Pass {
                x: tokens.data[first * k + depth * TILE_TOKENS..].as_ptr(),
                len: DEPTH.min(k - depth),
                fresh: depth == 0,
            };
            for g in 0..groups {
                // SAFETY: the group's pass and its sums lie inside `panel`
                // and `sums`.
                unsafe {
                    let w = panel.as_ptr().add(g * TILE_ROWS * k + depth * TILE_ROWS);
                    pass.group(w, sums.as_mut_ptr().add(g * TILE_ROWS * TILE_TOKENS));
                }
            }
        }
        // Token by token, so the stores run along rows of `out` instead of
        // touching a new cache line each.
        for t in 0..TILE_TOKENS.min(tokens.m - first) {
            for r in 0..rows {
                // SAFETY: inside the caller's `out` and `sums`.
                unsafe { *out.add((first + t) * ldo + r) = sums[r * TILE_TOKENS + t] };
            }
        }
    }
    SUMS.set(sums);
}

thread_local! {
    /// Each thread's sums buffer, kept across panels.
    static SUMS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One pass of `len` columns of a token tile.
struct Pass {
    /// The tile's tokens at the pass's first column (`[len, 16]`).
    x: *const f32,
    len: usize,
    /// The first pass starts from zero instead of the carried sums.
    fresh: bool,
}

impl Pass {
    /// One packed group of six rows (`[len][6]` from `w`) into its sums at
    /// `s` (`[6, 16]`).
    #[inline(always)]
    unsafe fn group(&self, w: *const f32, s: *mut f32) {
        // SAFETY: the caller keeps every offset in bounds; AVX2/FMA are
        // enabled on the function this inlines into.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; TILE_ROWS];
            if !self.fresh {
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm256_loadu_ps(s.add(r * TILE_TOKENS));
                    acc[1] = _mm256_loadu_ps(s.add(r * TILE_TOKENS + 8));
                }
            }
            for i in 0..self.len {
                let x0 = _mm256_loadu_ps(self.x.add(i * TILE_TOKENS));
                let x1 = _mm256_loadu_ps(self.x.add(i * TILE_TOKENS + 8));
                let wi = w.add(i * TILE_ROWS);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*wi.add(r));
                    acc[0] = _mm256_fmadd_ps(b, x0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(b, x1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(s.add(r * TILE_TOKENS), acc[0]);
                _mm256_storeu_ps(s.add(r * TILE_TOKENS + 8), acc[1]);
            }
        }
    }
}
