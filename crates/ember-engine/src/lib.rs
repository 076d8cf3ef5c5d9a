//! `ember-engine`: turns requests into tokens on top of `ember-model`:
//! tokenizer, generation settings of a model directory, sampling and the
//! generation loop. It knows nothing of HTTP.

pub mod error;
pub mod generate;
pub mod model_dir;
pub mod sampler;
pub mod tokenizer;

pub use error::{EngineError, Result};
pub use generate::{FinishReason, GenerationOutput, GenerationParams, generate};
pub use model_dir::LoadedModel;
pub use tokenizer::TextTokenizer;
