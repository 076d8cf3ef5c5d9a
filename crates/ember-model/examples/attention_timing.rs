//! Times one layer's paged attention on the CPU fast path, apart from the
//! rest of the model: a 512-token prompt chunk, and one decode step at
//! depth 512, in SmolLM2-135M's shape (9 heads, 3 KV heads, head_dim 64,
//! blocks of 16). Prints the best of five runs, in microseconds per call.
//!
//! `cargo run --release -p ember-model --example attention_timing`

use std::time::Instant;

use ember_model::cpu::attention::{Causal, Heads, SequenceView, paged_attention};
use ember_model::cpu::kv::{HostKv, KvDtype};

fn main() -> std::io::Result<()> {
    let shape = Heads { heads: 9, kv_heads: 3, head_dim: 64 };
    let block_size = 16;
    let width = shape.kv_heads * shape.head_dim;
    for (past, new, calls) in [(0usize, 512usize, 20), (512, 1, 2000)] {
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
        let mut best = f64::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            for _ in 0..calls {
                paged_attention(&q, &kv.layer(0), &sequences, &Causal, shape, &mut out);
            }
            best = best.min(start.elapsed().as_secs_f64() / calls as f64);
        }
        println!("{new} new tokens at depth {past}: {:.1} us per layer", best * 1e6);
    }
    Ok(())
}
