//! `ember-engine`: turns requests into tokens on top of `ember-model`:
//! tokenizer and chat templates, sampling, and the continuous-batching
//! scheduler over a paged KV cache behind an async `EngineHandle`. It knows
//! nothing of HTTP.

pub mod block_manager;
pub mod chat_template;
pub mod default_model;
pub mod engine;
pub mod error;
pub mod generation_defaults;
pub mod gguf_tokenizer;
pub mod important;
pub mod loaded_model;
pub mod metrics;
mod output;
pub mod pooling;
pub mod request;
pub mod sampling;
mod scheduler;
pub mod stop;
pub mod stream;
pub mod structured;
pub mod text_side;
pub mod tokenizer;

pub use chat_template::{ChatTemplate, RenderOptions};
pub use engine::{EngineConfig, EngineHandle, EngineInfo, KvCacheMemory, KvRetention};
pub use stream::{Choice, Completion, GenerationStream};
pub use error::{EngineError, Result};
pub use generation_defaults::GenerationDefaults;
pub use important::MarkerPolicy;
pub use loaded_model::{EncodedPrompt, LoadedModel, ModelInfo};
pub use metrics::{EngineObserver, StatsSnapshot, StepReport};
pub use request::{EmbeddingRequest, FinishReason, GenerationEvent, GenerationRequest, Pooling, Usage};
pub use sampling::{LogitsProcessor, LogitsProcessorFactory, SamplingParams, TokenLogprob};
pub use structured::{CompiledGrammar, Grammar, GrammarCompiler};
pub use text_side::TextSide;
pub use tokenizer::TextTokenizer;
