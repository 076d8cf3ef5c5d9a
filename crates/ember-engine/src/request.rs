//! What a caller hands the engine and what it gets back.

use std::ops::Range;
use std::sync::Arc;

use crate::sampling::{LogitsProcessorFactory, SamplingParams, TokenLogprob};

/// One generation request: a tokenized prompt and how to continue it.
#[derive(Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    /// Output tokens per choice; `None` fills the model's window.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    /// Strings that end a choice; matched across tokens, never emitted.
    pub stop: Vec<String>,
    /// Ids that end a choice besides the model's end-of-sequence ids.
    pub stop_token_ids: Vec<u32>,
    /// Keep going past the model's end-of-sequence ids.
    pub ignore_eos: bool,
    /// Independent choices sharing the prompt's cached blocks.
    pub n: usize,
    /// Constrained decoding, applied to every choice.
    pub logits_processor: Option<Arc<dyn LogitsProcessorFactory>>,
    /// Prompt positions every later query sees under sparse attention
    /// (`[IMPORTANT]` spans); ignored by dense attention.
    pub global_spans: Vec<Range<usize>>,
}

impl GenerationRequest {
    pub fn new(prompt: Vec<u32>) -> Self {
        Self {
            prompt,
            max_tokens: None,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            n: 1,
            logits_processor: None,
            global_spans: Vec::new(),
        }
    }
}

impl std::fmt::Debug for GenerationRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationRequest")
            .field("prompt_len", &self.prompt.len())
            .field("max_tokens", &self.max_tokens)
            .field("sampling", &self.sampling)
            .field("stop", &self.stop)
            .field("n", &self.n)
            .field("global_spans", &self.global_spans)
            .field("constrained", &self.logits_processor.is_some())
            .finish()
    }
}

/// How an embedding request's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The last token's (Qwen3-Embedding, decoder embedders generally).
    Last,
    /// The mean over the prompt's tokens (sentence-transformers' default).
    Mean,
}

/// One embedding request: a tokenized input whose final hidden states are
/// pooled into one L2-normalized vector. It runs as a prefill-only
/// sequence, batched with generation, and its stream yields `Embedding`,
/// `Finished` and `Done`.
#[derive(Debug, Clone)]
pub struct EmbeddingRequest {
    pub prompt: Vec<u32>,
    pub pooling: Pooling,
}

/// Why a choice ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id, a stop id, a stop string, or a complete constrained output.
    Stop,
    /// `max_tokens` or the model's window was reached.
    Length,
    /// The engine gave up on this request (the caller went away, or shutdown).
    Cancelled,
    /// This request failed; others in the batch were unaffected.
    Error(String),
}

impl FinishReason {
    /// The OpenAI spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::Error(_) => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Summed over all choices.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache instead of computed.
    pub cached_tokens: usize,
}

/// What a request's stream yields, in order: deltas of each choice (choices
/// interleave when `n > 1`), a `Finished` per choice, then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    Delta {
        index: usize,
        /// New text; empty while characters or a possible stop string are held back.
        text: String,
        token_ids: Vec<u32>,
        /// One per token id when the request asked for logprobs.
        logprobs: Vec<TokenLogprob>,
    },
    Finished {
        index: usize,
        reason: FinishReason,
    },
    /// An embedding request's vector, L2-normalized.
    Embedding {
        index: usize,
        vector: Vec<f32>,
    },
    Done {
        usage: Usage,
    },
}
