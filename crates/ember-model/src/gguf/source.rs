//! A GGUF file as a weight source: Hugging Face names are translated to
//! llama.cpp's (`model.layers.3.self_attn.q_proj.weight` ->
//! `blk.3.attn_q.weight`), tensors are dequantized to f32 on the way out, and
//! the model config is read from `{arch}.*` metadata.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::TensorData;
use memmap2::Mmap;

use super::dequant::dequantize;
use super::reader::{self, GgufHeader, MetadataValue, TensorInfo};
use crate::config::{Architecture, ModelConfig};
use crate::cpu::{QuantMatrix, QuantType, WeightBytes};
use crate::error::{ModelError, Result};
use crate::rope::{RopeConfig, RopeScaling};
use crate::weights::WeightSource;

/// A memory-mapped GGUF model file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Arc<Mmap>,
    header: GgufHeader,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| ModelError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: read-only mapping; see SafetensorsSource::open_files.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let header = reader::parse(&mmap).map_err(|source| ModelError::Gguf {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            mmap: Arc::new(mmap),
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, MetadataValue> {
        &self.header.metadata
    }

    fn meta_err(&self, key: &str, reason: impl Into<String>) -> ModelError {
        ModelError::GgufMetadata {
            path: self.path.clone(),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.metadata().get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(|| self.meta_err(key, "must be a positive integer")),
        }
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.meta_usize(key)?.ok_or_else(|| self.meta_err(key, "missing"))
    }

    fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata().get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.meta_err(key, "must be a number")),
        }
    }

    /// The architecture: `general.architecture` as one Ember runs.
    pub fn architecture(&self) -> Result<(Architecture, &str)> {
        let key = "general.architecture";
        let name = self
            .metadata()
            .get(key)
            .and_then(MetadataValue::as_str)
            .ok_or_else(|| self.meta_err(key, "missing"))?;
        let arch = Architecture::from_model_type(name).ok_or_else(|| ModelError::UnknownModelType {
            path: self.path.clone(),
            model_type: name.to_owned(),
        })?;
        Ok((arch, name))
    }

    /// The model config, from `{arch}.*` metadata and the tensors present.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let (architecture, arch) = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = self.required_usize(&key("embedding_length"))?;
        let num_attention_heads = self.required_usize(&key("attention.head_count"))?;
        let num_key_value_heads = self
            .meta_usize(&key("attention.head_count_kv"))?
            .unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(self.meta_err(&key("attention.head_count_kv"), "does not divide the head count"));
        }
        let head_dim = match self.meta_usize(&key("attention.key_length"))? {
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        if head_dim % 2 != 0 || head_dim == 0 {
            return Err(self.meta_err(&key("attention.key_length"), "head size must be even and positive"));
        }
        let embed = self
            .header
            .tensors
            .get("token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: "token_embd.weight".into(),
            })?;
        let vocab_size = match self.meta_usize(&key("vocab_size"))? {
            Some(v) => v,
            None => embed.dims.get(1).copied().unwrap_or(0),
        };
        let max_position_embeddings = self.required_usize(&key("context_length"))?;
        if self.header.tensors.contains_key("rope_freqs.weight") {
            return Err(self.meta_err("rope_freqs.weight", "per-dimension RoPE frequency factors are not supported"));
        }
        let scaling = match self
            .metadata()
            .get(&key("rope.scaling.type"))
            .and_then(MetadataValue::as_str)
        {
            None | Some("none") => RopeScaling::Default,
            Some(kind) => {
                let factor = self
                    .meta_f64(&key("rope.scaling.factor"))?
                    .ok_or_else(|| self.meta_err(&key("rope.scaling.factor"), "missing"))?;
                let original = self.meta_usize(&key("rope.scaling.original_context_length"))?;
                let mut params = serde_json::Map::new();
                params.insert("rope_type".into(), kind.into());
                params.insert("factor".into(), factor.into());
                if let Some(o) = original {
                    params.insert("original_max_position_embeddings".into(), o.into());
                }
                RopeScaling::from_params(&params, max_position_embeddings)
                    .map_err(|reason| self.meta_err(&key("rope.scaling.type"), reason))?
            }
        };
        let qkv_bias = architecture == Architecture::Qwen2 || self.header.tensors.contains_key("blk.0.attn_q.bias");
        let eos_token_ids = self
            .metadata()
            .get("tokenizer.ggml.eos_token_id")
            .and_then(MetadataValue::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .into_iter()
            .collect();
        Ok(ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: self.required_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.required_usize(&key("block_count"))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps: self
                .meta_f64(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            tie_word_embeddings: !self.header.tensors.contains_key("output.weight"),
            qkv_bias,
            o_bias: self.header.tensors.contains_key("blk.0.attn_output.bias"),
            mlp_bias: self.header.tensors.contains_key("blk.0.ffn_up.bias"),
            rope: RopeConfig {
                theta: self.meta_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
                head_dim,
                scaling,
            },
            eos_token_ids,
        })
    }

    fn info(&self, hf_name: &str) -> Option<(String, &TensorInfo)> {
        let name = gguf_name(hf_name)?;
        let info = self.header.tensors.get(&name)?;
        Some((name, info))
    }
}

