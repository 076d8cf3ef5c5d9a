//! Times kernels of the CPU fast path apart from the rest of the model, in
//! SmolLM2-135M's shapes, on the calling thread plus the pool:
//! - decode's matrix-vector products: one token through 30 layers' worth of
//!   Q4_1 rows (4608 of 576 and 576 of 1536 per layer, 66 MB: more than
//!   the caches hold), in GB/s of weights read; and the same through the
//!   model's four parallel regions per layer (q/k/v, o, gate/up, down);
//! - the prefill panel kernel alone, on one thread: 512 tokens times a
//!   panel of 108 dequantized rows of 576 (GFLOP/s);
//! - one layer's paged attention (9 heads, 3 KV heads, head_dim 64, blocks
//!   of 16): a 512-token prompt chunk, and decode steps at depths 64 and 512
//!   (microseconds per call).
//!
//! Each figure is the best of thirty runs: on a shared machine the
//! fastest run is the one least disturbed.
//!
//! `cargo run --release -p ember-model --example kernel_timing [matvec|layers|panel|attention]`

use std::time::Instant;

use ember_model::cpu::attention::{Causal, Heads, SequenceView, paged_attention};
use ember_model::cpu::kv::{HostKv, KvDtype};
use ember_model::cpu::quant::{QuantMatrix, QuantType, WeightBytes};

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

/// Q4_1 blocks (f16 d = 0.01, f16 m = -0.08, 16 bytes of nibbles).
fn q4_1_matrix(rows: usize, cols: usize) -> QuantMatrix {
    let mut bytes = Vec::with_capacity(rows * cols / 32 * 20);
    for b in 0..rows * cols / 32 {
        bytes.extend_from_slice(&[0x1F, 0x21, 0x1F, 0xAD]);
        bytes.extend((0..16).map(|i| ((b * 31 + i * 7) % 256) as u8));
    }
    QuantMatrix::new(QuantType::Q4_1, rows, cols, WeightBytes::Owned(bytes.into())).expect("shape")
}

fn matvec() {
    use ember_model::cpu::matmul::{Projection, matmul};
    let layers: Vec<(QuantMatrix, QuantMatrix)> = (0..30).map(|_| (q4_1_matrix(4608, 576), q4_1_matrix(576, 1536))).collect();
    let bytes: usize = layers.iter().map(|(a, b)| a.data().len() + b.data().len()).sum();
    let (x576, x1536) = (vec![0.5f32; 576], vec![0.25f32; 1536]);
    let (mut y4608, mut y576) = (vec![0.0f32; 4608], vec![0.0f32; 576]);
    let seconds = best_of(30, 1, || {
        for (up, down) in &layers {
            matmul(&x576, 1, &mut [Projection { weight: up, out: &mut y4608 }]);
            matmul(&x1536, 1, &mut [Projection { weight: down, out: &mut y576 }]);
        }
    });
    println!("matvec, 1 token x {} MB of Q4_1: {:.2} GB/s", bytes / 1_000_000, bytes as f64 / seconds / 1e9);
}

/// The same token through the model's own regions: per layer q/k/v in
/// one, o, gate/up in one, down (SmolLM2's shapes, 66 MB of Q4_1).
fn layer_regions() {
    use ember_model::cpu::matmul::{Projection, matmul};
    let layers: Vec<[QuantMatrix; 7]> = (0..30)
        .map(|_| {
            let h = || q4_1_matrix(576, 576);
            [h(), q4_1_matrix(192, 576), q4_1_matrix(192, 576), h(), q4_1_matrix(1536, 576), q4_1_matrix(1536, 576), q4_1_matrix(576, 1536)]
        })
        .collect();
    let bytes: usize = layers.iter().flat_map(|l| l.iter().map(|m| m.data().len())).sum();
    let (x576, x1536) = (vec![0.5f32; 576], vec![0.25f32; 1536]);
    let (mut q, mut k, mut v, mut o) = (vec![0.0f32; 576], vec![0.0f32; 192], vec![0.0f32; 192], vec![0.0f32; 576]);
    let (mut g, mut u, mut d) = (vec![0.0f32; 1536], vec![0.0f32; 1536], vec![0.0f32; 576]);
    let seconds = best_of(30, 1, || {
        for [wq, wk, wv, wo, wg, wu, wd] in &layers {
            let qkv = [(wq, &mut q), (wk, &mut k), (wv, &mut v)];
            matmul(&x576, 1, &mut qkv.map(|(weight, out)| Projection { weight, out: out.as_mut_slice() }));
            matmul(&x576, 1, &mut [Projection { weight: wo, out: &mut o }]);
            matmul(&x576, 1, &mut [Projection { weight: wg, out: &mut g }, Projection { weight: wu, out: &mut u }]);
            matmul(&x1536, 1, &mut [Projection { weight: wd, out: &mut d }]);
        }
    });
    println!("layers, 1 token x {} MB of Q4_1 in 4 regions per layer: {:.2} GB/s", bytes / 1_000_000, bytes as f64 / seconds / 1e9);
}

fn attention() -> std::io::Result<()> {
    let shape = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
    let block_size = 16;
    let width = shape.kv_heads * shape.head_dim;
    for (past, new, calls) in [(0usize, 512usize, 2), (64, 1, 200), (512, 1, 200)] {
        let total = past + new;
        let blocks = total.div_ceil(block_size);
        let table: Vec<u32> = (0..blocks as u32).collect();
        let mut kv = HostKv::new(1, blocks, block_size, width, KvDtype::F32)?;
        for position in 0..total {
            let row: Vec<f32> = (0..width).map(|j| ((position * 31 + j) % 17) as f32 * 0.05).collect();
            kv.write(0, position, &row, &row);
        }
        let sequences = [SequenceView { rows: 0..new, past_len: past, block_table: &table, global_spans: &[] }];
        let q: Vec<f32> = (0..new * shape.heads * shape.head_dim).map(|i| (i % 13) as f32 * 0.05).collect();
        let mut out = vec![0.0; q.len()];
        let seconds = best_of(30, calls, || paged_attention(&q, &kv.layer(0), &sequences, &Causal, shape, &mut out));
        println!("attention, {new} new tokens at depth {past}: {:.1} us per layer", seconds * 1e6);
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    // `kernel_timing matvec`, `layers`, `panel` or `attention` times just that one.
    let only = std::env::args().nth(1);
    let wants = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if wants("matvec") {
        matvec();
    }
    if wants("layers") {
        layer_regions();
    }
    #[cfg(target_arch = "x86_64")]
    if wants("panel") {
        panel_kernel();
    }
    if wants("attention") {
        attention()?;
    }
    Ok(())
}
