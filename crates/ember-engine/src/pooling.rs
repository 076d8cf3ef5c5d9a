//! Which checkpoints are embedding models, and how they pool: a
//! sentence-transformers directory says so in `modules.json` and its
//! pooling module's `config.json` (`1_Pooling/config.json`, with
//! `pooling_mode_lasttoken` for Qwen3-Embedding, `pooling_mode_mean_tokens`
//! for most others); a bare `Qwen3Model` checkpoint (no head, as
//! transformers' `AutoModel` saves it) is an embedder with last-token
//! pooling, Qwen3-Embedding's.

use std::path::Path;

use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::request::Pooling;

/// The pooling of the model in `dir`, or `None` for a generative model.
pub fn detect(dir: &Path, read_json: impl Fn(&Path) -> Result<Option<Value>>) -> Result<Option<Pooling>> {
    let modules = read_json(&dir.join("modules.json"))?;
    let pooling_dir = modules
        .as_ref()
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter().find(|m| m.get("type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".Pooling")))
        })
        .and_then(|m| m.get("path").and_then(Value::as_str))
        .unwrap_or("1_Pooling");
    let config_path = dir.join(pooling_dir).join("config.json");
    if let Some(config) = read_json(&config_path)? {
        let on = |key: &str| config.get(key).and_then(Value::as_bool).unwrap_or(false);
        return if on("pooling_mode_lasttoken") {
            Ok(Some(Pooling::Last))
        } else if on("pooling_mode_mean_tokens") {
            Ok(Some(Pooling::Mean))
        } else {
            Err(EngineError::InvalidConfig(format!(
                "{}: only last-token and mean pooling are supported",
                config_path.display()
            )))
        };
    }
    let architectures = read_json(&dir.join("config.json"))?
        .and_then(|c| c.get("architectures").cloned())
        .unwrap_or(Value::Null);
    let bare = architectures
        .as_array()
        .is_some_and(|list| list.iter().any(|a| matches!(a.as_str(), Some("Qwen3Model" | "Qwen2Model" | "LlamaModel"))));
    Ok((bare || modules.is_some()).then_some(Pooling::Last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> Result<Option<Value>> {
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::InvalidConfig(e.to_string()))?;
        serde_json::from_str(&text).map(Some).map_err(|e| EngineError::InvalidConfig(e.to_string()))
    }

    #[test]
    fn pooling_comes_from_the_sentence_transformers_files() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert_eq!(detect(dir.path(), read)?, None);
        std::fs::write(dir.path().join("config.json"), r#"{"architectures": ["Qwen3Model"]}"#)?;
        assert_eq!(detect(dir.path(), read)?, Some(Pooling::Last));
        std::fs::write(dir.path().join("modules.json"), r#"[{"idx": 1, "path": "pool", "type": "sentence_transformers.models.Pooling"}]"#)?;
        std::fs::create_dir(dir.path().join("pool"))?;
        std::fs::write(dir.path().join("pool/config.json"), r#"{"pooling_mode_mean_tokens": true}"#)?;
        assert_eq!(detect(dir.path(), read)?, Some(Pooling::Mean));
        std::fs::write(dir.path().join("pool/config.json"), r#"{"pooling_mode_cls_token": true}"#)?;
        assert!(detect(dir.path(), read).is_err());
        Ok(())
    }
}
