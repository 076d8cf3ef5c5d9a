//! Continuous batching over a paged KV pool (DESIGN section 4).
//!
//! Each step: drop cancelled requests; give every running sequence its
//! tokens for this step (one to decode, or the next chunk of its prompt)
//! within the token budget, preempting the newest sequence when blocks run
//! out; admit waiting sequences while budget and blocks allow, reusing their
//! longest cached prefix; run one forward over all of them; sample; stream.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use ember_model::{CausalLm, KvPool, LogitsMode, SequenceInput, Tensor};
use tokio::sync::mpsc::UnboundedSender;

use crate::block_manager::{BlockManager, BlockTable, ROOT_HASH, SharedBlocks};
use crate::metrics::{self, EngineObserver, EngineStats, StepReport};
use crate::request::{FinishReason, GenerationEvent, Usage};
use crate::sampling::{LogitsProcessor, Sampler, TokenHistory};
use crate::stop::{StopCheck, StopMatcher};
use crate::tokenizer::{IncrementalDecoder, TextTokenizer};

#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
}

/// A request as the scheduler tracks it: its event channel and totals.
pub(crate) struct Group {
    pub tx: UnboundedSender<GenerationEvent>,
    pub unfinished: usize,
    pub usage: Usage,
    pub arrived: Instant,
    /// Choices after the first wait until the first has computed the
    /// prompt, so that they find its blocks in the prefix cache.
    pub leader_prefilled: bool,
    /// Still counted in `EngineStats::waiting` (no choice admitted yet); the
    /// handle counts a request there on submission.
    pub counted_waiting: bool,
}

/// One choice of a request.
pub(crate) struct Sequence {
    pub group: u64,
    pub index: usize,
    /// Prompt followed by the output so far.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub stop_ids: Arc<[u32]>,
    pub sampler: Sampler,
    pub history: TokenHistory,
    pub processor: Option<Box<dyn LogitsProcessor>>,
    pub decoder: Option<IncrementalDecoder<Arc<TextTokenizer>>>,
    pub stop: StopMatcher,
    /// Tokens whose keys and values are in the pool.
    computed: usize,
    /// Set while admitted; dropping it frees the blocks.
    table: Option<BlockTable>,
    /// Prefix-cache hashes of the table's first `hashes.len()` blocks, all full.
    hashes: Vec<u64>,
    admitted_at: u64,
    last_token_at: Option<Instant>,
    finished: Option<FinishReason>,
}

impl Sequence {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        group: u64,
        index: usize,
        prompt: Vec<u32>,
        max_tokens: usize,
        stop_ids: Arc<[u32]>,
        sampler: Sampler,
        processor: Option<Box<dyn LogitsProcessor>>,
        decoder: Option<IncrementalDecoder<Arc<TextTokenizer>>>,
        stop: StopMatcher,
    ) -> Self {
        Self {
            group,
            index,
            history: TokenHistory::new(&prompt),
            prompt_len: prompt.len(),
            tokens: prompt,
            max_tokens,
            stop_ids,
            sampler,
            processor,
            decoder,
            stop,
            computed: 0,
            table: None,
            hashes: Vec::new(),
            admitted_at: 0,
            last_token_at: None,
            finished: None,
        }
    }

    fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn block_ids(&self) -> &[u32] {
        self.table.as_ref().map_or(&[], BlockTable::ids)
    }
}

/// One sequence's share of a step: `len` tokens from `computed`.
#[derive(Debug, Clone, Copy)]
struct Planned {
    running: usize,
    len: usize,
}

pub(crate) struct Scheduler {
    model: CausalLm,
    pool: KvPool,
    blocks: SharedBlocks,
    config: SchedulerConfig,
    waiting: VecDeque<Sequence>,
    /// In admission order: the last is the first to be preempted.
    running: Vec<Sequence>,
    groups: HashMap<u64, Group>,
    stats: Arc<EngineStats>,
    observer: Option<Arc<dyn EngineObserver>>,
    clock: u64,
}

