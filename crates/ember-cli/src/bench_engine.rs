//! `ember bench --engine-only`: the model alone, as llama.cpp's
//! `llama-bench` measures it, so the two can be compared on the same file.
//! No scheduler, sampler or tokenizer: forward passes over one sequence in
//! a private KV pool, on pseudo-random token ids.
//!
//! - `pp{N}`: one forward over an `N`-token prompt (prefill throughput);
//! - `tg{N}`: `N` one-token forwards (decode throughput);
//! - `@ d{D}`: the same after `D` tokens already in the cache (untimed).
//!
//! Each test runs `--repetitions` times after one untimed warm-up; the mean
//! and standard deviation of tokens/s are reported, as llama-bench does
//! (its JSON names: `n_prompt`, `n_gen`, `n_depth`, `avg_ts`, `stddev_ts`,
//! `samples_ts`).

use std::time::Instant;

use anyhow::{Result, bail};
use ember_engine::LoadedModel;
use ember_model::{CausalLm, LogitsMode, SequenceInput};
use serde::Serialize;

/// The engine-only tests to run.
#[derive(Debug, Clone)]
pub struct EngineBench {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub depths: Vec<usize>,
    pub repetitions: usize,
}

#[derive(Debug, Serialize)]
struct TestResult {
    test: String,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    avg_ts: f64,
    stddev_ts: f64,
    samples_ts: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    mode: &'static str,
    compute: String,
    repetitions: usize,
    tests: Vec<TestResult>,
}

const BLOCK_SIZE: usize = 16;

pub fn run(loaded: LoadedModel, model_name: String, bench: &EngineBench) -> Result<()> {
    if bench.repetitions == 0 || (bench.n_prompt == 0 && bench.n_gen == 0) {
        bail!("--repetitions and one of --n-prompt / --n-gen must be positive");
    }
    let model = &loaded.model;
    let compute = model.compute_summary();
    eprintln!("{compute}");
    let vocab = model.config().vocab_size as u64;
    let mut tests = Vec::new();
    for &depth in &bench.depths {
        if bench.n_prompt > 0 {
            tests.push(measure(model, vocab, depth, bench.n_prompt, 0, bench.repetitions)?);
        }
        if bench.n_gen > 0 {
            tests.push(measure(model, vocab, depth, 0, bench.n_gen, bench.repetitions)?);
        }
    }
    println!("{:<16} {:>14} {:>10}", "test", "t/s", "±");
    for t in &tests {
        println!("{:<16} {:>14.2} {:>10.2}", t.test, t.avg_ts, t.stddev_ts);
    }
    let report = Report {
        model: model_name,
        mode: "engine-only",
        compute,
        repetitions: bench.repetitions,
        tests,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// One test: `repetitions` timed runs after a warm-up.
fn measure(model: &CausalLm, vocab: u64, depth: usize, n_prompt: usize, n_gen: usize, repetitions: usize) -> Result<TestResult> {
    let tokens = n_prompt + n_gen;
    let mut samples = Vec::with_capacity(repetitions);
    for rep in 0..=repetitions {
        let seconds = run_once(model, vocab, rep as u64, depth, n_prompt, n_gen)?;
        if rep > 0 {
            samples.push(tokens as f64 / seconds);
        }
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let variance = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (samples.len().max(2) - 1) as f64;
    let name = if n_prompt > 0 { format!("pp{n_prompt}") } else { format!("tg{n_gen}") };
    Ok(TestResult {
        test: if depth > 0 { format!("{name} @ d{depth}") } else { name },
        n_prompt,
        n_gen,
        n_depth: depth,
        avg_ts: mean,
        stddev_ts: variance.sqrt(),
        samples_ts: samples,
    })
}

/// Seconds for the timed part of one run.
fn run_once(model: &CausalLm, vocab: u64, seed: u64, depth: usize, n_prompt: usize, n_gen: usize) -> Result<f64> {
    let total = depth + n_prompt + n_gen;
    let blocks = total.div_ceil(BLOCK_SIZE);
    let mut pool = model.new_pool(blocks, BLOCK_SIZE);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let ids = pseudo_random_ids(seed, total, vocab);
    let mut step = |past_len: usize, tokens: &[u32]| -> Result<()> {
        let input = SequenceInput {
            tokens,
            past_len,
            block_table: &table,
            global_spans: &[],
        };
        let logits = model.forward(&mut pool, &[input], LogitsMode::Last)?;
        // Read the logits back, as a sampler would.
        for l in logits {
            let _ = l.into_data();
        }
        Ok(())
    };
    if depth > 0 {
        step(0, &ids[..depth])?;
    }
    let started = Instant::now();
    if n_prompt > 0 {
        step(depth, &ids[depth..depth + n_prompt])?;
    }
    for i in 0..n_gen {
        let at = depth + n_prompt + i;
        step(at, &ids[at..at + 1])?;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn pseudo_random_ids(seed: u64, n: usize, vocab: u64) -> Vec<u32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect()
}
