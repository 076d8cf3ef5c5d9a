//! The engine's public face: `EngineHandle::start` moves the model onto its
//! own thread, where the scheduler runs steps for as long as there is work;
//! `submit` validates a request on the caller's thread and returns a stream
//! of its events. The handle is `Send + Sync + Clone`; the engine thread ends
//! when every handle is dropped and the last request is done.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::unbounded_channel;

use ember_model::sparse::SparseLayout;

use crate::error::{EngineError, Result};
use crate::generation_defaults::GenerationDefaults;
use crate::important;
use crate::loaded_model::{LoadedModel, ModelInfo};
use crate::metrics::{EngineObserver, EngineStats, StatsSnapshot};
use crate::output::OutputProcessor;
use crate::request::{EmbeddingRequest, GenerationRequest, Usage};
use crate::sampling::{Sampler, SamplingParams, TokenHistory};
use crate::scheduler::{CausalLmRunner, Group, Scheduler, SchedulerConfig, Sequence, SequenceStart, StopSignals};
use crate::stream::GenerationStream;

/// The most choices one request may ask for.
pub const MAX_N: usize = 16;

/// How much memory the KV pool gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KvCacheMemory {
    Bytes(u64),
    /// Of the memory available (`MemAvailable`) once the model is loaded.
    /// On a GPU device this is host memory: give `Bytes` there.
    /// Either way the pool is allocated up front, and never made larger than
    /// `max_num_seqs` full-length sequences need.
    FractionOfAvailable(f64),
    /// Room for this many tokens.
    Tokens(usize),
}

impl std::str::FromStr for KvCacheMemory {
    type Err = EngineError;

    /// `0.2` is a fraction of available memory; `512MiB`, `2G`, `1000000` are bytes.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: String| EngineError::InvalidConfig(format!("kv_cache_memory {text:?}: {why}"));
        let t = text.trim();
        if t.contains('.') {
            let f: f64 = t.parse().map_err(|_| bad("not a fraction like 0.2 nor a size like 2GiB".into()))?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad("a fraction must be in (0, 1]".into()));
            }
            return Ok(Self::FractionOfAvailable(f));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| bad("not a fraction like 0.2 nor a size like 2GiB".into()))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            other => return Err(bad(format!("unknown unit {other:?}"))),
        };
        Ok(Self::Bytes(number.saturating_mul(scale)))
    }
}

#[derive(Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    pub kv_cache_memory: KvCacheMemory,
    /// Tokens one step may compute (decode tokens plus prefill chunks); long
    /// prompts are prefilled in chunks of at most this.
    pub max_num_batched_tokens: usize,
    /// Sequences one step may run.
    pub max_num_seqs: usize,
    /// Requests that may wait for admission before `submit` says `QueueFull`.
    pub max_queue_len: usize,
    /// Caps the model's own window (prompt + output).
    pub max_model_len: Option<usize>,
    /// Laid over the model's own sampling defaults (`generation_config.json`).
    pub generation_overrides: GenerationDefaults,
    /// Which KV blocks a sequence keeps while it runs.
    pub kv_retention: KvRetention,
    pub observer: Option<Arc<dyn EngineObserver>>,
}

/// Which KV blocks a running sequence keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvRetention {
    /// Every block until the sequence ends (what dense attention needs).
    #[default]
    All,
    /// Under sparse attention, blocks no later query can see (outside the
    /// sinks, strided blocks, global spans and the window) go back to the
    /// pool as the sequence advances, so a long generation holds a bounded
    /// number of blocks.
    Visible,
}

