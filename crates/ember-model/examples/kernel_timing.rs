//! Times two kernels of the CPU fast path apart from the rest of the model,
//! in SmolLM2-135M's shapes, on the calling thread plus the pool:
//! - the prefill panel kernel alone, on one thread: 512 tokens times a
//!   panel of 108 dequantized rows of 576 (GFLOP/s);
//! - one layer's paged attention (9 heads, 3 KV heads, head_dim 64, blocks
//!   of 16): a 512-token prompt chunk, and a decode step at depth 512
//!   (microseconds per call).
//!
//! Each figure is the best of thirty runs: on a shared machine the
//! fastest run is the one least disturbed.
//!
//! `cargo run --release -p ember-model --example kernel_timing [panel|attention]`

use std::time::Instant;

use ember_model::cpu::attention::{Causal, Heads, SequenceView, paged_attention};
use ember_model::cpu::kv::{HostKv, KvDtype};

fn best_of(tries: usize, calls: usize, mut run: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..tries {
        let start = Instant::now();
        for _ in 0..calls {
            run();
        }
        best = best.min(start.elapsed().as_secs_f64() / calls as f64);
    }
    best
}

#[cfg(target_arch = "x86_64")]
fn panel_kernel() {
    use ember_model::cpu::kernels::panel::{PackedTokens, multiply_panel, pack_rows, pack_tile};
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        println!("panel kernel: this CPU lacks AVX2/FMA");
        return;
    }
    let (m, k, rows) = (512, 576, 108);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let rowmajor: Vec<f32> = (0..rows * k).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut panel = Vec::new();
    pack_rows(&rowmajor, rows, k, &mut panel);
    let mut buffer = Vec::new();
    let mut packed = PackedTokens::new(&mut buffer, m, k);
    let data = packed.data_mut().as_mut_ptr();
    for tile in 0..m.div_ceil(16) {
        // SAFETY: `data` is the packed buffer for `m` x `k`, one thread.
        unsafe { pack_tile(&x, m, k, tile, data) };
    }
    let mut out = vec![0.0f32; m * rows];
    // SAFETY: AVX2 and FMA checked above; `out` is `[m, rows]`.
    let seconds = best_of(30, 2, || unsafe { multiply_panel(&packed, &panel, rows, out.as_mut_ptr(), rows) });
    let flops = 2.0 * (m * k * rows) as f64;
    println!("panel kernel, {m} tokens x {rows} rows x {k}: {:.1} GFLOP/s on one thread", flops / seconds / 1e9);
}

fn attention() -> std::io::Result<()> {
    let shape = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
    let block_size = 16;
    let width = shape.kv_heads * shape.head_dim;
    for (past, new, calls) in [(0usize, 512usize, 2), (512, 1, 200)] {
        let total = past + new;
        let blocks = total.div_ceil(block_size);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut kv = HostKv::new(1, blocks, block_size, width, KvDtype::F32)?;
        for position in 0..total {
            let row: Vec<f32> = (0..width).map(|j| ((position * 31 + j) % 17) as f32 * 0.05).collect();
            kv.write(0, position, &row, &row);
        }
        let sequences = [SequenceView { rows: 0..new, past_len: past, block_table: &table }];
        let q: Vec<f32> = (0..new * shape.heads * shape.head_dim).map(|i| (i % 13) as f32 * 0.05).collect();
        let mut out = vec![0.0; q.len()];
        let seconds = best_of(30, calls, || paged_attention(&q, &kv.layer(0), &sequences, &Causal, shape, &mut out));
        println!("attention, {new} new tokens at depth {past}: {:.1} us per layer", seconds * 1e6);
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    // `kernel_timing panel` or `kernel_timing attention` times just one.
    let only = std::env::args().nth(1);
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    #[cfg(target_arch = "x86_64")]
    if wants("panel") {
        panel_kernel();
    }
    if wants("attention") {
        attention()?;
    }
    Ok(())
}
