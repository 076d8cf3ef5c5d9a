//! Hugging Face `config.json`, parsed raw and then validated into [`ModelConfig`].
//!
//! Two layouts exist in real checkpoints: the classic one (top-level `rope_theta`
//! and an optional `rope_scaling` object) and the transformers-5 one (a
//! `rope_parameters` object holding `rope_theta` and the scaling kind). Both
//! become the same [`RopeConfig`].

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::rope::{RopeConfig, RopeScaling};

/// The three architectures one implementation serves; they differ in two switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Per-head RMSNorm on q and k before RoPE; biases only if `attention_bias`.
    Qwen3,
    /// Bias on q, k and v (never on o); no q/k norm.
    Qwen2,
    /// Plain: biases only if `attention_bias` / `mlp_bias`.
    Llama,
}

impl Architecture {
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen3" => Some(Self::Qwen3),
            "qwen2" => Some(Self::Qwen2),
            "llama" => Some(Self::Llama),
            _ => None,
        }
    }

    pub fn has_qk_norm(self) -> bool {
        self == Self::Qwen3
    }
}

/// A validated model configuration: everything the network needs, nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Independent of `hidden_size / num_attention_heads` (Qwen3-4B: 32 x 128 != 2560).
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    pub rope: RopeConfig,
    /// End-of-sequence ids named by config.json (generation_config.json may add more).
    pub eos_token_ids: Vec<u32>,
}