impl std::str::FromStr for KvRetention {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "all" => Ok(Self::All),
            "visible" => Ok(Self::Visible),
            other => Err(EngineError::InvalidConfig(format!("kv_retention {other:?}: expected \"all\" or \"visible\""))),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            kv_cache_memory: KvCacheMemory::FractionOfAvailable(0.2),
            // CPU prefill runs a few hundred tokens/s: bigger chunks would
            // stall running streams for seconds.
            max_num_batched_tokens: 512,
            max_num_seqs: 128,
            max_queue_len: 512,
            max_model_len: None,
            generation_overrides: GenerationDefaults::default(),
            kv_retention: KvRetention::All,
            observer: None,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("block_size", &self.block_size)
            .field("kv_cache_memory", &self.kv_cache_memory)
            .field("max_num_batched_tokens", &self.max_num_batched_tokens)
            .field("max_num_seqs", &self.max_num_seqs)
            .field("max_queue_len", &self.max_queue_len)
            .field("kv_retention", &self.kv_retention)
            .field("max_model_len", &self.max_model_len)
            .field("generation_overrides", &self.generation_overrides)
            .finish()
    }
}

/// What the engine settled on at start, for the start-up report.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_cache_bytes: u64,
    /// Prompt + output limit of one request.
    pub max_model_len: usize,
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_queue_len: usize,
    /// Which code computes the model (the CPU fast path and its settings).
    pub compute: String,
}

impl std::fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KV cache {:.1} MiB: {} blocks x {} tokens ({} tokens); max_model_len {}, \
             max_num_batched_tokens {}, max_num_seqs {}, queue {}; {}",
            self.kv_cache_bytes as f64 / (1024.0 * 1024.0),
            self.num_blocks,
            self.block_size,
            self.num_blocks * self.block_size,
            self.max_model_len,
            self.max_num_batched_tokens,
            self.max_num_seqs,
            self.max_queue_len,
            self.compute,
        )
    }
}

struct Incoming {
    id: u64,
    group: Group,
    sequences: Vec<Sequence>,
}

struct Shared {
    requests: Mutex<Sender<Incoming>>,
    stats: Arc<EngineStats>,
    info: EngineInfo,
    model: ModelInfo,
    next_id: AtomicU64,
    /// The layout whose unseen blocks sequences give back, if they do.
    retire_unseen: Option<SparseLayout>,
}

/// The largest `len <= max` for which `fits` holds (`fits` is monotone,
/// true up to some length), or 0.
fn longest_fitting(max: usize, fits: impl Fn(usize) -> bool) -> usize {
    if fits(max) {
        return max;
    }
    let (mut low, mut high) = (0, max);
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if fits(mid) { low = mid } else { high = mid }
    }
    low
}