impl WeightSource for GgufFile {
    fn contains(&self, name: &str) -> bool {
        self.info(name).is_some()
    }

    fn read(&self, name: &str, expected_shape: &[usize]) -> Result<TensorData> {
        let (gguf, info, shape) = self.checked_info(name, expected_shape)?;
        // parse() checked that the range lies inside the file.
        let bytes = &self.mmap[info.start..info.start + info.len];
        let mut values = Vec::new();
        dequantize(info.ggml_type, bytes, &mut values);
        if let Some(heads) = self.rope_permuted_heads(&gguf)? {
            values = unpermute_rows(&values, &shape, heads);
        }
        Ok(TensorData::new(values, shape))
    }

    fn read_quantized(&self, name: &str, expected_shape: [usize; 2]) -> Result<Option<QuantMatrix>> {
        let (gguf, info, _) = self.checked_info(name, &expected_shape)?;
        let Some(ty) = QuantType::from_ggml(info.ggml_type) else {
            return Ok(None);
        };
        let [rows, cols] = expected_shape;
        let bytes = WeightBytes::Mapped {
            map: Arc::clone(&self.mmap),
            range: info.start..info.start + info.len,
        };
        let matrix = QuantMatrix::new(ty, rows, cols, bytes).map_err(|e| ModelError::BadTensor {
            path: self.path.clone(),
            tensor: gguf.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(match self.rope_permuted_heads(&gguf)? {
            Some(heads) => matrix.permute_rows(&unpermuted_order(rows, heads)),
            None => matrix,
        }))
    }
}

impl GgufFile {
    /// The tensor behind a Hugging Face name, checked against the shape the
    /// model expects; with its GGUF name and its shape.
    fn checked_info(&self, name: &str, expected_shape: &[usize]) -> Result<(String, &TensorInfo, Vec<usize>)> {
        let (gguf, info) = self.info(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.path.clone(),
            tensor: gguf_name(name).unwrap_or_else(|| name.to_owned()),
        })?;
        let shape = info.shape();
        if shape != expected_shape {
            return Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                tensor: gguf,
                expected: expected_shape.to_vec(),
                actual: shape,
            });
        }
        Ok((gguf, info, shape))
    }
}

impl GgufFile {
    /// llama.cpp's converter permutes the q and k rows of `llama` models
    /// (rotate-half -> interleaved pairs); Qwen models are stored unpermuted.
    /// Returns the head count to undo it with, if `gguf` is such a tensor.
    fn rope_permuted_heads(&self, gguf: &str) -> Result<Option<usize>> {
        let (arch, name) = self.architecture()?;
        if arch != Architecture::Llama {
            return Ok(None);
        }
        let heads_key = if gguf.contains(".attn_q.") {
            "attention.head_count"
        } else if gguf.contains(".attn_k.") {
            "attention.head_count_kv"
        } else {
            return Ok(None);
        };
        let heads = match self.meta_usize(&format!("{name}.{heads_key}"))? {
            Some(h) => h,
            None => self.required_usize(&format!("{name}.attention.head_count"))?,
        };
        Ok(Some(heads))
    }
}

/// Undoes llama.cpp's `permute`: within each head, GGUF row `2 i + j` is
/// Hugging Face row `j * half + i`. Works for weights (`[rows, cols]`) and
/// biases (`[rows]`).
fn unpermute_rows(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape.first().copied().unwrap_or(0);
    let cols = if shape.len() > 1 { values.len() / rows.max(1) } else { 1 };
    let mut out = Vec::with_capacity(values.len());
    for from in unpermuted_order(rows, heads) {
        out.extend_from_slice(&values[from * cols..(from + 1) * cols]);
    }
    out
}

/// For each Hugging Face row, the GGUF row it is stored in (see `unpermute_rows`).
fn unpermuted_order(rows: usize, heads: usize) -> Vec<usize> {
    let head_rows = rows / heads.max(1);
    let half = head_rows / 2;
    (0..rows)
        .map(|to| {
            let (h, within) = (to / head_rows.max(1), to % head_rows.max(1));
            let (j, i) = (within / half.max(1), within % half.max(1));
            h * head_rows + 2 * i + j
        })
        .collect()
}

/// llama.cpp's name for a Hugging Face checkpoint key.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(gguf_name("model.layers.12.self_attn.q_proj.weight").as_deref(), Some("blk.12.attn_q.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.k_norm.weight").as_deref(), Some("blk.0.attn_k_norm.weight"));
        assert_eq!(gguf_name("model.layers.3.mlp.down_proj.weight").as_deref(), Some("blk.3.ffn_down.weight"));
        assert_eq!(gguf_name("model.layers.1.self_attn.v_proj.bias").as_deref(), Some("blk.1.attn_v.bias"));
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.1.unknown.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // Two heads of 4 rows, 1 column: HF rows [a0 a1 b0 b1] per head become
        // interleaved [a0 b0 a1 b1] in GGUF.
        let gguf = [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0];
        let hf = unpermute_rows(&gguf, &[8, 1], 2);
        assert_eq!(hf, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    }
}
