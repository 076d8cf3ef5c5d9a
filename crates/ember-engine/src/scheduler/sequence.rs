//! What the scheduler tracks: requests (groups of choices) and sequences.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use ember_model::sparse::SparseLayout;

use crate::block_manager::BlockTable;
use crate::output::EngineEvent;
use crate::request::{FinishReason, Pooling, Usage};
use crate::sampling::{LogitsProcessor, Sampler, TokenHistory};

/// Choices whose consumer has seen them end (a stop string matched in the
/// text, which the engine thread never decodes): the engine stops them at
/// its next step.
#[derive(Debug)]
pub(crate) struct StopSignals(Vec<AtomicBool>);

impl StopSignals {
    pub fn new(n: usize) -> Self {
        Self((0..n).map(|_| AtomicBool::new(false)).collect())
    }

    pub fn stop(&self, index: usize) {
        if let Some(flag) = self.0.get(index) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_stopped(&self, index: usize) -> bool {
        self.0.get(index).is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// A request as the scheduler tracks it: its event channel and totals.
pub(crate) struct Group {
    pub tx: UnboundedSender<EngineEvent>,
    pub stops: Arc<StopSignals>,
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
    /// Prompt positions every later query sees (sorted, disjoint).
    pub global_spans: Arc<[Range<usize>]>,
    pub max_tokens: usize,
    pub stop_ids: Arc<[u32]>,
    pub sampler: Sampler,
    pub history: TokenHistory,
    pub processor: Option<Box<dyn LogitsProcessor>>,
    /// Tokens whose keys and values are in the pool.
    pub computed: usize,
    /// Set while admitted; dropping it frees the blocks.
    pub table: Option<BlockTable>,
    /// Prefix-cache hashes of the table's first `hashes.len()` blocks, all full.
    pub hashes: Vec<u64>,
    /// Table blocks before this one have been looked at for retirement.
    pub retired_upto: usize,
    pub last_token_at: Option<Instant>,
    pub finished: Option<FinishReason>,
    /// Set for an embedding request, which samples nothing: its prompt's
    /// hidden states are pooled into `pooled` as its chunks are computed.
    pub pooling: Option<Pooling>,
    /// The sum of the hidden states so far (mean), or the last one (last).
    pub pooled: Vec<f32>,
}

/// What a sequence starts from; one per choice of a request.
pub(crate) struct SequenceStart {
    pub group: u64,
    pub index: usize,
    pub prompt: Vec<u32>,
    pub global_spans: Arc<[Range<usize>]>,
    pub history: TokenHistory,
    pub max_tokens: usize,
    pub stop_ids: Arc<[u32]>,
    pub sampler: Sampler,
    pub processor: Option<Box<dyn LogitsProcessor>>,
    pub pooling: Option<Pooling>,
}

impl Sequence {
    pub fn new(start: SequenceStart) -> Self {
        Self {
            group: start.group,
            index: start.index,
            prompt_len: start.prompt.len(),
            tokens: start.prompt,
            global_spans: start.global_spans,
            history: start.history,
            max_tokens: start.max_tokens,
            stop_ids: start.stop_ids,
            sampler: start.sampler,
            processor: start.processor,
            computed: 0,
            table: None,
            hashes: Vec::new(),
            retired_upto: 0,
            last_token_at: None,
            finished: None,
            pooling: start.pooling,
            pooled: Vec::new(),
        }
    }

    /// Which hidden states a step computing `len` more tokens must pool:
    /// every chunk's for a mean, the final chunk's for the last token.
    pub fn pools_chunk(&self, len: usize) -> Option<Pooling> {
        match self.pooling? {
            Pooling::Mean => Some(Pooling::Mean),
            Pooling::Last => (self.computed + len == self.tokens.len()).then_some(Pooling::Last),
        }
    }

    pub fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    pub fn block_ids(&self) -> &[u32] {
        self.table.as_ref().map_or(&[], BlockTable::ids)
    }

    /// Gives back the blocks no query from `computed` on can see under
    /// `layout`; the window only moves forward, so each block is looked at
    /// until it is retired or found to stay (sinks, strides, spans).
    pub fn retire_unseen(&mut self, layout: &SparseLayout, block_size: usize) {
        let Some(table) = self.table.as_mut() else { return };
        let behind = layout.window_start(self.computed) / block_size;
        while self.retired_upto < behind {
            if !layout.kv_block_needed(&self.global_spans, self.computed, self.retired_upto, block_size) {
                table.retire(self.retired_upto);
            }
            self.retired_upto += 1;
        }
    }
}
