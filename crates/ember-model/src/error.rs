//! The one error type of the model crate: every variant names the file and,
//! where there is one, the tensor or config field that was wrong.

use std::path::PathBuf;

/// Why a model could not be configured, loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: malformed JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: field `{field}` is malformed")]
    FieldType {
        path: PathBuf,
        field: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: field `{field}`: {reason}")]
    InvalidConfig {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },

    #[error("--rope-scaling: {0}")]
    InvalidRopeScaling(String),

    #[error("{path}: unsupported model_type `{model_type}` (supported: qwen3, qwen2, llama)")]
    UnknownModelType { path: PathBuf, model_type: String },

    #[error("{path}: not a readable safetensors file")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    #[error("{path}: invalid GGUF file")]
    Gguf {
        path: PathBuf,
        #[source]
        source: crate::gguf::GgufFormatError,
    },

    #[error("{path}: GGUF metadata `{key}`: {reason}")]
    GgufMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },

    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },

    #[error("{path}: tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("{path}: tensor `{tensor}` has unsupported dtype {dtype}")]
    UnsupportedTensorDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: tensor `{tensor}` data is {actual} bytes, expected {expected}")]
    TensorSize {
        path: PathBuf,
        tensor: String,
        expected: usize,
        actual: usize,
    },

    #[error("{path}: tensor `{tensor}`: {reason}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    #[error("{path}: no model.safetensors or model.safetensors.index.json")]
    NoWeights { path: PathBuf },

    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange { token: u32, vocab_size: usize },

    #[error("the {device} device does not support dtype {dtype}")]
    UnsupportedDtype { dtype: String, device: String },

    #[error("--quantize and --kv-cache-dtype f16 need the CPU fast path (device flex, dtype f32), not {device} with {dtype}")]
    NeedsCpuFastPath { device: String, dtype: String },

    #[error("in-situ quantization supports q8_0 and q4_0, not {0}")]
    UnsupportedQuantization(String),

    #[error("a sequence in the batch has no new tokens")]
    EmptySequence,

    #[error("sparse attention: {0}")]
    SparseLayout(#[from] crate::sparse::LayoutError),

    #[error("a block table covers {capacity} positions but the sequence has {tokens}")]
    BlockTableTooShort { tokens: usize, capacity: usize },

    #[error("block {block} is outside the KV pool ({num_blocks} blocks)")]
    BlockOutOfRange { block: u32, num_blocks: usize },

    #[error("the KV pool was lost by a failed step and must be rebuilt")]
    KvPoolLost,

    #[error("cache has {cache_layers} layers but the model has {model_layers}")]
    CacheMismatch {
        cache_layers: usize,
        model_layers: usize,
    },
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
