//! What the engine test files share: the tiny fixtures behind an engine,
//! request builders, and output comparisons.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ember_engine::{
    Completion, EngineConfig, EngineHandle, GenerationRequest, KvCacheMemory, KvRetention, LoadedModel, SamplingParams,
};
use ember_model::sparse::SparseLayout;
use ember_model::{DType, Device, LoadOptions};

pub type TestResult = anyhow::Result<()>;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

pub fn engine(name: &str, config: EngineConfig) -> anyhow::Result<EngineHandle> {
    let loaded = LoadedModel::open(&fixture(name), &Device::flex(), DType::F32)?;
    Ok(EngineHandle::start(loaded, config)?)
}

pub fn config(tokens: usize) -> EngineConfig {
    EngineConfig {
        kv_cache_memory: KvCacheMemory::Tokens(tokens),
        block_size: 4,
        ..EngineConfig::default()
    }
}

/// qwen3-tiny under a sparse layout, prefilled in chunks of `chunk` tokens.
pub fn sparse_engine(layout: SparseLayout, kv_retention: KvRetention, tokens: usize, chunk: usize) -> anyhow::Result<EngineHandle> {
    let options = LoadOptions {
        sparse: Some(layout),
        ..LoadOptions::default()
    };
    let loaded = LoadedModel::open_with(&fixture("qwen3-tiny"), &Device::flex(), DType::F32, options)?;
    let config = EngineConfig {
        kv_retention,
        max_num_batched_tokens: chunk,
        ..config(tokens)
    };
    Ok(EngineHandle::start(loaded, config)?)
}

/// Deterministic pseudo-random token ids below 500 (511 is eos).
pub fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 7919 + salt * 104_729 + 13) % 500).collect()
}

pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        max_tokens: Some(max_tokens),
        sampling: SamplingParams {
            logprobs: true,
            top_logprobs: 5,
            ..SamplingParams::greedy()
        },
        ignore_eos: true,
        ..GenerationRequest::new(prompt)
    }
}

pub fn run_alone(engine: &EngineHandle, request: GenerationRequest) -> anyhow::Result<Completion> {
    Ok(engine.submit(request)?.collect_blocking())
}

/// Submits all requests at once and collects them from their own threads.
pub fn run_together(engine: &EngineHandle, requests: Vec<GenerationRequest>) -> anyhow::Result<Vec<Completion>> {
    let streams = requests.into_iter().map(|r| engine.submit(r)).collect::<Result<Vec<_>, _>>()?;
    let handles: Vec<_> = streams.into_iter().map(|s| std::thread::spawn(move || s.collect_blocking())).collect();
    handles
        .into_iter()
        .map(|h| h.join().map_err(|_| anyhow::anyhow!("collector panicked")))
        .collect()
}

/// Same tokens, and logprobs of the same alternatives within tolerance. Both
/// completions must be finished and carry a logprob per token (every request
/// compared here asks for them), so the comparison is never vacuous.
pub fn assert_same_output(label: &str, got: &Completion, want: &Completion) {
    assert!(got.usage.is_some() && want.usage.is_some(), "{label}: unfinished request");
    assert!(!want.choices.is_empty(), "{label}: no choices");
    assert_eq!(got.choices.len(), want.choices.len(), "{label}");
    for (g, w) in got.choices.iter().zip(&want.choices) {
        assert!(!w.token_ids.is_empty(), "{label}: no tokens");
        assert_eq!(g.token_ids, w.token_ids, "{label}: tokens");
        assert_eq!(g.finish_reason, w.finish_reason, "{label}: finish reason");
        assert_eq!(g.logprobs.len(), g.token_ids.len(), "{label}: a logprob per token");
        assert_eq!(w.logprobs.len(), w.token_ids.len(), "{label}: a logprob per token");
        for (gl, wl) in g.logprobs.iter().zip(&w.logprobs) {
            assert_eq!(gl.token, wl.token, "{label}: logprob token");
            assert!((gl.logprob - wl.logprob).abs() < 1e-4, "{label}: {} vs {}", gl.logprob, wl.logprob);
            assert_eq!(gl.top.len(), wl.top.len(), "{label}: top logprobs");
            for ((gt, gv), (wt, wv)) in gl.top.iter().zip(&wl.top) {
                assert_eq!(gt, wt, "{label}: top logprob token");
                assert!((gv - wv).abs() < 1e-4, "{label}: top logprob {gv} vs {wv}");
            }
        }
    }
}

/// Polls until `done` holds; the engine frees memory at its next step.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
