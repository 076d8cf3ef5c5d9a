//! `ember-engine`: turns requests into tokens on top of `ember-model`:
//! tokenizer, generation settings of a model directory, sampling and the
//! generation loop. It knows nothing of HTTP.

pub mod chat_template;
pub mod default_model;
pub mod error;
pub mod generate;
pub mod gguf_tokenizer;
pub mod loaded_model;
pub mod sampler;
pub mod tokenizer;

pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerationOutput, GenerationParams, generate};
pub use chat_template::{ChatTemplate, RenderOptions};
pub use loaded_model::LoadedModel;
pub use tokenizer::TextTokenizer;
