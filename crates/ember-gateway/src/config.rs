//! `ember serve --config file.toml`: every setting of the server, in three
//! tables. Unknown keys are errors (a typo must not be silently ignored).
//! Command-line flags override the file; see docs/CONFIG.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ember_engine::{EngineConfig, EngineError, EngineObserver, GenerationDefaults};
use ember_model::rope::RopeScalingOverride;
use serde::Deserialize;

use crate::state::Limits;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub engine: EngineSection,
    #[serde(default)]
    pub attention: AttentionSection,
    /// Backends: the engine in this process (`kind = "local"`) and
    /// OpenAI-compatible servers (`kind = "openai"`).
    #[serde(default)]
    pub backends: Vec<BackendSection>,
    /// Served model names and the backends that answer them.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub routing: RoutingSection,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The model of `[model]`, loaded in this process.
    Local,
    /// An OpenAI-compatible server.
    #[default]
    Openai,
}

/// `[[backends]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub name: String,
    #[serde(default)]
    pub kind: BackendKind,
    /// The API root of an `openai` backend, e.g. `http://10.0.0.5:8000/v1`.
    pub base_url: Option<String>,
    /// The environment variable holding its API key (the key itself never
    /// goes in the file or the logs).
    pub api_key_env: Option<String>,
    /// The backend's own name for the routed model; the route's name when absent.
    pub model: Option<String>,
    pub max_concurrency: Option<usize>,
    /// Share under the `weighted` strategy.
    #[serde(default = "one")]
    pub weight: u32,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// HTTP/2 without TLS (h2c, prior knowledge).
    #[serde(default)]
    pub http2: bool,
    #[serde(default = "connect_timeout")]
    pub connect_timeout_secs: f64,
    /// Until the status line; 0: none.
    #[serde(default = "first_byte_timeout")]
    pub first_byte_timeout_secs: f64,
    /// The whole request; 0: none (the server's request timeout still applies).
    #[serde(default)]
    pub timeout_secs: f64,
    /// Active health check interval; 0: off.
    #[serde(default = "health_check")]
    pub health_check_secs: f64,
}

fn one() -> u32 {
    1
}
fn connect_timeout() -> f64 {
    5.0
}
fn first_byte_timeout() -> f64 {
    600.0
}
fn health_check() -> f64 {
    10.0
}

/// `[[routes]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The name clients send as `model`.
    pub model: String,
    /// Names of `[[backends]]`.
    pub backends: Vec<String>,
    #[serde(default)]
    pub strategy: crate::backend::router::Strategy,
    /// More names clients may send for this model.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `[routing]`: retries and the circuit breaker, for every route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Other backends tried when one fails before its first byte.
    pub retries: usize,
    /// Before the first retry; doubles with each further one.
    pub backoff_ms: u64,
    /// Consecutive failures that put a backend in cooldown.
    pub allowed_fails: u32,
    pub cooldown_secs: f64,
}

impl Default for RoutingSection {
    fn default() -> Self {
        let p = crate::backend::router::Policy::default();
        Self {
            retries: p.retries,
            backoff_ms: p.backoff.as_millis() as u64,
            allowed_fails: p.allowed_fails,
            cooldown_secs: p.cooldown.as_secs_f64(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub host: String,
    pub port: u16,
    /// Bearer keys; empty leaves the API open.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// 0 means no timeout.
    pub request_timeout_secs: u64,
    /// How long in-flight streams may run after SIGINT/SIGTERM.
    pub shutdown_timeout_secs: u64,
    /// HTTP worker threads; 0 is one per core.
    pub workers: usize,
    /// Responses API responses kept for `previous_response_id`; 0 keeps none.
    pub responses_store_size: usize,
    /// How long a stored response is kept.
    pub responses_store_ttl_secs: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            api_keys: Vec::new(),
            max_body_bytes: 4 << 20,
            max_messages: 1024,
            request_timeout_secs: 600,
            shutdown_timeout_secs: 30,
            workers: 0,
            responses_store_size: 1024,
            responses_store_ttl_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A Hugging Face directory or a `.gguf`; the default model when absent.
    pub path: Option<PathBuf>,
    /// The name clients send as `model`; the file or directory name when absent.
    pub served_model_name: Option<String>,
    /// `flex`, `wgpu` or `cuda`.
    pub device: Option<String>,
    /// `f32`, `f16` or `bf16`.
    pub dtype: Option<String>,
    /// `generate` or `embed`; from the model's files when absent.
    pub task: Option<String>,
    /// Threads of the CPU kernels; the physical cores when absent.
    pub threads: Option<usize>,
    /// `f32` or `f16`: KV cache element type on the CPU fast path.
    pub kv_cache_dtype: Option<String>,
    /// `q8_0` or `q4_0`: quantize float weights at load (CPU fast path).
    pub quantize: Option<String>,
    /// Replaces the checkpoint's RoPE scaling, e.g.
    /// `{ rope_type = "yarn", factor = 4.0, original_max_position_embeddings = 32768 }`.
    pub rope_scaling: Option<RopeScalingOverride>,
}

/// `[attention]`: dense, or the block-sparse layout and its parameters
/// (the `--attention` and `--sparse-*` flags).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionSection {
    /// `dense` or `sparse`.
    pub mode: Option<String>,
    pub block: Option<usize>,
    pub local: Option<usize>,
    pub sinks: Option<usize>,
    pub stride: Option<usize>,
    pub dense_below: Option<usize>,
    /// Keep `[IMPORTANT]` markers in the prompt text (sparse only).
    pub keep_markers: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// `"2GiB"` or a fraction of available memory such as `"0.2"`.
    pub kv_cache_memory: Option<String>,
    pub block_size: Option<usize>,
    pub max_num_batched_tokens: Option<usize>,
    pub max_num_seqs: Option<usize>,
    pub max_queue_len: Option<usize>,
    pub max_model_len: Option<usize>,
    /// `all` or `visible` (sparse attention only): which KV blocks a
    /// running sequence keeps.
    pub kv_retention: Option<String>,
    /// Sampling defaults laid over the model's `generation_config.json`,
    /// e.g. `override_generation_config = { temperature = 0.2 }`.
    pub override_generation_config: Option<GenerationDefaults>,
}

impl ServerSection {
    /// The request limits these settings give.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_messages: self.max_messages,
            request_timeout: (self.request_timeout_secs > 0).then(|| Duration::from_secs(self.request_timeout_secs)),
            responses_store_size: self.responses_store_size,
            responses_store_ttl: Duration::from_secs(self.responses_store_ttl_secs),
        }
    }
}