/// A cheap, cloneable way to submit requests to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// Sizes the KV pool, moves the model onto the engine thread and starts it.
    pub fn start(loaded: LoadedModel, config: EngineConfig) -> Result<Self> {
        let LoadedModel { model, info: mut model_info } = loaded;
        model_info.generation_defaults = model_info.generation_defaults.overlay(config.generation_overrides.validated()?);
        if config.block_size == 0 || config.max_num_batched_tokens == 0 || config.max_num_seqs == 0 {
            return Err(EngineError::InvalidConfig(
                "block_size, max_num_batched_tokens and max_num_seqs must be positive".into(),
            ));
        }
        if let Some(sparse) = model.options().sparse {
            sparse.validate(config.block_size).map_err(|e| EngineError::InvalidConfig(e.to_string()))?;
        }
        let retire_unseen = match (config.kv_retention, model.options().sparse) {
            (KvRetention::All, _) => None,
            (KvRetention::Visible, Some(layout)) => Some(layout),
            (KvRetention::Visible, None) => {
                return Err(EngineError::InvalidConfig(
                    "kv_retention visible frees blocks sparse attention no longer reads: it needs --attention sparse".into(),
                ));
            }
        };
        let bytes_per_block = model.kv_bytes_per_block(config.block_size) as u64;
        let budget = match config.kv_cache_memory {
            KvCacheMemory::Bytes(b) => b,
            KvCacheMemory::Tokens(t) => (t.div_ceil(config.block_size) as u64) * bytes_per_block,
            KvCacheMemory::FractionOfAvailable(f) => (available_memory()? as f64 * f.clamp(0.0, 1.0)) as u64,
        };
        // The model's window (stretched by its RoPE scaling); a longer
        // --max-model-len would run positions the model was never set up for,
        // so it is refused as vLLM refuses it.
        let model_window = model.config().context_window();
        if let Some(asked) = config.max_model_len
            && asked > model_window
        {
            return Err(EngineError::InvalidConfig(format!(
                "max_model_len {asked} exceeds the model's window of {model_window} tokens \
                 (max_position_embeddings stretched by its RoPE scaling); --rope-scaling extends it"
            )));
        }
        // More blocks than max_num_seqs full windows could never be used.
        let window = config.max_model_len.unwrap_or(model_window);
        let useful_blocks = config.max_num_seqs.saturating_mul(window.div_ceil(config.block_size));
        let num_blocks = ((budget / bytes_per_block) as usize).min(useful_blocks);
        if num_blocks == 0 {
            return Err(EngineError::InvalidConfig(format!(
                "a KV cache of {budget} bytes holds no block of {bytes_per_block} bytes"
            )));
        }
        let max_model_len = match &retire_unseen {
            // One sequence holds every block of its length.
            None => window.min(num_blocks * config.block_size),
            // One sequence holds a bounded set (less the null block).
            Some(layout) => longest_fitting(window, |len| {
                layout.max_kv_blocks_held(len, config.max_num_batched_tokens, config.block_size) < num_blocks
            }),
        };
        let info = EngineInfo {
            num_blocks,
            block_size: config.block_size,
            kv_cache_bytes: num_blocks as u64 * bytes_per_block,
            max_model_len,
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_num_seqs: config.max_num_seqs,
            max_queue_len: config.max_queue_len,
            compute: model.compute_summary(),
        };
        let stats = Arc::new(EngineStats::default());
        let scheduler = Scheduler::new(
            CausalLmRunner::new(model, num_blocks, config.block_size),
            SchedulerConfig {
                max_num_batched_tokens: config.max_num_batched_tokens,
                max_num_seqs: config.max_num_seqs,
                retire_unseen,
            },
            stats.clone(),
            config.observer.clone(),
        );
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("ember-engine".into())
            .spawn(move || engine_loop(scheduler, rx))
            .map_err(|e| EngineError::InvalidConfig(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                requests: Mutex::new(tx),
                stats,
                info,
                model: model_info,
                next_id: AtomicU64::new(1),
                retire_unseen,
            }),
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.shared.info
    }

    /// Tokenizer, chat template and stop ids of the served model.
    pub fn model(&self) -> &ModelInfo {
        &self.shared.model
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Queues a request. Everything that can be checked before it runs is
    /// checked here, so a bad request never reaches the batch.
    pub fn submit(&self, mut request: GenerationRequest) -> Result<GenerationStream> {
        request.global_spans = important::normalize(&request.global_spans, request.prompt.len());
        let max_tokens = self.validate(&request)?;
        let shared = &self.shared;
        let waiting = shared.stats.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting as usize >= shared.info.max_queue_len {
            shared.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::QueueFull {
                limit: shared.info.max_queue_len,
            });
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let seed = request.sampling.seed.unwrap_or_else(rand::random);
        let mut stop_ids = request.stop_token_ids.clone();
        if !request.ignore_eos {
            stop_ids.extend(&shared.model.eos_token_ids);
        }
        let stop_ids: Arc<[u32]> = stop_ids.into();
        // Built once and shared by the choices: it sorts the prompt.
        let history = TokenHistory::new(&request.prompt);
        let global_spans: Arc<[Range<usize>]> = request.global_spans.as_slice().into();
        let signals = Arc::new(StopSignals::new(request.n));
        let sequences = (0..request.n)
            .map(|index| {
                Sequence::new(SequenceStart {
                    group: id,
                    index,
                    prompt: request.prompt.clone(),
                    global_spans: global_spans.clone(),
                    history: history.clone(),
                    max_tokens,
                    stop_ids: stop_ids.clone(),
                    sampler: Sampler::new(request.sampling.clone(), seed.wrapping_add(index as u64)),
                    processor: request.logits_processor.as_ref().map(|f| f.create()),
                    pooling: None,
                })
            })
            .collect();
        let output = OutputProcessor::new(request.n, shared.model.tokenizer.as_ref(), &request.stop, signals.clone());
        self.enqueue(id, sequences, signals, output)
    }

    /// Queues an embedding request: its prompt is prefilled like any other,
    /// batched with the running requests, and its hidden states pooled.
    pub fn embed(&self, request: EmbeddingRequest) -> Result<GenerationStream> {
        let info = &self.shared.info;
        if request.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = self.shared.model.config.vocab_size;
        if let Some(&token) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParameter {
                field: "input",
                reason: format!("token id {token} is outside the vocabulary (size {vocab})"),
            });
        }
        if request.prompt.len() > info.max_model_len {
            return Err(EngineError::ContextLength {
                prompt: request.prompt.len(),
                max_tokens: 0,
                max_model_len: info.max_model_len,
            });
        }
        let shared = &self.shared;
        let waiting = shared.stats.waiting.fetch_add(1, Ordering::Relaxed);
        if waiting as usize >= info.max_queue_len {
            shared.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::QueueFull { limit: info.max_queue_len });
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let sequence = Sequence::new(SequenceStart {
            group: id,
            index: 0,
            history: TokenHistory::new(&request.prompt),
            prompt: request.prompt,
            global_spans: Arc::from([]),
            max_tokens: 0,
            stop_ids: Arc::from([]),
            sampler: Sampler::new(SamplingParams::default(), 0),
            processor: None,
            pooling: Some(request.pooling),
        });
        let signals = Arc::new(StopSignals::new(1));
        let output = OutputProcessor::new(1, None, &[], signals.clone());
        self.enqueue(id, vec![sequence], signals, output)
    }

    /// Hands a request's sequences to the engine thread (already counted
    /// as waiting) and returns its stream.
    fn enqueue(&self, id: u64, sequences: Vec<Sequence>, signals: Arc<StopSignals>, output: OutputProcessor) -> Result<GenerationStream> {
        let shared = &self.shared;
        let prompt_tokens = sequences.first().map_or(0, |s| s.prompt_len);
        let (tx, rx) = unbounded_channel();
        let group = Group {
            tx,
            stops: signals,
            unfinished: sequences.len(),
            usage: Usage {
                prompt_tokens,
                ..Usage::default()
            },
            arrived: Instant::now(),
            leader_prefilled: false,
            counted_waiting: true,
        };
        let sent = shared
            .requests
            .lock()
            .map_err(|_| EngineError::EngineStopped)?
            .send(Incoming { id, group, sequences });
        if sent.is_err() {
            shared.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::EngineStopped);
        }
        Ok(GenerationStream::new(rx, output, prompt_tokens))
    }

    /// Checks the request; returns its output limit per choice.
    fn validate(&self, request: &GenerationRequest) -> Result<usize> {
        let info = &self.shared.info;
        let vocab = self.shared.model.config.vocab_size;
        if request.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if let Some(&token) = request.prompt.iter().chain(&request.stop_token_ids).find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidParameter {
                field: "prompt",
                reason: format!("token id {token} is outside the vocabulary (size {vocab})"),
            });
        }
        request.sampling.validate()?;
        if request.sampling.top_logprobs > 0 && !request.sampling.logprobs {
            return Err(EngineError::InvalidParameter {
                field: "top_logprobs",
                reason: "needs logprobs".into(),
            });
        }
        if request.n == 0 || request.n > MAX_N.min(info.max_num_seqs) {
            return Err(EngineError::InvalidParameter {
                field: "n",
                reason: format!("{} is not in 1..={}", request.n, MAX_N.min(info.max_num_seqs)),
            });
        }
        let prompt = request.prompt.len();
        let room = info.max_model_len.saturating_sub(prompt);
        let max_tokens = match request.max_tokens {
            Some(0) => {
                return Err(EngineError::InvalidParameter {
                    field: "max_tokens",
                    reason: "must be at least 1".into(),
                });
            }
            Some(m) => m,
            None => room,
        };
        if room == 0 || max_tokens > room {
            return Err(EngineError::ContextLength {
                prompt,
                max_tokens,
                max_model_len: info.max_model_len,
            });
        }
        // Blocks holding global spans are kept on top of the bounded set.
        if let Some(layout) = &self.shared.retire_unseen {
            let bs = info.block_size;
            // Normalized by `submit`: sorted, disjoint, inside the prompt.
            let span_blocks: usize = request
                .global_spans
                .iter()
                .map(|s| (s.end - 1) / bs - s.start / bs + 1)
                .sum();
            let held = layout.max_kv_blocks_held(prompt + max_tokens, info.max_num_batched_tokens, bs) + span_blocks;
            if held >= info.num_blocks {
                return Err(EngineError::InvalidParameter {
                    field: "prompt",
                    reason: format!(
                        "its [IMPORTANT] spans need {span_blocks} KV blocks kept to the end, more than the cache \
                         holds beside the window ({} blocks)",
                        info.num_blocks
                    ),
                });
            }
        }
        Ok(max_tokens)
    }
}

