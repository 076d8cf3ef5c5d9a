//! Text <-> token ids through Hugging Face `tokenizers`, from a model
//! directory's `tokenizer.json`.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| EngineError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self { inner })
    }

    /// Encodes as `tokenizer(text)` does in Python: with the model's special
    /// tokens (e.g. Llama's BOS) added by its post-processor.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Encode(e.to_string()))
    }
}
