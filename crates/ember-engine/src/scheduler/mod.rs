//! Continuous batching over a paged KV pool, in three pieces as vLLM v1
//! splits its engine core: the `planner` decides who runs with how many
//! tokens (admission, chunked prefill, preemption), the `runner` executes
//! the forward pass, and this module samples, sends each request's tokens
//! and accounts for requests. Detokenization and stop strings happen on the
//! stream's side (`crate::output`), off the engine thread.
//!
//! Each step: drop cancelled and stopped choices; plan; run one forward
//! over the plan; sample; send tokens; free finished sequences.

mod planner;
mod runner;
mod sequence;

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use ember_model::SequenceInput;

use crate::block_manager::{BlockManager, ROOT_HASH, SharedBlocks};
use crate::metrics::{self, EngineObserver, EngineStats, StepReport};
use crate::output::EngineEvent;
use crate::request::{FinishReason, Pooling};
use crate::sampling::LogitsProcessor;

pub(crate) use planner::SchedulerConfig;
use planner::{Plan, Planned, Planner};
pub(crate) use runner::{CausalLmRunner, ModelRunner, StepOutputs, panic_message};
pub(crate) use sequence::{Group, Sequence, SequenceStart, StopSignals};

pub(crate) struct Scheduler<R: ModelRunner> {
    runner: R,
    planner: Planner,
    groups: HashMap<u64, Group>,
    stats: Arc<EngineStats>,
    observer: Option<Arc<dyn EngineObserver>>,
}

impl<R: ModelRunner> Scheduler<R> {
    pub fn new(
        runner: R,
        config: SchedulerConfig,
        stats: Arc<EngineStats>,
        observer: Option<Arc<dyn EngineObserver>>,
    ) -> Self {
        let num_blocks = runner.num_blocks();
        let mut manager = BlockManager::new(num_blocks, runner.block_size());
        if config.retire_unseen.is_some() {
            manager.reserve_null_block();
        }
        let blocks = SharedBlocks::new(manager);
        metrics::set(&stats.kv_blocks_total, num_blocks);
        Self {
            runner,
            planner: Planner::new(config, blocks),
            groups: HashMap::new(),
            stats,
            observer,
        }
    }

    pub fn has_work(&self) -> bool {
        !self.planner.running.is_empty() || !self.planner.waiting.is_empty()
    }

    pub fn add(&mut self, id: u64, group: Group, sequences: Vec<Sequence>) {
        self.groups.insert(id, group);
        self.planner.waiting.extend(sequences);
    }

    /// One scheduling step and forward pass. Returns false when it planned
    /// nothing, so the caller waits for news instead of spinning.
    pub fn step(&mut self) -> bool {
        let started = Instant::now();
        self.drop_cancelled();
        // Cancelled running sequences leave before the step, freeing their blocks.
        self.reap();
        let groups = &self.groups;
        let plan = self.planner.schedule(|seq| {
            seq.index == 0 || groups.get(&seq.group).is_some_and(|g| g.leader_prefilled)
        });
        self.account_admissions(&plan);
        if !plan.items.is_empty() {
            match self.run_forward(&plan.items) {
                Ok(rows) => self.take_outputs(&plan.items, rows),
                Err(message) => self.isolate_failure(&plan.items, &message),
            }
        }
        self.reap();
        let report = self.report(&plan);
        metrics::add(&self.stats.steps, 1);
        if let Some(o) = &self.observer {
            o.on_step(&report, started.elapsed());
        }
        !plan.items.is_empty() || plan.preempted > 0
    }