/// How long a step that could plan nothing waits before looking again
/// (for a cancellation, which arrives without a message).
const STALLED_WAIT: Duration = Duration::from_millis(20);

/// Steps while there is work; blocks for requests when idle, and waits
/// rather than spins when a step could plan nothing.
fn engine_loop(mut scheduler: Scheduler<CausalLmRunner>, requests: Receiver<Incoming>) {
    let mut open = true;
    let mut progressed = true;
    loop {
        if !scheduler.has_work() {
            if !open {
                return;
            }
            match requests.recv() {
                Ok(r) => scheduler.add(r.id, r.group, r.sequences),
                Err(_) => return,
            }
        } else if !progressed && open {
            match requests.recv_timeout(STALLED_WAIT) {
                Ok(r) => scheduler.add(r.id, r.group, r.sequences),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        } else if !progressed {
            std::thread::sleep(STALLED_WAIT);
        }
        while open {
            match requests.try_recv() {
                Ok(r) => scheduler.add(r.id, r.group, r.sequences),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        // Model and sampling failures are caught per sequence inside the
        // step; this catches a bug anywhere else in it.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scheduler.step())) {
            Ok(p) => progressed = p,
            Err(panic) => {
                scheduler.fail_all(&crate::scheduler::panic_message(&panic));
                progressed = true;
            }
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| EngineError::InvalidConfig(format!("cannot read /proc/meminfo to size the KV cache ({e}); give its size in bytes")))?;
    text.lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| EngineError::InvalidConfig("no MemAvailable in /proc/meminfo; give the KV cache size in bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_memory_parses_sizes_and_fractions() -> Result<()> {
        assert_eq!("0.25".parse::<KvCacheMemory>()?, KvCacheMemory::FractionOfAvailable(0.25));
        assert_eq!("2GiB".parse::<KvCacheMemory>()?, KvCacheMemory::Bytes(2 << 30));
        assert_eq!("512M".parse::<KvCacheMemory>()?, KvCacheMemory::Bytes(512_000_000));
        assert_eq!("4096".parse::<KvCacheMemory>()?, KvCacheMemory::Bytes(4096));
        for bad in ["1.5", "x", "3 parsecs", "0.0", ""] {
            assert!(bad.parse::<KvCacheMemory>().is_err(), "{bad}");
        }
        Ok(())
    }
}
