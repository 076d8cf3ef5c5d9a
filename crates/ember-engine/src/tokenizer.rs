//! Text <-> token ids through Hugging Face `tokenizers`, from a model
//! directory's `tokenizer.json`.

use std::ops::Deref;
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{EngineError, Result};

pub struct TextTokenizer {
    inner: Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_json(&text, path)
    }

    /// A `tokenizer.json` document; `path` only names the file in errors.
    /// The JSON is checked before `tokenizers` sees it: tokenizers 0.22
    /// panics instead of failing on a syntax error inside `decoder` (a file
    /// cut short there, for one). Parsing into a `Value` applies the same
    /// nesting limit as `tokenizers`' own parse, which `IgnoredAny` would not.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let error = |message: String| EngineError::Tokenizer {
            path: path.to_owned(),
            message,
        };
        serde_json::from_str::<serde_json::Value>(text).map_err(|e| error(e.to_string()))?;
        let inner: Tokenizer = text.parse().map_err(|e: tokenizers::Error| error(e.to_string()))?;
        Ok(Self { inner })
    }

    pub fn from_tokenizer(inner: Tokenizer) -> Self {
        Self { inner }
    }

    /// Encodes text. `add_special_tokens` as in Python's `tokenizer(text)`:
    /// true adds what the post-processor adds (e.g. Llama's BOS); a rendered
    /// chat template already holds its special tokens, so it uses false.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| EngineError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// As `encode`, with each token's byte range in `text` (`(0, 0)` for
    /// tokens the post-processor adds).
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| EngineError::Encode(e.to_string()))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The id of a token written exactly as `token` (special tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of one token id as the vocabulary spells it.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer serialized as a `tokenizer.json` document (also for one
    /// built from GGUF metadata); llguidance builds its token trie from it.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| EngineError::Encode(e.to_string()))
    }

    /// Decodes, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Encode(e.to_string()))
    }
}

/// Turns a stream of token ids into text pieces that never split a UTF-8
/// character: byte-level tokens of one character are held back until the
/// character is complete. Follows TGI's `decode_token`: re-decode a short
/// window (`prefix..`) and emit what it adds beyond `prefix..read`.
///
/// `T` is how the decoder holds the tokenizer: `&TextTokenizer` or an `Arc`.
pub struct IncrementalDecoder<T: Deref<Target = TextTokenizer>> {
    tokenizer: T,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl<T: Deref<Target = TextTokenizer>> IncrementalDecoder<T> {
    pub fn new(tokenizer: T) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = self.tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        match text.get(prefix.len()..) {
            Some(new) if text.starts_with(&prefix) => {
                let new = new.to_owned();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                Ok(new)
            }
            // The window's text changed shape (a merge across the boundary):
            // wait for more tokens rather than emit something inconsistent.
            _ => Ok(String::new()),
        }
    }

    /// The text held back so far (an unfinished character at the end shows
    /// as U+FFFD, as a full decode would show it). Call once, after the last token.
    pub fn finish(&self) -> Result<String> {
        let prefix = self.tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let text = self.tokenizer.decode(&self.ids[self.prefix_offset..])?;
        Ok(text.get(prefix.len()..).filter(|_| text.starts_with(&prefix)).unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_tokenizer() -> Result<TextTokenizer> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tiny/tokenizer.json");
        TextTokenizer::from_file(&path)
    }

    #[test]
    fn streaming_never_splits_characters() -> Result<()> {
        let tokenizer = fixture_tokenizer()?;
        for text in ["naïve café 東京 🙂", "🙂🙂 emoji, 中文字符 and ascii", "plain text"] {
            let ids = tokenizer.encode(text, false)?;
            let mut decoder = IncrementalDecoder::new(&tokenizer);
            let mut streamed = String::new();
            for &id in &ids {
                let piece = decoder.push(id)?;
                assert!(!piece.contains('\u{FFFD}'), "{text}: piece {piece:?}");
                streamed.push_str(&piece);
            }
            assert_eq!(decoder.finish()?, "", "{text}: nothing held back at the end");
            assert_eq!(streamed, tokenizer.decode(&ids)?, "{text}");
            assert_eq!(streamed, text);
        }
        Ok(())
    }

    #[test]
    fn finish_returns_an_unfinished_tail() -> Result<()> {
        let tokenizer = fixture_tokenizer()?;
        let ids = tokenizer.encode("ok 🙂", false)?;
        // Drop the emoji's last byte token: its first bytes are held back.
        let mut decoder = IncrementalDecoder::new(&tokenizer);
        let mut streamed = String::new();
        for &id in &ids[..ids.len() - 1] {
            streamed.push_str(&decoder.push(id)?);
        }
        assert_eq!(streamed, "ok ");
        let tail = decoder.finish()?;
        assert!(tail.contains('\u{FFFD}'), "the held-back bytes come out as U+FFFD: {tail:?}");
        assert_eq!(streamed + &tail, tokenizer.decode(&ids[..ids.len() - 1])?);
        Ok(())
    }
}
