//! Planning: which sequences run this step and with how many tokens, who is
//! admitted and who is preempted. Pure bookkeeping over the block manager;
//! it never touches the model, so it is tested against a fake runner.
//!
//! Policy, as vLLM's v1 scheduler: running sequences first, in admission
//! order, each getting its next token or the next chunk of its prompt within
//! the step's token budget; when blocks run out the newest running sequence
//! is preempted (its blocks freed, recomputed later); waiting sequences are
//! admitted first come, first served while budget, sequence slots and blocks
//! allow, reusing their longest cached prefix.

use std::collections::VecDeque;

use ember_model::sparse::SparseLayout;

use super::sequence::Sequence;
use crate::block_manager::SharedBlocks;
use crate::request::FinishReason;

#[derive(Debug, Clone)]
pub(crate) struct SchedulerConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    /// Under sparse attention with `--kv-retention visible`: the layout
    /// whose unseen blocks each sequence gives back as it advances.
    pub retire_unseen: Option<SparseLayout>,
}

/// One sequence's share of a step: `len` tokens from its `computed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    /// Index into `Planner::running`.
    pub running: usize,
    pub len: usize,
}

/// A sequence admitted in this step, for the scheduler's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub group: u64,
    pub index: usize,
    /// First admission (not a recomputation after preemption).
    pub first: bool,
    pub queried_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub items: Vec<Planned>,
    pub admitted: Vec<Admitted>,
    pub preempted: usize,
}

pub(crate) struct Planner {
    config: SchedulerConfig,
    block_size: usize,
    blocks: SharedBlocks,
    pub waiting: VecDeque<Sequence>,
    /// In admission order: the last is the first to be preempted.
    pub running: Vec<Sequence>,
}

impl Planner {
    pub fn retire_unseen(&self) -> Option<SparseLayout> {
        self.config.retire_unseen
    }

    pub fn new(config: SchedulerConfig, blocks: SharedBlocks) -> Self {
        let block_size = blocks.lock().block_size();
        Self {
            config,
            block_size,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub fn blocks(&self) -> &SharedBlocks {
        &self.blocks
    }

    /// Picks this step's tokens for every sequence, preempting or
    /// admitting. `may_start` says whether a waiting sequence may be
    /// admitted yet (later choices wait for the first to fill the cache).
    pub fn schedule(&mut self, may_start: impl Fn(&Sequence) -> bool) -> Plan {
        let bs = self.block_size;
        let mut budget = self.config.max_num_batched_tokens;
        let mut plan = Plan::default();
        let mut i = 0;
        'running: while i < self.running.len() {
            let seq = &self.running[i];
            let len = (seq.tokens.len() - seq.computed).min(budget);
            if len == 0 || seq.finished.is_some() {
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
                        plan.preempted += 1;
                        if victim == i {
                            break 'running;
                        }
                    }
                }
            }
            plan.items.push(Planned { running: i, len });
            budget -= len;
            i += 1;
        }
        if plan.preempted == 0 {
            self.admit(&mut plan, budget, may_start);
        }
        plan
    }

    /// Sends every running sequence back to wait for recomputation.
    pub fn preempt_all(&mut self) {
        while !self.running.is_empty() {
            self.preempt(self.running.len() - 1);
        }
    }

    /// Frees a running sequence's blocks and queues it, first, for
    /// recomputation; its output so far and its sampler state stay.
    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        seq.table = None;
        seq.hashes.clear();
        seq.computed = 0;
        seq.retired_upto = 0;
        self.waiting.push_front(seq);
    }

    fn admit(&mut self, plan: &mut Plan, mut budget: usize, may_start: impl Fn(&Sequence) -> bool) {
        let bs = self.block_size;
        let mut w = 0;
        while w < self.waiting.len() && budget > 0 && self.running.len() < self.config.max_num_seqs {
            let seq = &self.waiting[w];
            if !may_start(seq) {
                w += 1;
                continue;
            }
            // Reuse whole cached blocks, leaving at least the last token to
            // compute; a mean-pooled embedding computes every token.
            let max_blocks = match seq.pooling {
                Some(crate::request::Pooling::Mean) => 0,
                _ => (seq.tokens.len() - 1) / bs,
            };
            let mut table = self.blocks.table();
            let mut manager = self.blocks.lock();
            let matched = manager.match_prefix(&seq.tokens, &seq.global_spans, max_blocks);
            let cached = matched.len() * bs;
            let len = (seq.tokens.len() - cached).min(budget);
            let needed = (cached + len).div_ceil(bs) - matched.len();
            // A little headroom keeps running sequences from being preempted
            // by the next admission; a sequence alone in the engine needs
            // none, and demanding it could keep a request that fits the
            // pool only just from ever starting.
            let watermark = if self.running.is_empty() { 0 } else { manager.num_blocks() / 100 };
            if manager.num_available() < needed + watermark {
                drop(manager);
                // Dropping the table gives the matched blocks back.
                for &(b, _) in &matched {
                    table.push(b);
                }
                break;
            }
            let allocated = manager.allocate_n(needed);
            drop(manager);
            for &(b, _) in &matched {
                table.push(b);
            }
            let Some(mut seq) = self.waiting.remove(w) else { break };
            match allocated {
                Ok(ids) => ids.into_iter().for_each(|b| table.push(b)),
                Err(e) => {
                    // Checked just above under the same lock: a bug.
                    debug_assert!(false, "{e}");
                    seq.finished = Some(FinishReason::Error(format!("internal error in the engine: {e}")));
                    self.running.push(seq);
                    continue;
                }
            }
            plan.admitted.push(Admitted {
                group: seq.group,
                index: seq.index,
                first: seq.tokens.len() == seq.prompt_len,
                queried_tokens: seq.tokens.len(),
                cached_tokens: cached,
            });
            seq.table = Some(table);
            seq.hashes = matched.iter().map(|m| m.1).collect();
            seq.computed = cached;
            self.running.push(seq);
            plan.items.push(Planned {
                running: self.running.len() - 1,
                len,
            });
            budget -= len;
        }
    }
}
