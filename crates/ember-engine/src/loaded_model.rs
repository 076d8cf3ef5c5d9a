//! A model as the engine uses it: the network, its tokenizer and chat
//! template when it has them, and the ids that end generation. Opened from a
//! Hugging Face directory or a GGUF file.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ember_model::gguf::{GgufFile, MetadataValue};
use ember_model::{CausalLm, DType, Device, LoadOptions, ModelConfig, ModelError};
use serde_json::Value;

use crate::chat_template::ChatTemplate;
use crate::error::{EngineError, Result};
use crate::generation_defaults::GenerationDefaults;
use crate::important::{self, MarkerPolicy};
use crate::request::Pooling;
use crate::structured::GrammarCompiler;
use crate::text_side::TextSide;
use crate::tokenizer::TextTokenizer;

/// The token that closes a ChatML turn; a stop token in chat mode.
const IM_END: &str = "<|im_end|>";

pub struct LoadedModel {
    pub model: CausalLm,
    pub info: ModelInfo,
}

/// Everything about a model except the network itself: what request
/// handling needs on the caller's thread while the engine thread owns the
/// network.
pub struct ModelInfo {
    /// `None` when a directory has no `tokenizer.json`.
    pub tokenizer: Option<Arc<TextTokenizer>>,
    /// `None` when the model ships no chat template.
    pub chat_template: Option<ChatTemplate>,
    /// End-of-sequence ids: config.json + generation_config.json, or GGUF metadata.
    pub eos_token_ids: Vec<u32>,
    /// Where it was loaded from.
    pub path: PathBuf,
    pub config: ModelConfig,
    /// Sampling values for fields a request leaves out.
    pub generation_defaults: GenerationDefaults,
    /// Set when attention is sparse: `[IMPORTANT]` markers then become
    /// global spans. `None` (dense) leaves them as plain text.
    pub markers: Option<MarkerPolicy>,
    /// Set for an embedding model: how its hidden states become a vector
    /// (`crate::pooling`, or `ember serve --task embed`).
    pub pooling: Option<Pooling>,
    /// Built on first use (`ember serve` asks for it right after loading):
    /// the token trie takes about a second on a 150K-token vocabulary, which
    /// `generate`, `chat` and the tests need not pay.
    grammar_compiler: OnceLock<std::result::Result<Arc<GrammarCompiler>, String>>,
}

/// A prompt's token ids and its global spans (token positions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedPrompt {
    pub ids: Vec<u32>,
    pub global_spans: Vec<Range<usize>>,
}

