//! The scheduler's policy against a fake model: admission limits, chunked
//! prefill budgets, preemption order, the admission stall, prefix-cache
//! eviction order.

use std::sync::Arc;
use std::time::Instant;

use ember_model::SequenceInput;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use super::*;
use crate::request::Usage;
use crate::sampling::{Sampler, SamplingParams, TokenHistory};

const VOCAB: usize = 1000;

/// Predicts `last token + 1` and records every step's token counts.
struct FakeRunner {
    block_size: usize,
    num_blocks: usize,
    steps: Vec<Vec<usize>>,
}

impl ModelRunner for FakeRunner {
    fn block_size(&self) -> usize {
        self.block_size
    }

    fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    fn forward(&mut self, inputs: &[SequenceInput<'_>], sample: &[usize], pool: &[(usize, Pooling)]) -> Result<StepOutputs, String> {
        for input in inputs {
            let needed = (input.past_len + input.tokens.len()).div_ceil(self.block_size);
            if input.block_table.len() < needed {
                return Err(format!("{} blocks for {needed} blocks of tokens", input.block_table.len()));
            }
        }
        self.steps.push(inputs.iter().map(|i| i.tokens.len()).collect());
        let logits = sample
            .iter()
            .map(|&k| {
                let last = inputs[k].tokens.last().copied().unwrap_or(0) as usize;
                let mut row = vec![0.0; VOCAB];
                row[(last + 1) % VOCAB] = 1.0;
                row
            })
            .collect();
        // A token's "hidden state" is `[token, 1]`.
        let pooled = pool
            .iter()
            .map(|&(k, pooling)| {
                let tokens = inputs[k].tokens;
                match pooling {
                    Pooling::Mean => vec![tokens.iter().map(|&t| t as f32).sum(), tokens.len() as f32],
                    Pooling::Last => vec![tokens.last().copied().unwrap_or(0) as f32, 1.0],
                }
            })
            .collect();
        Ok(StepOutputs { logits, pooled })
    }

    fn is_intact(&self) -> bool {
        true
    }

    fn reset_pool(&mut self) {}
}

fn scheduler(num_blocks: usize, block_size: usize, max_num_batched_tokens: usize, max_num_seqs: usize) -> Scheduler<FakeRunner> {
    let runner = FakeRunner {
        block_size,
        num_blocks,
        steps: Vec::new(),
    };
    let config = SchedulerConfig {
        max_num_batched_tokens,
        max_num_seqs,
        retire_unseen: None,
    };
    Scheduler::new(runner, config, Arc::new(EngineStats::default()), None)
}

/// Submits a greedy request of `n` choices; returns its event receiver.
fn submit(s: &mut Scheduler<FakeRunner>, id: u64, prompt: Vec<u32>, max_tokens: usize, n: usize) -> UnboundedReceiver<EngineEvent> {
    let history = TokenHistory::new(&prompt);
    let sequences = (0..n)
        .map(|index| {
            Sequence::new(SequenceStart {
                group: id,
                index,
                prompt: prompt.clone(),
                global_spans: Arc::from(Vec::new()),
                history: history.clone(),
                max_tokens,
                stop_ids: Arc::from(Vec::new()),
                sampler: Sampler::new(SamplingParams::greedy(), 0),
                processor: None,
                pooling: None,
            })
        })
        .collect();
    queue(s, id, sequences)
}

/// Adds a request of `sequences` (its choices) as the engine would;
/// returns its event receiver.
fn queue(s: &mut Scheduler<FakeRunner>, id: u64, sequences: Vec<Sequence>) -> UnboundedReceiver<EngineEvent> {
    let (tx, rx) = unbounded_channel();
    let group = Group {
        tx,
        stops: Arc::new(StopSignals::new(sequences.len())),
        unfinished: sequences.len(),
        usage: Usage {
            prompt_tokens: sequences.first().map_or(0, |q| q.prompt_len),
            ..Usage::default()
        },
        arrived: Instant::now(),
        leader_prefilled: false,
        counted_waiting: true,
    };
    s.stats.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.add(id, group, sequences);
    rx
}

/// Steps until idle, at most `limit` steps; returns the steps taken.
fn run(s: &mut Scheduler<FakeRunner>, limit: usize) -> usize {
    let mut steps = 0;
    while s.has_work() {
        assert!(steps < limit, "still busy after {limit} steps");
        s.step();
        steps += 1;
    }
    steps
}

/// The output tokens of each choice and the final usage.
fn outputs(rx: &mut UnboundedReceiver<EngineEvent>) -> (Vec<Vec<u32>>, Option<Usage>) {
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    let mut usage = None;
    while let Ok(event) = rx.try_recv() {
        match event {
            EngineEvent::Token { index, token, .. } => {
                if tokens.len() <= index {
                    tokens.resize(index + 1, Vec::new());
                }
                tokens[index].push(token);
            }
            EngineEvent::Finished { .. } | EngineEvent::Embedding { .. } => {}
            EngineEvent::Done { usage: u } => usage = Some(u),
        }
    }
    (tokens, usage)
}

fn counting_from(start: u32, len: usize) -> Vec<u32> {
    (start..start + len as u32).collect()
}

fn assert_idle(s: &Scheduler<FakeRunner>) {
    let stats = s.stats.snapshot();
    assert_eq!((stats.running, stats.waiting), (0, 0), "{stats:?}");
    assert_eq!(s.planner.blocks().lock().num_used(), 0);
}

/// Regression: with `--max-num-seqs 1 --max-model-len 4096
/// --max-num-batched-tokens 4096` (256 blocks), a 4080-token prompt needed
/// 255 blocks plus a 1% watermark and was never admitted, and everything
/// behind it waited forever while the engine thread spun.
#[test]
fn a_prompt_that_fills_the_pool_is_admitted_when_alone() {
    let mut s = scheduler(256, 16, 4096, 1);
    let mut long = submit(&mut s, 1, counting_from(0, 4080), 16, 1);
    let mut short = submit(&mut s, 2, counting_from(600, 4), 4, 1);
    run(&mut s, 100);
    let (tokens, usage) = outputs(&mut long);
    assert_eq!(tokens, vec![counting_from(4080 % VOCAB as u32, 16)]);
    assert_eq!(usage.map(|u| u.completion_tokens), Some(16));
    assert_eq!(outputs(&mut short).0[0].len(), 4);
    assert_idle(&s);
}

#[test]
fn a_step_that_can_plan_nothing_says_so() {
    let mut s = scheduler(8, 4, 64, 4);
    // A later choice whose leader never arrives may not start.
    let (tx, _rx) = unbounded_channel();
    let group = Group {
        tx,
        stops: Arc::new(StopSignals::new(2)),
        unfinished: 1,
        usage: Usage::default(),
        arrived: Instant::now(),
        leader_prefilled: false,
        counted_waiting: false,
    };
    let seq = Sequence::new(SequenceStart {
        group: 7,
        index: 1,
        prompt: vec![1, 2, 3],
        global_spans: Arc::from(Vec::new()),
        history: TokenHistory::default(),
        max_tokens: 2,
        stop_ids: Arc::from(Vec::new()),
        sampler: Sampler::new(SamplingParams::greedy(), 0),
        processor: None,
        pooling: None,
    });
    s.add(7, group, vec![seq]);
    assert!(s.has_work());
    assert!(!s.step(), "nothing could run, so the step must not claim progress");
    assert!(s.runner.steps.is_empty());
}

#[test]
fn admission_respects_max_num_seqs_and_the_token_budget() {
    let mut s = scheduler(64, 4, 12, 2);
    let _a = submit(&mut s, 1, counting_from(0, 10), 3, 1);
    let _b = submit(&mut s, 2, counting_from(100, 10), 3, 1);
    let _c = submit(&mut s, 3, counting_from(200, 10), 3, 1);
    s.step();
    // A's whole prompt, then as much of B's as the budget leaves; C waits for a slot.
    assert_eq!(s.runner.steps[0], vec![10, 2]);
    assert_eq!(s.stats.snapshot().running, 2);
    assert_eq!(s.stats.snapshot().waiting, 1);
    s.step();
    assert_eq!(s.runner.steps[1], vec![1, 8]);
    run(&mut s, 50);
    assert_idle(&s);
}

#[test]
fn chunked_prefill_splits_a_long_prompt_by_the_budget() {
    let mut s = scheduler(64, 4, 10, 4);
    let mut rx = submit(&mut s, 1, counting_from(0, 25), 2, 1);
    run(&mut s, 20);
    assert_eq!(s.runner.steps, vec![vec![10], vec![10], vec![5], vec![1]]);
    assert_eq!(outputs(&mut rx).0, vec![vec![25, 26]]);
}

#[test]
fn preemption_takes_the_newest_sequence_and_recomputes_it() {
    // Four blocks of two tokens: two three-token prompts fill the pool as
    // soon as they grow.
    let mut s = scheduler(4, 2, 64, 4);
    let mut a = submit(&mut s, 1, vec![10, 11, 12], 4, 1);
    let mut b = submit(&mut s, 2, vec![20, 21, 22], 4, 1);
    run(&mut s, 50);
    assert!(s.stats.snapshot().preemptions >= 1);
    // The older sequence ran on; both answers are what they would be alone.
    assert_eq!(outputs(&mut a).0, vec![vec![13, 14, 15, 16]]);
    assert_eq!(outputs(&mut b).0, vec![vec![23, 24, 25, 26]]);
    assert_idle(&s);
}

/// Regression for head-first release: the second turn of a chat must still
/// find the head of the first turn after other traffic evicted some blocks.
#[test]
fn a_multi_turn_chat_keeps_its_prefix_hits_under_memory_pressure() {
    let mut s = scheduler(10, 4, 64, 4);
    let turn1 = counting_from(1, 16);
    let mut first = submit(&mut s, 1, turn1.clone(), 4, 1);
    run(&mut s, 20);
    let (answer, _) = outputs(&mut first);
    // 32 unrelated tokens take eight blocks: all six free ones and two cached.
    let _filler = submit(&mut s, 2, counting_from(500, 32), 1, 1);
    run(&mut s, 20);
    let mut turn2 = turn1;
    turn2.extend(&answer[0]);
    turn2.extend([900, 901, 902, 903]);
    let mut second = submit(&mut s, 3, turn2, 1, 1);
    run(&mut s, 20);
    let (_, usage) = outputs(&mut second);
    assert_eq!(usage.map(|u| u.cached_tokens), Some(8), "the first two blocks of turn 1 are reused");
}

#[test]
fn later_choices_reuse_the_first_choice_prompt_blocks() {
    let mut s = scheduler(32, 4, 64, 4);
    let mut rx = submit(&mut s, 1, counting_from(0, 9), 2, 3);
    run(&mut s, 20);
    let (tokens, usage) = outputs(&mut rx);
    assert_eq!(tokens, vec![vec![9, 10]; 3]);
    assert_eq!(usage.map(|u| u.completion_tokens), Some(6));
    // Prefill computed the prompt once, plus the last token per later choice.
    assert_eq!(s.stats.snapshot().prefix_hit_tokens, 16);
    assert_idle(&s);
}

#[test]
fn a_choice_stopped_by_its_stream_and_a_dropped_stream_free_everything() {
    let mut s = scheduler(32, 4, 64, 4);
    let stopped = submit(&mut s, 1, counting_from(0, 5), 100, 1);
    let dropped = submit(&mut s, 2, counting_from(50, 5), 100, 1);
    s.step();
    s.groups[&1].stops.stop(0);
    drop(dropped);
    run(&mut s, 5);
    assert_idle(&s);
    let snapshot = s.stats.snapshot();
    assert_eq!((snapshot.requests_finished, snapshot.requests_cancelled), (1, 1));
    drop(stopped);
}

/// `kv_retention visible`: a generation far longer than the pool completes,
/// holding only the sink, window and current blocks (plus the null block),
/// and the blocks it gave back return to the pool when it ends.
#[test]
fn retiring_unseen_blocks_bounds_a_long_generation() {
    let layout = ember_model::sparse::SparseLayout {
        block: 4,
        local: 1,
        sinks: 4,
        stride: 0,
        dense_below: 0,
    };
    let runner = FakeRunner {
        block_size: 4,
        num_blocks: 12,
        steps: Vec::new(),
    };
    let config = SchedulerConfig {
        max_num_batched_tokens: 8,
        max_num_seqs: 4,
        retire_unseen: Some(layout),
    };
    let mut s = Scheduler::new(runner, config, Arc::new(EngineStats::default()), None);
    // 20 + 200 tokens: 55 blocks if every block were kept, in a pool of 12.
    let mut rx = submit(&mut s, 1, counting_from(1, 20), 200, 1);
    let mut peak = 0;
    let mut steps = 0;
    while s.has_work() {
        assert!(steps < 1000, "still busy");
        s.step();
        steps += 1;
        peak = peak.max(s.planner.blocks().lock().num_used());
    }
    let (tokens, usage) = outputs(&mut rx);
    assert_eq!(tokens[0], counting_from(21, 200));
    assert!(usage.is_some());
    // null + sink + window (this block and one before) + the next chunk's blocks.
    assert!(peak <= 6, "peak {peak} blocks");
    assert_eq!(s.planner.blocks().lock().num_used(), 1, "only the null block stays out");
}

/// Submits an embedding request; returns its event receiver.
fn submit_embedding(s: &mut Scheduler<FakeRunner>, id: u64, prompt: Vec<u32>, pooling: Pooling) -> UnboundedReceiver<EngineEvent> {
    let seq = Sequence::new(SequenceStart {
        group: id,
        index: 0,
        history: TokenHistory::new(&prompt),
        prompt,
        global_spans: Arc::from(Vec::new()),
        max_tokens: 0,
        stop_ids: Arc::from(Vec::new()),
        sampler: Sampler::new(SamplingParams::greedy(), 0),
        processor: None,
        pooling: Some(pooling),
    });
    queue(s, id, vec![seq])
}

fn embedding(rx: &mut UnboundedReceiver<EngineEvent>) -> Option<Vec<f32>> {
    let mut vector = None;
    while let Ok(event) = rx.try_recv() {
        if let EngineEvent::Embedding { vector: v, .. } = event {
            vector = Some(v);
        }
    }
    vector
}

/// A long input is pooled across its prefill chunks, batched with a
/// generation, and never sampled from; a mean-pooled one computes every
/// token even when its prefix is cached, since the mean needs all of them.
#[test]
fn embeddings_pool_across_chunks_beside_generation() {
    let mut s = scheduler(64, 4, 8, 4);
    let prompt = counting_from(1, 20);
    let mut mean = submit_embedding(&mut s, 1, prompt.clone(), Pooling::Mean);
    let mut generation = submit(&mut s, 2, counting_from(100, 3), 2, 1);
    run(&mut s, 100);
    // Tokens 1..=20: the mean is [10.5, 1], normalized.
    let norm = (10.5f32 * 10.5 + 1.0).sqrt();
    let got = embedding(&mut mean).unwrap_or_default();
    assert_eq!(got.len(), 2);
    assert!((got[0] - 10.5 / norm).abs() < 1e-6 && (got[1] - 1.0 / norm).abs() < 1e-6, "{got:?}");
    assert_eq!(outputs(&mut generation).0[0].len(), 2);
    assert!(s.runner.steps.len() >= 3, "20 tokens in chunks of at most 8: {:?}", s.runner.steps);

    let mut again = submit_embedding(&mut s, 3, prompt.clone(), Pooling::Mean);
    let steps_before = s.runner.steps.len();
    run(&mut s, 100);
    let computed: usize = s.runner.steps[steps_before..].iter().flatten().sum();
    assert_eq!(computed, 20, "a cached prefix must not shorten a mean");
    assert_eq!(embedding(&mut again), Some(got));

    // The last token's state needs only the last token computed afresh.
    let mut last = submit_embedding(&mut s, 4, prompt, Pooling::Last);
    let steps_before = s.runner.steps.len();
    run(&mut s, 100);
    let computed: usize = s.runner.steps[steps_before..].iter().flatten().sum();
    assert!(computed < 20, "{computed}");
    let norm = (20.0f32 * 20.0 + 1.0).sqrt();
    assert_eq!(embedding(&mut last), Some(vec![20.0 / norm, 1.0 / norm]));
    assert_idle(&s);
}