impl Scheduler {
    pub fn new(
        model: CausalLm,
        num_blocks: usize,
        block_size: usize,
        config: SchedulerConfig,
        stats: Arc<EngineStats>,
        observer: Option<Arc<dyn EngineObserver>>,
    ) -> Self {
        let pool = model.new_pool(num_blocks, block_size);
        metrics::set(&stats.kv_blocks_total, num_blocks);
        Self {
            model,
            pool,
            blocks: SharedBlocks::new(BlockManager::new(num_blocks, block_size)),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            groups: HashMap::new(),
            stats,
            observer,
            clock: 0,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    pub fn add(&mut self, id: u64, group: Group, sequences: Vec<Sequence>) {
        self.groups.insert(id, group);
        self.waiting.extend(sequences);
    }

    /// One scheduling step and forward pass.
    pub fn step(&mut self) {
        let started = Instant::now();
        self.drop_cancelled();
        // Cancelled running sequences leave before the step, freeing their blocks.
        self.reap();
        let plan = self.schedule();
        if !plan.is_empty() {
            match self.run_forward(&plan) {
                Ok(rows) => self.take_outputs(&plan, rows),
                Err(message) => self.isolate_failure(&plan, &message),
            }
        }
        self.reap();
        let report = self.report(&plan);
        metrics::add(&self.stats.steps, 1);
        if let Some(o) = &self.observer {
            o.on_step(&report, started.elapsed());
        }
    }

    fn report(&self, plan: &[Planned]) -> StepReport {
        let decode_tokens = plan.iter().filter(|p| p.len == 1).count();
        let (kv_blocks_used, kv_blocks_total) = {
            let blocks = self.blocks.lock();
            (blocks.num_used(), blocks.num_blocks())
        };
        let report = StepReport {
            batch_size: plan.len(),
            prefill_tokens: plan.iter().map(|p| p.len).sum::<usize>() - decode_tokens,
            decode_tokens,
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv_blocks_used,
            kv_blocks_total,
        };
        metrics::set(&self.stats.running, report.running);
        metrics::set(&self.stats.kv_blocks_used, report.kv_blocks_used);
        metrics::set(&self.stats.last_batch_size, report.batch_size);
        report
    }

    /// Removes every sequence whose caller dropped its stream.
    fn drop_cancelled(&mut self) {
        let gone: Vec<u64> = self.groups.iter().filter(|(_, g)| g.tx.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            for seq in self.running.iter_mut().chain(self.waiting.iter_mut()).filter(|s| s.group == id) {
                seq.finished = Some(FinishReason::Cancelled);
            }
        }
        // Waiting sequences have no blocks: drop them here; `reap` frees running ones.
        let groups = &mut self.groups;
        let stats = &self.stats;
        self.waiting.retain(|s| {
            if s.finished.is_none() {
                return true;
            }
            finish_in_group(groups, stats, s.group, 1, |_| {});
            false
        });
    }

    /// Picks this step's tokens for every sequence, preempting or admitting.
    fn schedule(&mut self) -> Vec<Planned> {
        let bs = self.pool.block_size();
        let mut budget = self.config.max_num_batched_tokens;
        let mut plan = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        'running: while i < self.running.len() {
            let seq = &self.running[i];
            let len = (seq.tokens.len() - seq.computed).min(budget);
            if len == 0 {
                i += 1;
                continue;
            }
            let needed = (seq.computed + len).div_ceil(bs);
            while self.running[i].block_ids().len() < needed {
                let allocated = self.blocks.lock().allocate();
                match allocated {
                    Some(b) => self.running[i].table.get_or_insert_with(|| self.blocks.table()).push(b),
                    None => {
                        let victim = self.running.len() - 1;
                        self.preempt(victim);
                        preempted = true;
                        if victim == i {
                            break 'running;
                        }
                    }
                }
            }
            plan.push(Planned { running: i, len });
            budget -= len;
            i += 1;
        }
        if !preempted {
            self.admit(&mut plan, &mut budget);
        }
        plan
    }

    /// Frees a running sequence's blocks and queues it, first, for
    /// recomputation; its output so far and its sampler state stay.
    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        seq.table = None;
        seq.hashes.clear();
        seq.computed = 0;
        metrics::add(&self.stats.preemptions, 1);
        self.waiting.push_front(seq);
    }