impl ModelInfo {
    /// One text as a client wrote it (a message's content, a completions
    /// prompt), its `[IMPORTANT]` markers readied to become global spans
    /// when attention is sparse; unchanged when it is dense.
    pub fn mark_important<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.markers {
            Some(_) => important::mark(text),
            None => Cow::Borrowed(text),
        }
    }

    /// Tokenizes a prompt built from texts passed through `mark_important`
    /// (rendered through a chat template or not), with its global spans.
    pub fn encode_prompt(&self, text: &str, add_special_tokens: bool) -> Result<EncodedPrompt> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::Encode("the model has no tokenizer".into()))?;
        let Some(policy) = self.markers else {
            return Ok(EncodedPrompt {
                ids: tokenizer.encode(text, add_special_tokens)?,
                global_spans: Vec::new(),
            });
        };
        let (text, byte_spans) = important::take_spans(text, policy.keep_markers);
        if byte_spans.is_empty() {
            return Ok(EncodedPrompt {
                ids: tokenizer.encode(&text, add_special_tokens)?,
                global_spans: Vec::new(),
            });
        }
        let (ids, offsets) = tokenizer.encode_with_offsets(&text, add_special_tokens)?;
        Ok(EncodedPrompt {
            global_spans: important::token_spans(&offsets, &byte_spans),
            ids,
        })
    }

    /// Stop ids for chat: the eos ids plus `<|im_end|>` when the vocabulary has it.
    pub fn chat_stop_ids(&self) -> Vec<u32> {
        let mut ids = self.eos_token_ids.clone();
        if let Some(id) = self.tokenizer.as_ref().and_then(|t| t.token_id(IM_END)) {
            ids.push(id);
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The model's grammar compiler for constrained decoding, built once.
    pub fn grammar_compiler(&self) -> Result<Arc<GrammarCompiler>> {
        let built = self.grammar_compiler.get_or_init(|| {
            let tokenizer = self
                .tokenizer
                .as_ref()
                .ok_or("the model has no tokenizer")?;
            GrammarCompiler::new(tokenizer, self.config.vocab_size, &self.chat_stop_ids())
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        built.clone().map_err(EngineError::Grammar)
    }
}

impl LoadedModel {
    /// Opens a Hugging Face model directory or a `.gguf` file.
    pub fn open(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        Self::open_with(path, device, dtype, LoadOptions::default())
    }

    /// As `open`, with the CPU fast path's options (KV cache dtype, or the
    /// fast path off).
    pub fn open_with(path: &Path, device: &Device, dtype: DType, options: LoadOptions) -> Result<Self> {
        if path.is_dir() {
            Self::from_dir(path, device, dtype, options)
        } else {
            Self::from_gguf(path, device, dtype, options)
        }
    }

    fn from_dir(dir: &Path, device: &Device, dtype: DType, options: LoadOptions) -> Result<Self> {
        let model = CausalLm::from_dir_with(dir, device, dtype, options)?;
        let TextSide { tokenizer, chat_template } = TextSide::of_dir(dir)?;
        let mut eos_token_ids = model.config().eos_token_ids.clone();
        let generation_path = dir.join("generation_config.json");
        let mut generation_defaults = GenerationDefaults::default();
        if let Some(generation) = read_json(&generation_path)? {
            generation_defaults = GenerationDefaults::from_generation_config(&generation)
                .validated()
                .map_err(|e| EngineError::InvalidConfig(format!("{}: {e}", generation_path.display())))?;
            let ids = ember_model::config::token_ids(generation.get("eos_token_id")).ok_or_else(|| {
                ModelError::InvalidConfig {
                    path: generation_path.clone(),
                    field: "eos_token_id",
                    reason: "must be an integer or a list of integers".into(),
                }
            })?;
            eos_token_ids.extend(ids);
        }
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        let info = ModelInfo {
            tokenizer: tokenizer.map(Arc::new),
            chat_template,
            eos_token_ids,
            path: dir.to_owned(),
            config: model.config().clone(),
            generation_defaults,
            markers: model.options().sparse.map(|_| MarkerPolicy::default()),
            pooling: crate::pooling::detect(dir, read_json)?,
            grammar_compiler: OnceLock::new(),
        };
        Ok(Self { model, info })
    }

    fn from_gguf(path: &Path, device: &Device, dtype: DType, options: LoadOptions) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let model = CausalLm::from_gguf_with(&file, device, dtype, options)?;
        let meta = file.metadata();
        let TextSide { tokenizer, chat_template } = TextSide::of_gguf(path, meta)?;
        let info = ModelInfo {
            tokenizer: tokenizer.map(Arc::new),
            chat_template,
            eos_token_ids: model.config().eos_token_ids.clone(),
            path: path.to_owned(),
            config: model.config().clone(),
            // A GGUF carries no generation config; the bundled default model
            // gets its model card's values.
            generation_defaults: if crate::default_model::is_default_model(path) {
                GenerationDefaults::smollm2()
            } else {
                GenerationDefaults::default()
            },
            markers: model.options().sparse.map(|_| MarkerPolicy::default()),
            pooling: gguf_pooling(meta),
            grammar_compiler: OnceLock::new(),
        };
        Ok(Self { model, info })
    }
}

/// A JSON file's contents, or `None` if the file does not exist.
/// An embedding GGUF's pooling: llama.cpp writes `{arch}.pooling_type`
/// (llama.h's `llama_pooling_type`: 1 mean, 3 last).
fn gguf_pooling(meta: &std::collections::HashMap<String, MetadataValue>) -> Option<Pooling> {
    let arch = meta.get("general.architecture").and_then(MetadataValue::as_str)?;
    match meta.get(&format!("{arch}.pooling_type")).and_then(MetadataValue::as_u64)? {
        1 => Some(Pooling::Mean),
        3 => Some(Pooling::Last),
        _ => None,
    }
}

pub(crate) fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    let json = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(json))
}

/// `chat_template` of tokenizer_config.json: a string, or a list of named
/// templates of which `default` is used; with its `bos_token`/`eos_token`.
/// `path` only names the file in errors. Public for the fuzz targets.
pub fn template_from_tokenizer_config(config: &Value, path: &Path) -> Result<Option<ChatTemplate>> {
    let source = match config.get("chat_template") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Array(named)) => match named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
        {
            Some(s) => s,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    // Special tokens are written as a string or as {"content": ...}.
    let token = |key: &str| -> String {
        match config.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_owned(),
            _ => String::new(),
        }
    };
    ChatTemplate::new(source, &token("bos_token"), &token("eos_token"))
        .map(Some)
        .map_err(|source| EngineError::Template {
            path: path.to_owned(),
            source,
        })
}