    fn account_admissions(&mut self, plan: &Plan) {
        metrics::add(&self.stats.preemptions, plan.preempted);
        for a in &plan.admitted {
            if let Some(g) = self.groups.get_mut(&a.group) {
                if a.first && a.index == 0 {
                    g.usage.cached_tokens = a.cached_tokens;
                }
                if std::mem::take(&mut g.counted_waiting) {
                    self.stats.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            metrics::add(&self.stats.prefix_queried_tokens, a.queried_tokens);
            metrics::add(&self.stats.prefix_hit_tokens, a.cached_tokens);
            if let Some(o) = &self.observer {
                o.on_prefix_lookup(a.queried_tokens, a.cached_tokens);
            }
        }
    }

    /// Requests, not sequences, as vLLM counts them: a request is running
    /// while any of its choices is, waiting until its first admission.
    fn report(&self, plan: &Plan) -> StepReport {
        let decode_tokens = plan.items.iter().filter(|p| p.len == 1).count();
        let (kv_blocks_used, kv_blocks_total) = {
            let blocks = self.planner.blocks().lock();
            (blocks.num_used(), blocks.num_blocks())
        };
        let running: HashSet<u64> = self.planner.running.iter().map(|s| s.group).collect();
        // Preempted requests wait again; new ones are counted from `submit` on.
        let preempted = self
            .groups
            .iter()
            .filter(|(id, g)| !g.counted_waiting && !running.contains(id))
            .count();
        let report = StepReport {
            batch_size: plan.items.len(),
            prefill_tokens: plan.items.iter().map(|p| p.len).sum::<usize>() - decode_tokens,
            decode_tokens,
            running: running.len(),
            waiting: self.stats.waiting.load(std::sync::atomic::Ordering::Relaxed) as usize + preempted,
            kv_blocks_used,
            kv_blocks_total,
        };
        metrics::set(&self.stats.running, report.running);
        metrics::set(&self.stats.kv_blocks_used, report.kv_blocks_used);
        metrics::set(&self.stats.last_batch_size, report.batch_size);
        report
    }

    /// Ends every sequence whose caller dropped its stream (cancelled) or
    /// whose stream matched a stop string (stopped).
    fn drop_cancelled(&mut self) {
        let groups = &mut self.groups;
        let gone = |s: &Sequence| -> Option<FinishReason> {
            let g = groups.get(&s.group)?;
            if g.tx.is_closed() {
                Some(FinishReason::Cancelled)
            } else if g.stops.is_stopped(s.index) {
                Some(FinishReason::Stop)
            } else {
                None
            }
        };
        for seq in self.planner.running.iter_mut().chain(self.planner.waiting.iter_mut()) {
            if seq.finished.is_none() {
                seq.finished = gone(seq);
            }
        }
        // Waiting sequences have no blocks: drop them here; `reap` frees running ones.
        let stats = &self.stats;
        self.planner.waiting.retain(|s| {
            let Some(reason) = &s.finished else { return true };
            finish_in_group(groups, stats, s.group, reason, |_| {});
            false
        });
    }

    /// One forward over the plan; the next-token logits of every sequence
    /// that reached its end, and the pooled hidden states of embedding
    /// sequences, keyed by plan position.
    fn run_forward(&mut self, plan: &[Planned]) -> Result<StepRows, String> {
        let running = &mut self.planner.running;
        // Only sequences whose last token gets computed sample this step.
        let sampling: Vec<usize> = (0..plan.len())
            .filter(|&k| {
                let s = &running[plan[k].running];
                s.pooling.is_none() && s.computed + plan[k].len == s.tokens.len()
            })
            .collect();
        let pooling: Vec<(usize, Pooling)> = (0..plan.len())
            .filter_map(|k| running[plan[k].running].pools_chunk(plan[k].len).map(|p| (k, p)))
            .collect();
        // Their grammar masks are computed on a helper thread while the
        // forward pass runs; the processors are lent to it for the step.
        let mut lent: Vec<(usize, Box<dyn LogitsProcessor>)> = sampling
            .iter()
            .filter_map(|&k| {
                let r = plan[k].running;
                running[r].processor.take().map(|p| (r, p))
            })
            .collect();
        let inputs: Vec<SequenceInput<'_>> = plan
            .iter()
            .map(|p| {
                let s = &running[p.running];
                SequenceInput {
                    tokens: &s.tokens[s.computed..s.computed + p.len],
                    past_len: s.computed,
                    block_table: s.block_ids(),
                    global_spans: &s.global_spans,
                }
            })
            .collect();
        let (runner, observer) = (&mut self.runner, self.observer.as_deref());
        let rows = std::thread::scope(|scope| {
            let helper = (!lent.is_empty()).then(|| scope.spawn(|| prepare_masks(&mut lent, observer)));
            let rows = runner.forward(&inputs, &sampling, &pooling);
            if let Some(helper) = helper {
                // `prepare_masks` catches panics; a failed mask shows up at sampling.
                let _ = helper.join();
            }
            rows
        });
        drop(inputs);
        for (r, processor) in lent {
            running[r].processor = Some(processor);
        }
        let StepOutputs { logits, pooled } = rows?;
        Ok(StepRows {
            logits: sampling.into_iter().zip(logits).collect(),
            pooled: pooling.into_iter().map(|(k, _)| k).zip(pooled).collect(),
        })
    }

    /// Advances every planned sequence past its computed tokens, caches its
    /// newly full blocks, and samples where logits came back.
    fn take_outputs(&mut self, plan: &[Planned], rows: StepRows) {
        let StepRows { logits: mut rows, mut pooled } = rows;
        let bs = self.runner.block_size();
        let blocks = self.planner.blocks().clone();
        let retire = self.planner.retire_unseen();
        for (k, p) in plan.iter().enumerate() {
            let seq = &mut self.planner.running[p.running];
            let decoding = p.len == 1 && seq.computed >= seq.prompt_len;
            seq.computed += p.len;
            if !decoding {
                metrics::add(&self.stats.prefill_tokens, p.len);
                log_prefill_progress(seq, p.len, &blocks);
            }
            while seq.hashes.len() < seq.computed / bs {
                let b = seq.hashes.len();
                let parent = seq.hashes.last().copied().unwrap_or(ROOT_HASH);
                let block = seq.block_ids()[b];
                let hash = blocks.lock().register_full(block, parent, b, &seq.tokens[b * bs..(b + 1) * bs], &seq.global_spans);
                seq.hashes.push(hash);
            }
            // After the hashes: a retired block stays findable by its hash.
            if let Some(layout) = &retire {
                seq.retire_unseen(layout, bs);
            }
            if let Some(part) = pooled.remove(&k) {
                pool_chunk(seq, part, p.len, &self.groups);
                continue;
            }
            let Some(mut row) = rows.remove(&k) else { continue };
            let Some(group) = self.groups.get_mut(&seq.group) else {
                seq.finished = Some(FinishReason::Cancelled);
                continue;
            };
            if seq.index == 0 {
                group.leader_prefilled = true;
            }
            let observer = self.observer.as_deref();
            let outcome = catch_unwind(AssertUnwindSafe(|| sample_and_send(seq, group, &mut row, observer)));
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
        if !self.runner.is_intact() {
            self.rebuild_pool();
            return;
        }
        if plan.len() == 1 {
            self.planner.running[plan[0].running].finished = Some(FinishReason::Error(message.to_owned()));
            return;
        }
        for &p in plan {
            let solo = [p];
            match self.run_forward(&solo) {
                Ok(rows) => self.take_outputs(&solo, rows),
                Err(e) => {
                    if !self.runner.is_intact() {
                        self.rebuild_pool();
                        return;
                    }
                    self.planner.running[p.running].finished = Some(FinishReason::Error(e));
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
        for seq in std::mem::take(&mut self.planner.waiting) {
            if let Some(group) = self.groups.get(&seq.group) {
                let _ = group.tx.send(EngineEvent::Finished {
                    index: seq.index,
                    reason: reason.clone(),
                });
            }
            finish_in_group(&mut self.groups, &self.stats, seq.group, &reason, |_| {});
        }
        for seq in &mut self.planner.running {
            seq.finished = Some(reason.clone());
        }
        self.reap();
        if !self.runner.is_intact() {
            self.runner.reset_pool();
            self.planner.blocks().lock().clear_cache();
        }
    }

    /// The pool's contents were lost inside a failed write: start over with
    /// a fresh pool; every running sequence is recomputed.
    fn rebuild_pool(&mut self) {
        self.runner.reset_pool();
        self.planner.preempt_all();
        self.planner.blocks().lock().clear_cache();
    }

    /// Removes finished sequences, frees their blocks, and closes requests
    /// whose every choice is done.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.planner.running.len() {
            let Some(reason) = self.planner.running[i].finished.clone() else {
                i += 1;
                continue;
            };
            // Dropping the sequence (at the end of this iteration) frees its blocks.
            let seq = self.planner.running.remove(i);
            if let Some(group) = self.groups.get_mut(&seq.group) {
                group.leader_prefilled = true;
                if reason != FinishReason::Cancelled {
                    let _ = group.tx.send(EngineEvent::Finished {
                        index: seq.index,
                        reason: reason.clone(),
                    });
                }
            }
            let observer = self.observer.as_deref();
            finish_in_group(&mut self.groups, &self.stats, seq.group, &reason, |group| {
                if let Some(o) = observer {
                    o.on_request_finished(&reason, &group.usage, group.arrived.elapsed());
                }
            });
        }
    }
}

/// What `run_forward` hands `take_outputs`, keyed by plan position.
struct StepRows {
    logits: HashMap<usize, Vec<f32>>,
    pooled: HashMap<usize, Vec<f32>>,
}

/// Adds an embedding sequence's chunk of pooled hidden states (`part`, for
/// the `len` tokens just computed); after its last chunk, sends the
/// normalized vector and finishes the sequence.
fn pool_chunk(seq: &mut Sequence, part: Vec<f32>, len: usize, groups: &HashMap<u64, Group>) {
    let first = seq.computed == len;
    match seq.pooling {
        Some(Pooling::Mean) if !first && seq.pooled.len() == part.len() => {
            seq.pooled.iter_mut().zip(&part).for_each(|(sum, x)| *sum += x);
        }
        _ => seq.pooled = part,
    }
    if seq.computed < seq.tokens.len() {
        return;
    }
    let mut vector = std::mem::take(&mut seq.pooled);
    if seq.pooling == Some(Pooling::Mean) {
        let count = seq.tokens.len() as f32;
        vector.iter_mut().for_each(|x| *x /= count);
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    if let Some(group) = groups.get(&seq.group) {
        let _ = group.tx.send(EngineEvent::Embedding { index: seq.index, vector });
    }
    seq.finished = Some(FinishReason::Stop);
}

/// Counts one of the group's choices finished; when it was the last, the
/// group leaves, `on_finish` runs and `Done` goes out, in that order, so a
/// caller that saw `Done` sees the request in every count and metric.
fn finish_in_group(
    groups: &mut HashMap<u64, Group>,
    stats: &EngineStats,
    id: u64,
    reason: &FinishReason,
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
    if group.tx.is_closed() || *reason == FinishReason::Cancelled {
        metrics::add(&stats.requests_cancelled, 1);
    } else {
        metrics::add(&stats.requests_finished, 1);
    }
    on_finish(&group);
    let _ = group.tx.send(EngineEvent::Done { usage: group.usage });
}

/// A long prompt's prefill takes minutes on a CPU: its progress goes to the
/// log every this many tokens, and when it completes.
const PREFILL_LOG_EVERY: usize = 8192;

fn log_prefill_progress(seq: &Sequence, chunk: usize, blocks: &SharedBlocks) {
    let (done, total) = (seq.computed.min(seq.prompt_len), seq.prompt_len);
    let crossed = done / PREFILL_LOG_EVERY != (done - chunk.min(done)) / PREFILL_LOG_EVERY;
    if total >= PREFILL_LOG_EVERY && (crossed || done == total) {
        let blocks_used = blocks.lock().num_used();
        tracing::info!(request = seq.group, choice = seq.index, done, total, blocks_used, "prefill");
    }
}

/// Computes the next-token mask of each lent processor; a panic leaves that
/// processor to compute (and fail) again when it samples.
fn prepare_masks(lent: &mut [(usize, Box<dyn LogitsProcessor>)], observer: Option<&dyn EngineObserver>) {
    for (_, processor) in lent.iter_mut() {
        if let Ok(Some(elapsed)) = catch_unwind(AssertUnwindSafe(|| processor.prepare()))
            && let Some(o) = observer
        {
            o.on_grammar_mask(elapsed);
        }
    }
}

/// Samples one token for `seq`, sends it to the request's stream, and says
/// whether the choice is now finished (stop id, complete grammar, length).
fn sample_and_send(
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
    let stop_id = seq.stop_ids.contains(&token);
    let _ = group.tx.send(EngineEvent::Token {
        index: seq.index,
        token,
        logprob: sampled.logprob,
        stop_id,
    });
    Ok(if stop_id || complete {
        Some(FinishReason::Stop)
    } else if seq.output_len() >= seq.max_tokens {
        Some(FinishReason::Length)
    } else {
        None
    })
}

#[cfg(test)]
mod tests;
