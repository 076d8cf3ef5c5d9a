//! The engine end to end on the tiny fixtures: batching, chunked prefill and
//! preemption change nothing about a request's output; prefix reuse skips
//! exactly the cached tokens; seeds, stop strings, n > 1, cancellation and
//! limits behave as the OpenAI API promises.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::*;
use ember_engine::{
    Completion, EngineConfig, EngineError, EngineHandle, EngineObserver, FinishReason, GenerationEvent,
    GenerationRequest, LoadedModel, LogitsProcessor, LogitsProcessorFactory, SamplingParams, StepReport,
};
use ember_model::{DType, Device};

fn mixed_requests() -> Vec<GenerationRequest> {
    [3, 40, 17, 90, 1, 64, 25, 8]
        .iter()
        .enumerate()
        .map(|(i, &len)| greedy(prompt(len, i as u32), 12 + i))
        .collect()
}

#[derive(Default)]
struct CountingObserver {
    steps: AtomicUsize,
    max_batch: AtomicUsize,
    max_prefill_with_decode: AtomicUsize,
    first_tokens: AtomicUsize,
}

impl EngineObserver for CountingObserver {
    fn on_step(&self, step: &StepReport, _: Duration) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.max_batch.fetch_max(step.batch_size, Ordering::Relaxed);
        if step.decode_tokens > 0 {
            self.max_prefill_with_decode.fetch_max(step.prefill_tokens, Ordering::Relaxed);
        }
    }
    fn on_first_token(&self, _: Duration) {
        self.first_tokens.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn a_batch_of_eight_mixed_requests_gives_each_its_solo_output() -> TestResult {
    for name in ["qwen3-tiny", "llama-tiny", "qwen2-tiny"] {
        let solo_engine = engine(name, config(1024))?;
        let solo: Vec<Completion> = mixed_requests()
            .into_iter()
            .map(|r| run_alone(&solo_engine, r))
            .collect::<anyhow::Result<_>>()?;
        let observer = Arc::new(CountingObserver::default());
        // A small token budget forces chunked prefill beside running decodes.
        let batched_engine = engine(
            name,
            EngineConfig {
                max_num_batched_tokens: 24,
                observer: Some(observer.clone()),
                ..config(1024)
            },
        )?;
        let batched = run_together(&batched_engine, mixed_requests())?;
        assert_eq!(batched.len(), solo.len(), "{name}");
        for (i, (b, s)) in batched.iter().zip(&solo).enumerate() {
            assert_same_output(&format!("{name} request {i}"), b, s);
            assert_eq!(b.choices[0].token_ids.len(), 12 + i);
            assert_eq!(b.choices[0].finish_reason, Some(FinishReason::Length));
        }
        assert!(observer.max_batch.load(Ordering::Relaxed) > 1, "{name}: requests were batched");
        assert!(
            observer.max_prefill_with_decode.load(Ordering::Relaxed) > 0,
            "{name}: prefill chunks ran beside decodes"
        );
        assert_eq!(observer.first_tokens.load(Ordering::Relaxed), 8, "{name}");
        assert_eq!(batched_engine.stats().requests_finished, 8);
        // Gauges are refreshed at the end of the step that sent the last event.
        eventually("an idle engine", || {
            let s = batched_engine.stats();
            (s.running, s.waiting, s.kv_blocks_used) == (0, 0, 0)
        });
    }
    Ok(())
}

#[test]
fn preemption_under_memory_pressure_loses_nothing() -> TestResult {
    let solo_engine = engine("qwen3-tiny", config(1024))?;
    let requests: Vec<GenerationRequest> = (0..6).map(|i| greedy(prompt(30 + 5 * i, 50 + i as u32), 40)).collect();
    let solo: Vec<Completion> = requests
        .iter()
        .map(|r| run_alone(&solo_engine, r.clone()))
        .collect::<anyhow::Result<_>>()?;
    // Room for about two of the six sequences at full length.
    let tight = engine("qwen3-tiny", config(160))?;
    let batched = run_together(&tight, requests)?;
    assert_eq!(batched.len(), solo.len());
    for (i, (b, s)) in batched.iter().zip(&solo).enumerate() {
        assert_same_output(&format!("request {i}"), b, s);
    }
    let stats = tight.stats();
    assert!(stats.preemptions > 0, "the pool was small enough to force preemption: {stats:?}");
    eventually("all blocks freed", || tight.stats().kv_blocks_used == 0);
    Ok(())
}

#[test]
fn a_second_chat_turn_prefills_only_its_new_tokens() -> TestResult {
    let engine = engine("qwen3-tiny", config(1024))?;
    let first_prompt = prompt(50, 1);
    let first = run_alone(&engine, greedy(first_prompt.clone(), 10))?;
    assert_eq!(first.usage.map(|u| u.cached_tokens), Some(0));
    let after_first = engine.stats();
    assert_eq!(after_first.prefill_tokens, 50);

    // Turn two: the whole first exchange plus a new user message.
    let mut second_prompt = first_prompt.clone();
    second_prompt.extend(&first.choices[0].token_ids);
    second_prompt.extend(prompt(13, 2));
    let second = run_alone(&engine, greedy(second_prompt.clone(), 10))?;
    // Every full block of the first exchange was computed (its last token
    // never is): 50 + 10 - 1 = 59 tokens -> 14 blocks of 4 = 56 tokens.
    let cached = second.usage.map(|u| u.cached_tokens).unwrap_or_default();
    assert_eq!(cached, 56);
    let prefilled = engine.stats().prefill_tokens - after_first.prefill_tokens;
    assert_eq!(prefilled as usize, second_prompt.len() - 56);

    // The cached answer is the answer a cold engine gives.
    let cold = run_alone(&self::engine("qwen3-tiny", config(1024))?, greedy(second_prompt, 10))?;
    assert_same_output("second turn", &second, &cold);

    // The same document asked twice: only the tail of its last block is recomputed.
    let before = engine.stats().prefill_tokens;
    let again = run_alone(&engine, greedy(first_prompt, 10))?;
    assert_eq!(again.usage.map(|u| u.cached_tokens), Some(48));
    assert_eq!(engine.stats().prefill_tokens - before, 2);
    assert_same_output("same document", &again, &first);
    let stats = engine.stats();
    assert!(stats.prefix_hit_tokens >= 104 && stats.prefix_queried_tokens > stats.prefix_hit_tokens);
    Ok(())
}

fn sampled(prompt: Vec<u32>, seed: u64) -> GenerationRequest {
    GenerationRequest {
        max_tokens: Some(24),
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        ignore_eos: true,
        ..GenerationRequest::new(prompt)
    }
}

#[test]
fn a_seeded_request_samples_the_same_tokens_alone_and_in_a_batch() -> TestResult {
    let engine = engine("qwen3-tiny", config(2048))?;
    let alone = run_alone(&engine, sampled(prompt(20, 9), 1234))?;
    let again = run_alone(&engine, sampled(prompt(20, 9), 1234))?;
    assert_eq!(alone.choices[0].token_ids, again.choices[0].token_ids);
    let mut requests = mixed_requests();
    requests.insert(3, sampled(prompt(20, 9), 1234));
    let batch = run_together(&engine, requests)?;
    assert_eq!(batch[3].choices[0].token_ids, alone.choices[0].token_ids);
    let other_seed = run_alone(&engine, sampled(prompt(20, 9), 99))?;
    assert_ne!(other_seed.choices[0].token_ids, alone.choices[0].token_ids);
    Ok(())
}

#[test]
fn n_choices_share_the_prompt_and_follow_their_own_seeds() -> TestResult {
    let engine = engine("qwen3-tiny", config(2048))?;
    let p = prompt(41, 3);
    let request = GenerationRequest {
        n: 3,
        ..sampled(p.clone(), 500)
    };
    let before = engine.stats();
    let three = run_alone(&engine, request)?;
    assert_eq!(three.choices.len(), 3);
    let usage = three.usage.ok_or_else(|| anyhow::anyhow!("no usage"))?;
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (41, 72));
    // Choices 1 and 2 found the first choice's 10 full prompt blocks.
    let after = engine.stats();
    assert_eq!(after.prefix_hit_tokens - before.prefix_hit_tokens, 2 * 40);
    // Choice i is seeded with seed + i.
    for i in 0..3 {
        let single = run_alone(&engine, sampled(p.clone(), 500 + i as u64))?;
        assert_eq!(three.choices[i].token_ids, single.choices[0].token_ids, "choice {i}");
    }
    Ok(())
}