/// `config.json` as written, before validation. Unknown fields are fine: real
/// configs carry many the network does not need.
#[derive(Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    use_sliding_window: Option<bool>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    eos_token_id: Option<Value>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Validates config JSON text; `path` is only used to name the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let source = e.into_inner();
            if source.is_data() {
                ModelError::FieldType {
                    path: path.to_owned(),
                    field,
                    source,
                }
            } else {
                ModelError::Json {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Validator { path }.validate(raw)
    }

    /// Number of query heads sharing one key/value head.
    /// The usable context window: `max_position_embeddings`, stretched by
    /// the RoPE scaling as vLLM derives it.
    pub fn context_window(&self) -> usize {
        self.rope.scaling.context_window(self.max_position_embeddings)
    }

    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> ModelError {
        ModelError::InvalidConfig {
            path: self.path.to_owned(),
            field,
            reason: reason.into(),
        }
    }

    fn required(&self, value: Option<usize>, field: &'static str) -> Result<usize> {
        match value {
            None => Err(self.invalid(field, "missing")),
            Some(0) => Err(self.invalid(field, "must be positive")),
            Some(v) => Ok(v),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<ModelConfig> {
        let model_type = raw
            .model_type
            .clone()
            .ok_or_else(|| self.invalid("model_type", "missing"))?;
        let architecture = Architecture::from_model_type(&model_type).ok_or_else(|| {
            ModelError::UnknownModelType {
                path: self.path.to_owned(),
                model_type: model_type.clone(),
            }
        })?;

        let vocab_size = self.required(raw.vocab_size, "vocab_size")?;
        let hidden_size = self.required(raw.hidden_size, "hidden_size")?;
        let intermediate_size = self.required(raw.intermediate_size, "intermediate_size")?;
        let num_hidden_layers = self.required(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_attention_heads = self.required(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = self.required(
            raw.num_key_value_heads.or(Some(num_attention_heads)),
            "num_key_value_heads",
        )?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(self.invalid(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => self.required(Some(d), "head_dim")?,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(self.invalid(
                    "head_dim",
                    "missing, and hidden_size is not a multiple of num_attention_heads",
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(self.invalid("head_dim", format!("{head_dim} is odd; RoPE needs pairs")));
        }
        let max_position_embeddings =
            self.required(raw.max_position_embeddings, "max_position_embeddings")?;
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(self.invalid("rms_norm_eps", "must be a positive number"));
        }
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(self.invalid("hidden_act", format!("`{act}` is not supported (only silu)")));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(self.invalid("use_sliding_window", "sliding-window attention is not supported"));
        }

        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Qwen3 | Architecture::Llama => (attention_bias, attention_bias),
        };
        let rope = self.rope(&raw, head_dim, max_position_embeddings)?;
        let eos_token_ids = token_ids(raw.eos_token_id.as_ref())
            .ok_or_else(|| self.invalid("eos_token_id", "must be an integer or a list of integers"))?;

        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            rope,
            eos_token_ids,
        })
    }

    /// Merges both layouts: `rope_parameters` (transformers 5) wins over the
    /// top-level `rope_theta` + `rope_scaling` pair.
    fn rope(&self, raw: &RawConfig, head_dim: usize, max_pos: usize) -> Result<RopeConfig> {
        let (params, field): (Option<&Value>, &'static str) = match &raw.rope_parameters {
            Some(p) if !p.is_null() => (Some(p), "rope_parameters"),
            _ => (raw.rope_scaling.as_ref().filter(|v| !v.is_null()), "rope_scaling"),
        };
        let params = match params {
            None => None,
            Some(Value::Object(map)) => Some(map),
            Some(_) => return Err(self.invalid(field, "must be an object")),
        };
        let theta = params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(raw.rope_theta)
            .unwrap_or(10_000.0);
        if !(theta > 1.0 && theta.is_finite()) {
            return Err(self.invalid("rope_theta", "must be a finite number above 1"));
        }
        let scaling = match params {
            None => RopeScaling::Default,
            Some(p) => RopeScaling::from_params(p, max_pos).map_err(|reason| self.invalid(field, reason))?,
        };
        Ok(RopeConfig {
            theta,
            head_dim,
            scaling,
        })
    }
}

/// An id or a list of ids, as `eos_token_id` may be written; `None` for anything else.
pub fn token_ids(value: Option<&Value>) -> Option<Vec<u32>> {
    let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => as_id(v).map(|id| vec![id]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(json, Path::new("config.json"))
    }

    const QWEN3_4B: &str = r#"{
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 262144, "rms_norm_eps": 1e-06,
        "rope_theta": 5000000, "rope_scaling": null, "tie_word_embeddings": true,
        "attention_bias": false, "hidden_act": "silu", "eos_token_id": 151645,
        "torch_dtype": "bfloat16", "use_sliding_window": false
    }"#;

    #[test]
    fn qwen3_4b_head_dim_is_independent_of_hidden_size() -> anyhow::Result<()> {
        let c = parse(QWEN3_4B)?;
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!((c.head_dim, c.hidden_size, c.num_attention_heads), (128, 2560, 32));
        assert_eq!(c.kv_groups(), 4);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.rope.theta, 5_000_000.0);
        assert_eq!(c.rope.scaling, RopeScaling::Default);
        assert_eq!(c.eos_token_ids, vec![151645]);
        Ok(())
    }

    #[test]
    fn both_rope_layouts_give_the_same_config() -> anyhow::Result<()> {
        let base = r#""model_type": "qwen3", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 64"#;
        let classic = parse(&format!(
            r#"{{{base}, "rope_theta": 1000.0, "rope_scaling": {{"type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 16}}}}"#
        ))?;
        let modern = parse(&format!(
            r#"{{{base}, "rope_parameters": {{"rope_type": "yarn", "rope_theta": 1000.0,
            "factor": 4.0, "original_max_position_embeddings": 16}}}}"#
        ))?;
        assert_eq!(classic, modern);
        assert!(matches!(classic.rope.scaling, RopeScaling::Yarn { .. }));
        Ok(())
    }

    #[test]
    fn qwen2_has_qkv_bias_without_o_bias() -> anyhow::Result<()> {
        let c = parse(
            r#"{"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 64}"#,
        )?;
        assert!(c.qkv_bias && !c.o_bias && !c.architecture.has_qk_norm());
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse(r#"{"model_type": "qwen3", "vocab_size": 10}"#).map(|_| ());
        let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("config.json") && msg.contains("hidden_size"), "{msg}");

        let err = parse(r#"{"model_type": "gpt2"}"#).err().map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("gpt2"));

        let err = parse("{not json").err();
        assert!(matches!(err, Some(ModelError::Json { .. })));
    }
}
