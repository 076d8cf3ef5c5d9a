//! The text side of a model: its tokenizer and chat template, without the
//! weights. The model loaders build it, and client tools (`ember eval`,
//! `ember summarize`) open it alone to count a remote model's tokens from a
//! local `tokenizer.json`, model directory or GGUF file.

use std::collections::HashMap;
use std::path::Path;

use ember_model::gguf::{GgufFile, MetadataValue};
use serde::Serialize;

use crate::chat_template::{ChatTemplate, RenderOptions};
use crate::error::{EngineError, Result};
use crate::gguf_tokenizer::tokenizer_from_gguf;
use crate::loaded_model::{read_json, template_from_tokenizer_config};
use crate::tokenizer::TextTokenizer;

pub struct TextSide {
    /// `None` when the model has no tokenizer.
    pub tokenizer: Option<TextTokenizer>,
    /// `None` when the model ships no chat template.
    pub chat_template: Option<ChatTemplate>,
}

#[derive(Serialize)]
struct UserMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl TextSide {
    /// A `tokenizer.json` file (with the chat template of a
    /// `tokenizer_config.json` beside it), a model directory, or a GGUF file
    /// (its metadata only; the weights are mapped, never read).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::of_dir(path);
        }
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let file = GgufFile::open(path)?;
            return Self::of_gguf(path, file.metadata());
        }
        Ok(Self {
            tokenizer: Some(TextTokenizer::from_file(path)?),
            chat_template: template_in(path.parent().unwrap_or(Path::new(".")))?,
        })
    }

    /// `tokenizer.json` and `tokenizer_config.json`'s template in `dir`,
    /// each when present.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            Some(TextTokenizer::from_file(&tokenizer_path)?)
        } else {
            None
        };
        Ok(Self {
            tokenizer,
            chat_template: template_in(dir)?,
        })
    }

    /// The tokenizer and template a GGUF's metadata describes; `path` names
    /// the file in errors.
    pub fn of_gguf(path: &Path, meta: &HashMap<String, MetadataValue>) -> Result<Self> {
        // A GGUF without tokenizer metadata still runs on token ids.
        let tokenizer = if meta.contains_key("tokenizer.ggml.model") {
            let built = tokenizer_from_gguf(meta).map_err(|source| EngineError::GgufTokenizer {
                path: path.to_owned(),
                source,
            })?;
            Some(TextTokenizer::from_tokenizer(built))
        } else {
            None
        };
        let token_text = |key: &str| {
            meta.get(key)
                .and_then(MetadataValue::as_u64)
                .and_then(|id| tokenizer.as_ref()?.token_text(u32::try_from(id).ok()?))
                .unwrap_or_default()
        };
        let chat_template = match meta.get("tokenizer.chat_template").and_then(MetadataValue::as_str) {
            Some(source) => Some(
                ChatTemplate::new(source, &token_text("tokenizer.ggml.bos_token_id"), &token_text("tokenizer.ggml.eos_token_id"))
                    .map_err(|source| EngineError::Template {
                        path: path.to_owned(),
                        source,
                    })?,
            ),
            None => None,
        };
        Ok(Self { tokenizer, chat_template })
    }

    fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| EngineError::Encode("the model has no tokenizer".into()))
    }

    /// Tokens of `text` alone, without special tokens.
    pub fn count_text(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer()?.encode(text, false)?.len())
    }

    /// Tokens of the prompt one user message becomes: rendered through the
    /// chat template with the assistant's turn opened, as a chat completion
    /// renders it; the bare text with special tokens when there is no
    /// template.
    pub fn count_user_message(&self, content: &str) -> Result<usize> {
        let tokenizer = self.tokenizer()?;
        let Some(template) = &self.chat_template else {
            return Ok(tokenizer.encode(content, true)?.len());
        };
        let messages = [UserMessage { role: "user", content }];
        let prompt = template
            .render(RenderOptions::<_, ()> {
                messages: &messages,
                tools: None,
                add_generation_prompt: true,
            })
            .map_err(|e| EngineError::Encode(format!("the chat template: {e}")))?;
        Ok(tokenizer.encode(&prompt, false)?.len())
    }
}

/// The chat template of `dir/tokenizer_config.json`, when there is one.
fn template_in(dir: &Path) -> Result<Option<ChatTemplate>> {
    let config_path = dir.join("tokenizer_config.json");
    match read_json(&config_path)? {
        Some(config) => template_from_tokenizer_config(&config, &config_path),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
    }

    #[test]
    fn a_tokenizer_file_and_its_directory_count_alike() -> Result<()> {
        let text = "The grass is green. The sky is blue.";
        let dir = TextSide::open(&fixtures().join("qwen3-tiny"))?;
        let file = TextSide::open(&fixtures().join("qwen3-tiny/tokenizer.json"))?;
        let n = dir.count_text(text)?;
        assert!(n > 0);
        assert_eq!(file.count_text(text)?, n);
        // Without a chat template a user message is its text with special
        // tokens (the GGUF's template is checked in tests/smollm2.rs).
        assert!(dir.chat_template.is_none());
        assert!(dir.count_user_message(text)? >= n);
        // A GGUF without tokenizer metadata has none to count with.
        let bare = TextSide::open(&fixtures().join("gguf/qwen3-tiny.f32.gguf"))?;
        assert!(bare.tokenizer.is_none() && bare.count_text(text).is_err());
        Ok(())
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let missing = fixtures().join("qwen3-tiny/no-such-tokenizer.json");
        let err = TextSide::open(&missing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no-such-tokenizer.json"), "{err}");
    }
}