    fn admit(&mut self, plan: &mut Vec<Planned>, budget: &mut usize) {
        let bs = self.pool.block_size();
        let watermark = self.pool.num_blocks() / 100;
        let mut w = 0;
        while w < self.waiting.len() && *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let seq = &self.waiting[w];
            let may_start = seq.index == 0 || self.groups.get(&seq.group).is_some_and(|g| g.leader_prefilled);
            if !may_start {
                w += 1;
                continue;
            }
            // Reuse whole cached blocks, leaving at least the last token to compute.
            let max_blocks = (seq.tokens.len() - 1) / bs;
            let matched = self.blocks.lock().match_prefix(&seq.tokens, max_blocks);
            let mut table = self.blocks.table();
            for &(b, _) in &matched {
                table.push(b);
            }
            let cached = matched.len() * bs;
            let len = (seq.tokens.len() - cached).min(*budget);
            let needed = (cached + len).div_ceil(bs) - matched.len();
            let available = self.blocks.lock().num_available();
            if available < needed + watermark {
                // Dropping the table gives the matched blocks back.
                break;
            }
            let Some(mut seq) = self.waiting.remove(w) else { break };
            let first_admission = seq.tokens.len() == seq.prompt_len;
            for _ in 0..needed {
                let allocated = self.blocks.lock().allocate();
                if let Some(b) = allocated {
                    table.push(b);
                }
            }
            seq.table = Some(table);
            seq.hashes = matched.iter().map(|m| m.1).collect();
            seq.computed = cached;
            self.clock += 1;
            seq.admitted_at = self.clock;
            if let Some(g) = self.groups.get_mut(&seq.group) {
                if first_admission && seq.index == 0 {
                    g.usage.cached_tokens = cached;
                }
                if std::mem::take(&mut g.counted_waiting) {
                    self.stats.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            metrics::add(&self.stats.prefix_queried_tokens, seq.tokens.len());
            metrics::add(&self.stats.prefix_hit_tokens, cached);
            if let Some(o) = &self.observer {
                o.on_prefix_lookup(seq.tokens.len(), cached);
            }
            self.running.push(seq);
            plan.push(Planned {
                running: self.running.len() - 1,
                len,
            });
            *budget -= len;
        }
    }

    /// One forward over the plan; the next-token logits of every sequence
    /// that reached its end, keyed by plan position. Panics inside Burn are
    /// caught so that one bad step cannot take the engine thread down.
    fn run_forward(&mut self, plan: &[Planned]) -> Result<HashMap<usize, Vec<f32>>, String> {
        // Only sequences whose last token gets computed sample this step.
        let sampling: Vec<usize> = (0..plan.len())
            .filter(|&k| {
                let s = &self.running[plan[k].running];
                s.computed + plan[k].len == s.tokens.len()
            })
            .collect();
        // Their grammar masks are computed on a helper thread while the
        // forward pass runs; the processors are lent to it for the step.
        let mut lent: Vec<(usize, Box<dyn LogitsProcessor>)> = sampling
            .iter()
            .filter_map(|&k| {
                let r = plan[k].running;
                self.running[r].processor.take().map(|p| (r, p))
            })
            .collect();
        let running = &self.running;
        let inputs: Vec<SequenceInput<'_>> = plan
            .iter()
            .map(|p| {
                let s = &running[p.running];
                SequenceInput {
                    tokens: &s.tokens[s.computed..s.computed + p.len],
                    past_len: s.computed,
                    block_table: s.block_ids(),
                }
            })
            .collect();
        let (model, pool, observer) = (&self.model, &mut self.pool, self.observer.as_deref());
        let logits = std::thread::scope(|scope| {
            let helper =
                (!lent.is_empty()).then(|| scope.spawn(|| prepare_masks(&mut lent, observer)));
            let logits = catch_unwind(AssertUnwindSafe(|| {
                model.forward(pool, &inputs, LogitsMode::Last)
            }));
            if let Some(helper) = helper {
                // `prepare_masks` catches panics; a failed mask shows up at sampling.
                let _ = helper.join();
            }
            logits
        });
        drop(inputs);
        for (r, processor) in lent {
            self.running[r].processor = Some(processor);
        }
        let logits = logits
            .map_err(|panic| panic_message(&panic))?
            .map_err(|e| e.to_string())?;
        if sampling.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<Tensor<2>> = sampling.iter().map(|&k| logits[k].clone()).collect();
        let flat: Vec<f32> = catch_unwind(AssertUnwindSafe(|| Tensor::cat(rows, 0).into_data()))
            .map_err(|panic| panic_message(&panic))?
            .try_into_vec::<f32>()
            .map_err(|e| format!("cannot read logits: {e:?}"))?;
        let vocab = flat.len() / sampling.len();
        Ok(sampling
            .into_iter()
            .zip(flat.chunks_exact(vocab))
            .map(|(k, row)| (k, row.to_vec()))
            .collect())
    }

    /// Advances every planned sequence past its computed tokens, caches its
    /// newly full blocks, and samples where logits came back.
    fn take_outputs(&mut self, plan: &[Planned], mut rows: HashMap<usize, Vec<f32>>) {
        let bs = self.pool.block_size();
        for (k, p) in plan.iter().enumerate() {
            let seq = &mut self.running[p.running];
            let decoding = p.len == 1 && seq.computed >= seq.prompt_len;
            seq.computed += p.len;
            if !decoding {
                metrics::add(&self.stats.prefill_tokens, p.len);
            }
            while seq.hashes.len() < seq.computed / bs {
                let b = seq.hashes.len();
                let parent = seq.hashes.last().copied().unwrap_or(ROOT_HASH);
                let block = seq.block_ids()[b];
                let hash = self.blocks.lock().register_full(block, parent, &seq.tokens[b * bs..(b + 1) * bs]);
                seq.hashes.push(hash);
            }
            let Some(mut row) = rows.remove(&k) else { continue };
            let Some(group) = self.groups.get_mut(&seq.group) else {
                seq.finished = Some(FinishReason::Cancelled);
                continue;
            };
            if seq.index == 0 {
                group.leader_prefilled = true;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| sample_and_emit(seq, group, &mut row, self.observer.as_deref())));
            let finish = match outcome {
                Ok(Ok(finish)) => finish,
                Ok(Err(message)) => Some(FinishReason::Error(message)),
                Err(panic) => Some(FinishReason::Error(panic_message(&panic))),
            };
            metrics::add(&self.stats.generated_tokens, 1);
            if finish.is_some() {
                seq.finished = finish;
            }
        }
    }