impl EngineSection {
    /// The engine configuration: these settings over `EngineConfig::default()`.
    pub fn engine_config(&self, observer: Option<Arc<dyn EngineObserver>>) -> Result<EngineConfig, EngineError> {
        let d = EngineConfig::default();
        Ok(EngineConfig {
            block_size: self.block_size.unwrap_or(d.block_size),
            kv_cache_memory: match &self.kv_cache_memory {
                Some(text) => text.parse()?,
                None => d.kv_cache_memory,
            },
            max_num_batched_tokens: self.max_num_batched_tokens.unwrap_or(d.max_num_batched_tokens),
            max_num_seqs: self.max_num_seqs.unwrap_or(d.max_num_seqs),
            max_queue_len: self.max_queue_len.unwrap_or(d.max_queue_len),
            max_model_len: self.max_model_len,
            generation_overrides: self.override_generation_config.unwrap_or_default(),
            kv_retention: match &self.kv_retention {
                Some(text) => text.parse()?,
                None => d.kv_retention,
            },
            observer,
        })
    }
}

impl ServeConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_config_parses() -> Result<(), ConfigError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).map_err(|source| ConfigError::Io { path: dir.clone(), source })? {
            let path = entry.map_err(|source| ConfigError::Io { path: dir.clone(), source })?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                ServeConfig::from_file(&path)?;
                seen += 1;
            }
        }
        assert!(seen >= 2, "configs/ has example files");
        Ok(())
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors_naming_them() {
        let path = Path::new("test.toml");
        let typo = ServeConfig::from_toml("[server]\nprot = 80\n", path);
        assert!(typo.as_ref().is_err_and(|e| e.to_string().contains("prot")), "{typo:?}");
        let wrong = ServeConfig::from_toml("[server]\nport = \"eighty\"\n", path);
        assert!(wrong.is_err());
        let overrides = ServeConfig::from_toml("[engine]\noverride_generation_config = { temperature = 0.5 }\n", path);
        assert_eq!(
            overrides.ok().and_then(|c| c.engine.override_generation_config).and_then(|g| g.temperature),
            Some(0.5)
        );
        let typo = ServeConfig::from_toml("[engine]\noverride_generation_config = { temprature = 0.5 }\n", path);
        assert!(typo.is_err());
        let empty = ServeConfig::from_toml("", path);
        assert_eq!(empty.ok(), Some(ServeConfig::default()));
    }

    #[test]
    fn rope_scaling_is_checked_when_the_config_is_read() {
        let path = Path::new("test.toml");
        let yarn = ServeConfig::from_toml(
            "[model]\nrope_scaling = { rope_type = \"yarn\", factor = 4, original_max_position_embeddings = 32768 }\n",
            path,
        );
        let window = yarn.ok().and_then(|c| c.model.rope_scaling).and_then(|o| o.resolve(40_960).ok());
        assert_eq!(window.map(|s| s.context_window(40_960)), Some(131_072));
        let missing = ServeConfig::from_toml("[model]\nrope_scaling = { rope_type = \"yarn\" }\n", path);
        assert!(missing.is_err_and(|e| format!("{e:#}").contains("factor")));
    }
}
