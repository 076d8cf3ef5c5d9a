//! `ember-model`: the network. Qwen3, and the Llama and Qwen2 variants that
//! share its code, implemented once in Burn and run on whatever `Device` the
//! caller picks (flex CPU, wgpu, CUDA).
//!
//! This crate knows no tokenizer, no HTTP and no async: it maps token ids and
//! a caller-owned paged KV pool to logits.

mod attention;
pub mod config;
pub mod cpu;
mod embedding;
pub mod error;
pub mod gguf;
mod kv_cache;
mod linear;
mod mlp;
mod model;
mod norm;
pub mod rope;
pub mod safetensors_source;
pub mod sparse;
pub mod weights;

pub use burn::tensor::{DType, Device, Tensor};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use kv_cache::{KvCache, KvPool};
pub use cpu::kv::KvDtype;
pub use model::{CausalLm, LoadOptions, LogitsMode, SequenceInput};