    /// A failed batch is rerun one sequence at a time, so only the sequence
    /// that fails on its own gets the error.
    fn isolate_failure(&mut self, plan: &[Planned], message: &str) {
        if !self.pool.is_intact() {
            self.rebuild_pool();
            return;
        }
        if plan.len() == 1 {
            self.running[plan[0].running].finished = Some(FinishReason::Error(message.to_owned()));
            return;
        }
        for &p in plan {
            let solo = [p];
            match self.run_forward(&solo) {
                Ok(rows) => self.take_outputs(&solo, rows),
                Err(e) => {
                    if !self.pool.is_intact() {
                        self.rebuild_pool();
                        return;
                    }
                    self.running[p.running].finished = Some(FinishReason::Error(e));
                }
            }
        }
    }

    /// Last resort after a step panicked outside the per-sequence guards:
    /// every request ends with an error (instead of the engine thread
    /// dying and every stream stopping without a word), and the engine
    /// carries on with an empty queue.
    pub fn fail_all(&mut self, message: &str) {
        let reason = FinishReason::Error(message.to_owned());
        for seq in std::mem::take(&mut self.waiting) {
            if let Some(group) = self.groups.get(&seq.group) {
                let _ = group.tx.send(GenerationEvent::Finished {
                    index: seq.index,
                    reason: reason.clone(),
                });
            }
            finish_in_group(&mut self.groups, &self.stats, seq.group, 0, |_| {});
        }
        for seq in &mut self.running {
            seq.finished = Some(reason.clone());
        }
        self.reap();
        if !self.pool.is_intact() {
            self.pool = self.model.new_pool(self.pool.num_blocks(), self.pool.block_size());
            self.blocks.lock().clear_cache();
        }
    }

    /// The pool's contents were lost inside a failed write: start over with
    /// a fresh pool; every running sequence is recomputed.
    fn rebuild_pool(&mut self) {
        self.pool = self.model.new_pool(self.pool.num_blocks(), self.pool.block_size());
        while !self.running.is_empty() {
            self.preempt(self.running.len() - 1);
        }
        self.blocks.lock().clear_cache();
    }

    /// Removes finished sequences, frees their blocks, and closes requests
    /// whose every choice is done.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let Some(reason) = self.running[i].finished.clone() else {
                i += 1;
                continue;
            };
            // Dropping the sequence (at the end of this iteration) frees its blocks.
            let seq = self.running.remove(i);
            if let Some(group) = self.groups.get_mut(&seq.group) {
                group.leader_prefilled = true;
                if reason != FinishReason::Cancelled {
                    let _ = group.tx.send(GenerationEvent::Finished {
                        index: seq.index,
                        reason: reason.clone(),
                    });
                }
            }
            let cancelled = usize::from(reason == FinishReason::Cancelled);
            let observer = self.observer.as_deref();
            finish_in_group(&mut self.groups, &self.stats, seq.group, cancelled, |group| {
                if let Some(o) = observer {
                    o.on_request_finished(&reason, &group.usage, group.arrived.elapsed());
                }
            });
        }
    }
}

