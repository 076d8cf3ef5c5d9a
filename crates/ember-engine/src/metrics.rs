//! What the engine tells the outside about its work: a snapshot of gauges and
//! counters anyone holding the handle can read, and an observer the gateway
//! implements to feed its histograms (TTFT, inter-token latency, batch size).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::request::{FinishReason, Usage};

/// One scheduler step, as reported to the observer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Sequences in the forward pass.
    pub batch_size: usize,
    /// Prompt (or recomputed) tokens in it.
    pub prefill_tokens: usize,
    /// Decode tokens in it.
    pub decode_tokens: usize,
    /// Requests with a choice in the running batch.
    pub running: usize,
    /// Requests waiting for admission, first or again after preemption.
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
}

/// Hooks called from the engine thread; keep them cheap. Every method has a
/// no-op default so an observer implements only what it records.
pub trait EngineObserver: Send + Sync {
    fn on_step(&self, _step: &StepReport, _duration: Duration) {}
    /// Time from submission to a choice's first token.
    fn on_first_token(&self, _ttft: Duration) {}
    /// Gap between two consecutive tokens of a choice.
    fn on_inter_token(&self, _gap: Duration) {}
    fn on_request_finished(&self, _reason: &FinishReason, _usage: &Usage, _elapsed: Duration) {}
    /// Prompt tokens looked up in the prefix cache, and how many were found.
    fn on_prefix_lookup(&self, _queried: usize, _hit: usize) {}
    /// Time one constrained sequence spent computing its next-token mask.
    fn on_grammar_mask(&self, _elapsed: Duration) {}
}

/// Counters and gauges, updated by the engine thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests with a choice in the running batch.
    pub running: AtomicU64,
    /// Requests submitted and not yet admitted (the queue limit counts these).
    pub waiting: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    /// Tokens run through prefill (prompts, and recomputation after preemption).
    pub prefill_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    pub last_batch_size: AtomicU64,
    pub requests_finished: AtomicU64,
    pub requests_cancelled: AtomicU64,
}

/// A plain copy of [`EngineStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub running: u64,
    pub waiting: u64,
    pub kv_blocks_used: u64,
    pub kv_blocks_total: u64,
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub prefill_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub last_batch_size: u64,
    pub requests_finished: u64,
    pub requests_cancelled: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            running: get(&self.running),
            waiting: get(&self.waiting),
            kv_blocks_used: get(&self.kv_blocks_used),
            kv_blocks_total: get(&self.kv_blocks_total),
            prefix_queried_tokens: get(&self.prefix_queried_tokens),
            prefix_hit_tokens: get(&self.prefix_hit_tokens),
            prefill_tokens: get(&self.prefill_tokens),
            generated_tokens: get(&self.generated_tokens),
            preemptions: get(&self.preemptions),
            steps: get(&self.steps),
            last_batch_size: get(&self.last_batch_size),
            requests_finished: get(&self.requests_finished),
            requests_cancelled: get(&self.requests_cancelled),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

pub(crate) fn set(gauge: &AtomicU64, n: usize) {
    gauge.store(n as u64, Ordering::Relaxed);
}
