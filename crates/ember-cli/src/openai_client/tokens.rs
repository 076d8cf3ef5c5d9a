//! Token counts for sizing prompts and chunks: the server's own tokenizer
//! through `/tokenize`, or a local copy of the model's tokenizer (a
//! `tokenizer.json`, model directory or GGUF) for servers without that
//! route, such as OpenAI's or llama.cpp's.

use std::path::Path;

use anyhow::{Context, Result};
use ember_engine::TextSide;

use super::Client;

pub enum TokenCounter<'a> {
    Server(&'a Client),
    Local(TextSide),
}

impl<'a> TokenCounter<'a> {
    /// The local tokenizer at `path` when given, else the server's.
    pub fn new(client: &'a Client, path: Option<&Path>) -> Result<Self> {
        match path {
            Some(path) => {
                let side = TextSide::open(path).with_context(|| format!("--tokenizer {}", path.display()))?;
                if side.tokenizer.is_none() {
                    anyhow::bail!("--tokenizer {}: no tokenizer there", path.display());
                }
                Ok(Self::Local(side))
            }
            None => Ok(Self::Server(client)),
        }
    }

    /// Tokens of the prompt one user message with `content` becomes.
    pub fn user_message(&self, content: &str) -> Result<usize> {
        match self {
            Self::Server(client) => client.count_user_message(content),
            Self::Local(side) => Ok(side.count_user_message(content)?),
        }
    }

    /// Tokens of `text` alone.
    pub fn text(&self, text: &str) -> Result<usize> {
        match self {
            Self::Server(client) => client.count_text(text),
            Self::Local(side) => Ok(side.count_text(text)?),
        }
    }
}