/// Counts one of the group's choices finished; when it was the last, the
/// group leaves, `on_finish` runs and `Done` goes out, in that order, so a
/// caller that saw `Done` sees the request in every count and metric.
fn finish_in_group(
    groups: &mut HashMap<u64, Group>,
    stats: &EngineStats,
    id: u64,
    cancelled: usize,
    on_finish: impl FnOnce(&Group),
) {
    let Some(group) = groups.get_mut(&id) else { return };
    group.unfinished = group.unfinished.saturating_sub(1);
    if group.unfinished > 0 {
        return;
    }
    let Some(group) = groups.remove(&id) else { return };
    if group.counted_waiting {
        stats.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    if group.tx.is_closed() || cancelled > 0 {
        metrics::add(&stats.requests_cancelled, 1);
    } else {
        metrics::add(&stats.requests_finished, 1);
    }
    on_finish(&group);
    let _ = group.tx.send(GenerationEvent::Done { usage: group.usage });
}

/// Computes the next-token mask of each lent processor; a panic leaves that
/// processor to compute (and fail) again when it samples.
fn prepare_masks(
    lent: &mut [(usize, Box<dyn LogitsProcessor>)],
    observer: Option<&dyn EngineObserver>,
) {
    for (_, processor) in lent.iter_mut() {
        if let Ok(Some(elapsed)) = catch_unwind(AssertUnwindSafe(|| processor.prepare()))
            && let Some(o) = observer
        {
            o.on_grammar_mask(elapsed);
        }
    }
}

/// Samples one token for `seq`, streams what it adds, and says whether the
/// choice is now finished.
fn sample_and_emit(
    seq: &mut Sequence,
    group: &mut Group,
    row: &mut [f32],
    observer: Option<&dyn EngineObserver>,
) -> Result<Option<FinishReason>, String> {
    let sampled = seq
        .sampler
        .sample(row, &seq.history, seq.processor.as_deref_mut())
        .map_err(|e| e.to_string())?;
    let token = sampled.token;
    seq.tokens.push(token);
    seq.history.push_output(token);
    group.usage.completion_tokens += 1;
    let now = Instant::now();
    if let Some(o) = observer {
        match seq.last_token_at {
            None => o.on_first_token(now.duration_since(group.arrived)),
            Some(last) => o.on_inter_token(now.duration_since(last)),
        }
    }
    seq.last_token_at = Some(now);

    let complete = match seq.processor.as_mut() {
        Some(p) => p.accept(token)?,
        None => false,
    };
    let mut finish = None;
    let mut text = String::new();
    if seq.stop_ids.contains(&token) {
        finish = Some(FinishReason::Stop);
    } else {
        let piece = match seq.decoder.as_mut() {
            Some(d) => d.push(token).map_err(|e| e.to_string())?,
            None => String::new(),
        };
        match seq.stop.push(&piece) {
            StopCheck::Continue(t) => text = t,
            StopCheck::Stopped(t) => {
                // Whatever followed the stop string is dropped with it.
                let _ = group.tx.send(GenerationEvent::Delta {
                    index: seq.index,
                    text: t,
                    token_ids: vec![token],
                    logprobs: sampled.logprob.into_iter().collect(),
                });
                return Ok(Some(FinishReason::Stop));
            }
        }
    }
    if finish.is_none() && complete {
        finish = Some(FinishReason::Stop);
    }
    if finish.is_none() && seq.output_len() >= seq.max_tokens {
        finish = Some(FinishReason::Length);
    }
    if finish.is_some() {
        // Flush what was held back for an unfinished character or a
        // possible stop string.
        let tail = match seq.decoder.as_ref() {
            Some(d) => d.finish().map_err(|e| e.to_string())?,
            None => String::new(),
        };
        match seq.stop.push(&tail) {
            StopCheck::Continue(t) => {
                text.push_str(&t);
                text.push_str(&seq.stop.finish());
            }
            StopCheck::Stopped(t) => text.push_str(&t),
        }
    }
    let _ = group.tx.send(GenerationEvent::Delta {
        index: seq.index,
        text,
        token_ids: vec![token],
        logprobs: sampled.logprob.into_iter().collect(),
    });
    Ok(finish)
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error in the engine: {detail}")
}

