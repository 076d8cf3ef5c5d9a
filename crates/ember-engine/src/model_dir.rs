//! A Hugging Face model directory as the engine sees it: the network, its
//! tokenizer when there is one, and the ids that end generation.

use std::path::Path;

use ember_model::{CausalLm, DType, Device};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::tokenizer::TextTokenizer;

pub struct LoadedModel {
    pub model: CausalLm,
    /// `None` when the directory has no `tokenizer.json`.
    pub tokenizer: Option<TextTokenizer>,
    /// End-of-sequence ids from config.json and generation_config.json.
    pub eos_token_ids: Vec<u32>,
}

impl LoadedModel {
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = CausalLm::from_dir(dir, device, dtype)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = if tokenizer_path.is_file() {
            Some(TextTokenizer::from_file(&tokenizer_path)?)
        } else {
            None
        };
        let mut eos_token_ids = model.config().eos_token_ids.clone();
        eos_token_ids.extend(generation_config_eos(&dir.join("generation_config.json"))?);
        eos_token_ids.sort_unstable();
        eos_token_ids.dedup();
        Ok(Self {
            model,
            tokenizer,
            eos_token_ids,
        })
    }
}

/// `eos_token_id` of generation_config.json (an id or a list); none if the file is absent.
fn generation_config_eos(path: &Path) -> Result<Vec<u32>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|source| ember_model::ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    let json: Value = serde_json::from_str(&text).map_err(|source| ember_model::ModelError::Json {
        path: path.to_owned(),
        source,
    })?;
    ember_model::config::token_ids(json.get("eos_token_id")).ok_or_else(|| {
        EngineError::Model(ember_model::ModelError::InvalidConfig {
            path: path.to_owned(),
            field: "eos_token_id",
            reason: "must be an integer or a list of integers".into(),
        })
    })
}
