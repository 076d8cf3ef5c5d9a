//! Embeddings against Hugging Face transformers: a tiny Qwen3-Embedding
//! (a bare `Qwen3Model` with sentence-transformers' last-token pooling
//! config, tests/fixtures/qwen3-embed-tiny) gives the reference's pooled,
//! L2-normalized hidden states to 1e-4, alone, in prefill chunks, and
//! batched beside generation; mean pooling likewise.

mod common;

use common::*;
use ember_engine::{EmbeddingRequest, EngineConfig, EngineHandle, LoadedModel, Pooling};
use ember_model::{DType, Device};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

struct Case {
    input: Vec<u32>,
    last: Vec<f32>,
    mean: Vec<f32>,
}

fn cases() -> anyhow::Result<Vec<Case>> {
    let text = std::fs::read_to_string(fixture("qwen3-embed-tiny").join("reference.json"))?;
    let reference: Value = serde_json::from_str(&text)?;
    let floats = |v: &Value| -> Vec<f32> { v.as_array().into_iter().flatten().filter_map(Value::as_f64).map(|x| x as f32).collect() };
    Ok(reference["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| Case {
            input: c["input"].as_array().into_iter().flatten().filter_map(Value::as_u64).map(|t| t as u32).collect(),
            last: floats(&c["last"]),
            mean: floats(&c["mean"]),
        })
        .collect())
}

fn embedder(pooling: Option<Pooling>, chunk: usize) -> anyhow::Result<EngineHandle> {
    let mut loaded = LoadedModel::open(&fixture("qwen3-embed-tiny"), &Device::flex(), DType::F32)?;
    assert_eq!(loaded.info.pooling, Some(Pooling::Last), "the pooling config says last token");
    if let Some(pooling) = pooling {
        loaded.info.pooling = Some(pooling);
    }
    let config = EngineConfig {
        max_num_batched_tokens: chunk,
        ..config(2048)
    };
    Ok(EngineHandle::start(loaded, config)?)
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= TOLERANCE, "{what}: max abs error {worst}");
}

#[test]
fn pooled_hidden_states_match_transformers() -> TestResult {
    let cases = cases()?;
    assert!(cases.len() >= 4);
    for (pooling, chunk) in [(Pooling::Last, 2048), (Pooling::Last, 16), (Pooling::Mean, 2048), (Pooling::Mean, 16)] {
        let engine = embedder(Some(pooling), chunk)?;
        // All at once, with a generation beside them.
        let generation = engine.submit(greedy(prompt(30, 1), 8))?;
        let streams = cases
            .iter()
            .map(|c| engine.embed(EmbeddingRequest { prompt: c.input.clone(), pooling }))
            .collect::<Result<Vec<_>, _>>()?;
        for (case, stream) in cases.iter().zip(streams) {
            let done = stream.collect_blocking();
            let want = if pooling == Pooling::Last { &case.last } else { &case.mean };
            let what = format!("{pooling:?}, chunks of {chunk}, {} tokens", case.input.len());
            assert_close(&done.embedding.unwrap_or_default(), want, &what);
            let usage = done.usage.unwrap_or_default();
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (case.input.len(), 0), "{what}");
        }
        assert_eq!(generation.collect_blocking().choices[0].token_ids.len(), 8);
    }
    Ok(())
}

#[test]
fn an_embedding_input_over_the_window_is_refused() -> TestResult {
    let engine = embedder(None, 2048)?;
    let too_long = vec![1; engine.info().max_model_len + 1];
    assert!(engine.embed(EmbeddingRequest { prompt: too_long, pooling: Pooling::Last }).is_err());
    assert!(engine.embed(EmbeddingRequest { prompt: Vec::new(), pooling: Pooling::Last }).is_err());
    Ok(())
}