/// Forces a fixed answer, as a grammar with one valid string would.
struct Force {
    tokens: Vec<u32>,
    next: usize,
}
impl LogitsProcessor for Force {
    fn process(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let want = *self.tokens.get(self.next).ok_or("past the end")? as usize;
        for (i, l) in logits.iter_mut().enumerate() {
            if i != want {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }
    fn accept(&mut self, token: u32) -> Result<bool, String> {
        self.next += 1;
        Ok(token == *self.tokens.last().unwrap_or(&u32::MAX) && self.next == self.tokens.len())
    }
}
struct ForceFactory(Vec<u32>);
impl LogitsProcessorFactory for ForceFactory {
    fn create(&self) -> Box<dyn LogitsProcessor> {
        Box::new(Force {
            tokens: self.0.clone(),
            next: 0,
        })
    }
}

#[test]
fn stop_strings_end_the_text_before_them_even_across_tokens() -> TestResult {
    let engine = engine("qwen3-tiny", config(1024))?;
    let tokenizer = engine.model().tokenizer.clone().ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let answer = "hello world, the quick brown fox jumps";
    let forced = |stop: Vec<String>| GenerationRequest {
        stop,
        logits_processor: Some(Arc::new(ForceFactory(tokenizer.encode(answer, false).unwrap_or_default()))),
        ..greedy(prompt(6, 1), 100)
    };
    // The processor's complete answer ends the choice.
    let free = run_alone(&engine, forced(Vec::new()))?;
    assert_eq!(free.choices[0].text, answer);
    assert_eq!(free.choices[0].finish_reason, Some(FinishReason::Stop));
    // "k br" spans the tokens of "quick" and "brown"; the earliest stop wins.
    for (stops, want) in [
        (vec!["k br"], "hello world, the quic"),
        (vec!["never", "fox", "o"], "hell"),
        (vec!["jumps"], "hello world, the quick brown fox "),
    ] {
        let stops = stops.into_iter().map(String::from).collect();
        let stopped = run_alone(&engine, forced(stops))?;
        assert_eq!(stopped.choices[0].text, want);
        assert_eq!(stopped.choices[0].finish_reason, Some(FinishReason::Stop));
    }
    Ok(())
}

#[test]
fn eos_and_stop_ids_end_a_choice() -> TestResult {
    let engine = engine("qwen3-tiny", config(1024))?;
    let free = run_alone(&engine, greedy(prompt(10, 4), 8))?;
    let third = free.choices[0].token_ids[2];
    let request = GenerationRequest {
        stop_token_ids: vec![third],
        ..greedy(prompt(10, 4), 8)
    };
    let stopped = run_alone(&engine, request)?;
    assert_eq!(stopped.choices[0].token_ids, free.choices[0].token_ids[..3]);
    assert_eq!(stopped.choices[0].finish_reason, Some(FinishReason::Stop));

    // The model's eos id (511 in the fixture's config.json) ends a choice
    // unless `ignore_eos`: force it as the second token of a longer answer.
    let eos = *engine.model().eos_token_ids.first().ok_or_else(|| anyhow::anyhow!("no eos id"))?;
    let ended = run_alone(
        &engine,
        GenerationRequest {
            ignore_eos: false,
            logits_processor: Some(Arc::new(ForceFactory(vec![5, eos, 6, 7]))),
            ..greedy(prompt(10, 4), 8)
        },
    )?;
    assert_eq!(ended.choices[0].token_ids, vec![5, eos]);
    assert_eq!(ended.choices[0].finish_reason, Some(FinishReason::Stop));
    Ok(())
}

#[test]
fn dropping_the_stream_cancels_and_frees_the_blocks() -> TestResult {
    let engine = engine("qwen3-tiny", config(1024))?;
    let mut stream = engine.submit(greedy(prompt(20, 5), 200))?;
    for _ in 0..3 {
        assert!(matches!(stream.blocking_next(), Some(GenerationEvent::Delta { .. })));
    }
    drop(stream);
    eventually("the cancelled request to leave", || {
        let s = engine.stats();
        s.running == 0 && s.kv_blocks_used == 0 && s.requests_cancelled == 1
    });
    assert!(engine.stats().generated_tokens < 200);
    // The engine keeps serving.
    let after = run_alone(&engine, greedy(prompt(5, 6), 4))?;
    assert_eq!(after.choices[0].token_ids.len(), 4);
    Ok(())
}

/// Holds the engine thread inside sampling until told to go on.
struct Gate(Arc<Mutex<mpsc::Receiver<()>>>);
struct GateProcessor(Arc<Mutex<mpsc::Receiver<()>>>);

impl LogitsProcessor for GateProcessor {
    fn process(&mut self, _: &mut [f32]) -> Result<(), String> {
        let rx = self.0.lock().map_err(|_| "poisoned")?;
        rx.recv().map_err(|_| "gate closed".to_string())
    }
    fn accept(&mut self, _: u32) -> Result<bool, String> {
        Ok(false)
    }
}

impl LogitsProcessorFactory for Gate {
    fn create(&self) -> Box<dyn LogitsProcessor> {
        Box::new(GateProcessor(self.0.clone()))
    }
}

#[test]
fn a_full_queue_and_an_oversized_request_are_refused() -> TestResult {
    let engine = engine(
        "qwen3-tiny",
        EngineConfig {
            max_num_seqs: 1,
            max_queue_len: 2,
            ..config(1024)
        },
    )?;
    let (open, gate) = mpsc::channel();
    let gated = GenerationRequest {
        logits_processor: Some(Arc::new(Gate(Arc::new(Mutex::new(gate))))),
        ..greedy(prompt(5, 1), 2)
    };
    let busy = engine.submit(gated)?;
    // Admitted, and holding the engine thread inside its first step.
    eventually("the gated request to be admitted", || engine.stats().waiting == 0);
    let queued: Vec<_> = (0..2).map(|i| engine.submit(greedy(prompt(5, i), 2))).collect::<Result<_, _>>()?;
    assert!(matches!(
        engine.submit(greedy(prompt(5, 9), 2)),
        Err(EngineError::QueueFull { limit: 2 })
    ));
    for _ in 0..2 {
        open.send(())?;
    }
    assert_eq!(busy.collect_blocking().choices[0].token_ids.len(), 2);
    for q in queued {
        assert_eq!(q.collect_blocking().choices[0].token_ids.len(), 2);
    }
    // Prompt + max_tokens beyond the window (256 for this fixture).
    let too_long = engine.submit(greedy(prompt(200, 1), 100));
    assert!(matches!(too_long, Err(EngineError::ContextLength { prompt: 200, max_tokens: 100, max_model_len: 256 })));
    for bad in [
        GenerationRequest::new(Vec::new()),
        GenerationRequest::new(vec![512]),
        GenerationRequest { n: 0, ..greedy(prompt(3, 1), 2) },
        GenerationRequest { max_tokens: Some(0), ..greedy(prompt(3, 1), 2) },
        GenerationRequest {
            sampling: SamplingParams { top_p: 2.0, ..SamplingParams::default() },
            ..GenerationRequest::new(prompt(3, 1))
        },
    ] {
        assert!(engine.submit(bad).is_err());
    }
    // Each refused for its own reason.
    assert!(matches!(engine.submit(GenerationRequest::new(Vec::new())), Err(EngineError::EmptyPrompt)));
    let field = |request: GenerationRequest| match engine.submit(request) {
        Err(EngineError::InvalidParameter { field, .. }) => field,
        other => panic!("expected an invalid parameter, got {:?}", other.err()),
    };
    assert_eq!(field(GenerationRequest::new(vec![512])), "prompt");
    assert_eq!(field(GenerationRequest { n: 0, ..greedy(prompt(3, 1), 2) }), "n");
    assert_eq!(field(GenerationRequest { max_tokens: Some(0), ..greedy(prompt(3, 1), 2) }), "max_tokens");
    let bad_top_p = GenerationRequest {
        sampling: SamplingParams { top_p: 2.0, ..SamplingParams::default() },
        ..GenerationRequest::new(prompt(3, 1))
    };
    assert_eq!(field(bad_top_p), "top_p");
    Ok(())
}

/// Fails after a few tokens, as a grammar engine might.
struct FailsAfter(usize);
impl LogitsProcessor for FailsAfter {
    fn process(&mut self, _: &mut [f32]) -> Result<(), String> {
        if self.0 == 0 {
            return Err("grammar engine failed".into());
        }
        self.0 -= 1;
        Ok(())
    }
    fn accept(&mut self, _: u32) -> Result<bool, String> {
        Ok(false)
    }
}
struct FailsAfterFactory;
impl LogitsProcessorFactory for FailsAfterFactory {
    fn create(&self) -> Box<dyn LogitsProcessor> {
        Box::new(FailsAfter(3))
    }
}

/// Panics inside sampling: a bug in one request's processor.
struct Panics;
impl LogitsProcessor for Panics {
    fn process(&mut self, _: &mut [f32]) -> Result<(), String> {
        panic!("processor bug")
    }
    fn accept(&mut self, _: u32) -> Result<bool, String> {
        Ok(false)
    }
}
struct PanicsFactory;
impl LogitsProcessorFactory for PanicsFactory {
    fn create(&self) -> Box<dyn LogitsProcessor> {
        Box::new(Panics)
    }
}

#[test]
fn a_failing_request_does_not_poison_its_batch() -> TestResult {
    let engine = engine("qwen3-tiny", config(2048))?;
    let solo: Vec<Completion> = mixed_requests()
        .into_iter()
        .map(|r| run_alone(&engine, r))
        .collect::<anyhow::Result<_>>()?;
    let mut requests = mixed_requests();
    requests.push(GenerationRequest {
        logits_processor: Some(Arc::new(FailsAfterFactory)),
        ..greedy(prompt(10, 77), 20)
    });
    requests.push(GenerationRequest {
        logits_processor: Some(Arc::new(PanicsFactory)),
        ..greedy(prompt(12, 78), 20)
    });
    let out = run_together(&engine, requests)?;
    for (i, s) in solo.iter().enumerate() {
        assert_same_output(&format!("request {i}"), &out[i], s);
    }
    let failed = &out[8].choices[0];
    assert_eq!(failed.token_ids.len(), 3);
    assert!(matches!(&failed.finish_reason, Some(FinishReason::Error(m)) if m.contains("grammar engine failed")));
    assert!(matches!(&out[9].choices[0].finish_reason, Some(FinishReason::Error(m)) if m.contains("processor bug")));
    eventually("all blocks freed", || engine.stats().kv_blocks_used == 0);
    Ok(())
}

/// Sampling defaults come from the model's generation_config.json, with the
/// engine's overrides laid over them key by key; a bad value is an error
/// naming the file.
#[test]
fn generation_config_gives_the_sampling_defaults() -> TestResult {
    let dir = tempfile::tempdir()?;
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("qwen3-tiny").join(file), dir.path().join(file))?;
    }
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "eos_token_id": 511}"#,
    )?;
    let loaded = LoadedModel::open(dir.path(), &Device::flex(), DType::F32)?;
    let d = loaded.info.generation_defaults;
    assert_eq!((d.temperature, d.top_p, d.top_k, d.min_p), (Some(0.7), Some(0.8), Some(20), None));
    let overrides = ember_engine::GenerationDefaults::parse_override(r#"{"top_p": 0.5}"#)?;
    let engine = EngineHandle::start(
        loaded,
        EngineConfig {
            generation_overrides: overrides,
            ..config(256)
        },
    )?;
    let p = engine.model().generation_defaults.sampling();
    assert_eq!((p.temperature, p.top_p, p.top_k), (0.7, 0.5, 20));

    std::fs::write(dir.path().join("generation_config.json"), r#"{"temperature": -3}"#)?;
    let bad = LoadedModel::open(dir.path(), &Device::flex(), DType::F32).err().map(|e| e.to_string());
    assert!(bad.as_deref().is_some_and(|m| m.contains("generation_config.json") && m.contains("temperature")), "{bad:?}");
    Ok(())
}
