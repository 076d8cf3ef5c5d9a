//! The engine under sparse attention: `[IMPORTANT]` spans reach the model
//! and key the prefix cache, and `--kv-retention visible` gives back the
//! blocks no later query sees without changing any answer.

mod common;

use common::*;
use ember_engine::{Completion, EngineConfig, EngineError, EngineHandle, GenerationRequest, KvRetention, LoadedModel};
use ember_model::sparse::SparseLayout;
use ember_model::{DType, Device, LoadOptions};

/// Under sparse attention a request's global spans reach the model: its
/// first token's logprobs are those of a direct forward pass with the same
/// spans (and differ from the pass without them), and the prefix cache
/// reuses only the blocks before the first span that differs.
#[test]
fn global_spans_reach_the_model_and_key_the_prefix_cache() -> TestResult {
    use ember_model::{CausalLm, LogitsMode, SequenceInput};

    let layout = SparseLayout {
        block: 4,
        local: 1,
        sinks: 0,
        stride: 0,
        dense_below: 0,
    };
    let engine = sparse_engine(layout, KvRetention::All, 512, 512)?;
    let options = LoadOptions {
        sparse: Some(layout),
        ..LoadOptions::default()
    };
    let tokens = prompt(60, 3);
    let spans = vec![10..14];
    let with_spans = |tokens: Vec<u32>| GenerationRequest {
        global_spans: spans.clone(),
        ..greedy(tokens, 1)
    };

    // The model itself, one forward pass with and without the span.
    let model = CausalLm::from_dir_with(&fixture("qwen3-tiny"), &Device::flex(), DType::F32, options)?;
    let direct = |global_spans: &[std::ops::Range<usize>]| -> anyhow::Result<Vec<f32>> {
        let mut pool = model.new_pool(16, 4);
        let table: Vec<u32> = (0..15).collect();
        let input = SequenceInput { tokens: &tokens, past_len: 0, block_table: &table, global_spans };
        let logits = model.forward(&mut pool, &[input], LogitsMode::Last)?.remove(0);
        Ok(logits.into_data().try_to_vec::<f32>()?)
    };
    let log_softmax = |row: &[f32], id: u32| {
        let max = row.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        row[id as usize] - max - sum.ln()
    };
    let (direct_spans, direct_plain) = (direct(&spans)?, direct(&[])?);

    let marked = run_alone(&engine, with_spans(tokens.clone()))?;
    let first = &marked.choices[0].logprobs[0];
    assert!((first.logprob - log_softmax(&direct_spans, first.token)).abs() < 1e-4, "the engine ran the spans");
    assert!(
        (log_softmax(&direct_plain, first.token) - first.logprob).abs() > 1e-3,
        "the span changes the answer, so this test can tell"
    );

    // Again with the same spans: the whole prompt but its last token is cached.
    let again = run_alone(&engine, with_spans(tokens.clone()))?;
    assert_eq!(again.usage.map(|u| u.cached_tokens), Some(56));
    assert_same_output("same spans, cached", &again, &marked);
    // Without them: only the blocks before the span's block are reused.
    let plain = run_alone(&engine, greedy(tokens.clone(), 1))?;
    assert_eq!(plain.usage.map(|u| u.cached_tokens), Some(8));
    assert!((plain.choices[0].logprobs[0].logprob - log_softmax(&direct_plain, plain.choices[0].token_ids[0])).abs() < 1e-4);
    Ok(())
}

/// `--kv-retention visible` changes nothing about the answers under sparse
/// attention: batched, chunked, with a repeated prompt served from the
/// prefix cache, and in a pool small enough that keeping every block
/// would preempt; and the pool is whole again afterwards.
#[test]
fn retiring_unseen_blocks_changes_no_answer() -> TestResult {
    let layout = SparseLayout {
        block: 8,
        local: 1,
        sinks: 4,
        stride: 3,
        dense_below: 16,
    };
    let start = |retention, tokens| sparse_engine(layout, retention, tokens, 24);
    let requests: Vec<GenerationRequest> = (0..4)
        .map(|i| GenerationRequest {
            global_spans: vec![20..26],
            ..greedy(prompt(60 + 10 * i, 70 + i as u32), 60)
        })
        .chain([greedy(prompt(60, 70), 60)])
        .collect();
    let keep_all = start(KvRetention::All, 4096)?;
    let want: Vec<Completion> = requests.iter().map(|r| run_alone(&keep_all, r.clone())).collect::<anyhow::Result<_>>()?;
    // 4 x 150 tokens need 150 blocks of 4 kept whole; 100 are enough once
    // each sequence holds only what it can still see.
    let retiring = start(KvRetention::Visible, 400)?;
    let got = run_together(&retiring, requests.clone())?;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_same_output(&format!("request {i}"), g, w);
    }
    let again = run_alone(&retiring, requests[0].clone())?;
    assert_same_output("from the prefix cache", &again, &want[0]);
    eventually("blocks back in the pool", || retiring.stats().kv_blocks_used <= 1);

    let dense = LoadedModel::open(&fixture("qwen3-tiny"), &Device::flex(), DType::F32)?;
    let refused = EngineHandle::start(dense, EngineConfig { kv_retention: KvRetention::Visible, ..config(256) });
    assert!(matches!(refused, Err(EngineError::InvalidConfig(m)) if m.contains("sparse")));
    Ok(())
}

/// Under `visible` retention a cache far smaller than the window serves
/// the whole window, since one sequence holds a bounded set: a 200-token
/// prompt runs in a 40-token cache with the answer a roomy cache gives;
/// spans that would not fit beside the window are refused up front.
#[test]
fn a_small_cache_serves_the_window_when_unseen_blocks_are_retired() -> TestResult {
    let layout = SparseLayout {
        block: 4,
        local: 1,
        sinks: 0,
        stride: 0,
        dense_below: 0,
    };
    let start = |retention, tokens| sparse_engine(layout, retention, tokens, 4);
    let keep_all = start(KvRetention::All, 40)?;
    assert_eq!(keep_all.info().max_model_len, 40, "kept whole, a sequence fits the cache only");
    let small = start(KvRetention::Visible, 40)?;
    assert_eq!(small.info().max_model_len, 256, "the window of qwen3-tiny");
    let request = greedy(prompt(200, 9), 20);
    let want = run_alone(&start(KvRetention::All, 1024)?, request.clone())?;
    assert_same_output("200 tokens in a 40-token cache", &run_alone(&small, request)?, &want);
    let spanned = GenerationRequest {
        global_spans: vec![0..100],
        ..greedy(prompt(200, 9), 20)
    };
    assert!(matches!(small.submit(spanned), Err(EngineError::InvalidParameter { field: "prompt", .. })));
    Ok(())
}
