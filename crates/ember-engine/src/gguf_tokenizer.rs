//! A Hugging Face `tokenizers::Tokenizer` rebuilt from GGUF metadata
//! (`tokenizer.ggml.*`), for byte-level BPE vocabularies (`model` = `gpt2`:
//! Llama 3, Qwen, SmolLM, GPT-2 families).
//!
//! The pre-tokenizer follows `tokenizer.ggml.pre` as llama.cpp does, so text
//! splits the way the vocabulary's merges were learned (e.g. SmolLM splits
//! digits one by one before GPT-2's pattern).

use std::collections::HashMap;

use ember_model::gguf::MetadataValue;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// Why the metadata does not describe a tokenizer Ember can build.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("metadata `{0}` is missing or has the wrong type")]
    Field(&'static str),
    #[error("tokenizer model `{0}` is not supported (only byte-level BPE, `gpt2`)")]
    Model(String),
    #[error("merge `{0}` is not two tokens separated by a space")]
    Merge(String),
    #[error("cannot build the BPE model: {0}")]
    Build(String),
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

fn strings<'a>(meta: &'a HashMap<String, MetadataValue>, key: &'static str) -> Result<Vec<&'a str>, GgufTokenizerError> {
    meta.get(key)
        .and_then(MetadataValue::as_array)
        .and_then(|items| items.iter().map(MetadataValue::as_str).collect::<Option<Vec<_>>>())
        .ok_or(GgufTokenizerError::Field(key))
}

/// Builds the tokenizer a GGUF file's metadata describes.
pub fn tokenizer_from_gguf(meta: &HashMap<String, MetadataValue>) -> Result<Tokenizer, GgufTokenizerError> {
    let model = meta
        .get("tokenizer.ggml.model")
        .and_then(MetadataValue::as_str)
        .ok_or(GgufTokenizerError::Field("tokenizer.ggml.model"))?;
    if model != "gpt2" {
        return Err(GgufTokenizerError::Model(model.to_owned()));
    }
    let tokens = strings(meta, "tokenizer.ggml.tokens")?;
    let merges = strings(meta, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| GgufTokenizerError::Merge(m.to_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GgufTokenizerError::Build(e.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre = meta.get("tokenizer.ggml.pre").and_then(MetadataValue::as_str).unwrap_or("default");
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    // Control tokens (`<|im_end|>`) are special; user-defined ones (`<think>`)
    // are matched whole but kept in decoded text.
    let types: Vec<u64> = meta
        .get("tokenizer.ggml.token_type")
        .and_then(MetadataValue::as_array)
        .map(|t| t.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let (mut special, mut added) = (Vec::new(), Vec::new());
    for (token, kind) in tokens.iter().zip(&types) {
        match *kind {
            CONTROL => special.push(AddedToken::from((*token).to_owned(), true)),
            USER_DEFINED => added.push(AddedToken::from((*token).to_owned(), false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&added);
    Ok(tokenizer)
}

fn split(pattern: &str) -> Result<PreTokenizerWrapper, GgufTokenizerError> {
    let split = Split::new(SplitPattern::Regex(pattern.to_owned()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| GgufTokenizerError::Build(e.to_string()))?;
    Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]).into())
}

fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, GgufTokenizerError> {
    Ok(match pre {
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT)?,
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" => split(LLAMA3_SPLIT)?,
        "smollm" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, false, true).into()]).into(),
        _ => ByteLevel::new(false, false, true).into(),
    })
}
