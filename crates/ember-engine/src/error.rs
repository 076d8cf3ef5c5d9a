//! The engine's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ember_model::ModelError),

    #[error("{path}: cannot load tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("{path}: cannot build the tokenizer from GGUF metadata")]
    GgufTokenizer {
        path: PathBuf,
        #[source]
        source: crate::gguf_tokenizer::GgufTokenizerError,
    },

    #[error("{path}: bad chat template")]
    Template {
        path: PathBuf,
        #[source]
        source: crate::chat_template::ChatTemplateError,
    },

    #[error("tokenization failed: {0}")]
    Encode(String),

    #[error("the prompt is empty")]
    EmptyPrompt,

    #[error("invalid sampling parameter `{field}`: {reason}")]
    InvalidParameter { field: &'static str, reason: String },

    #[error("the logits processor failed: {0}")]
    LogitsProcessor(String),

    /// A grammar (JSON schema, tool-call grammar) that cannot be compiled or
    /// is over the compile limits; the message names what is wrong.
    #[error("invalid grammar: {0}")]
    Grammar(String),

    #[error("the request queue is full ({limit} waiting); retry later")]
    QueueFull { limit: usize },

    #[error(
        "this model's maximum context length is {max_model_len} tokens, but {prompt} prompt tokens \
         and {max_tokens} output tokens were requested"
    )]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        max_model_len: usize,
    },

    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),

    #[error("the engine has stopped")]
    EngineStopped,
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
