//! Sampling values for the fields a request leaves out. As vLLM does by
//! default (`--generation-config auto`), they come from the model's
//! `generation_config.json` (`temperature`, `top_p`, `top_k`, `min_p`,
//! `repetition_penalty`; `do_sample` is ignored, as vLLM ignores it); a
//! server-wide override (vLLM's `--override-generation-config`) is laid over
//! them; a request's own fields always win. Without either, OpenAI's
//! defaults hold (temperature 1, nothing truncated).

use serde::Deserialize;
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::sampling::SamplingParams;

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// 0 (or -1 in a JSON override) keeps every token.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

impl GenerationDefaults {
    /// The sampling fields of a Hugging Face `generation_config.json`;
    /// other keys (token ids, `max_length`, ...) are not sampling defaults.
    pub fn from_generation_config(config: &Value) -> Self {
        let float = |key: &str| config.get(key).and_then(Value::as_f64).map(|v| v as f32);
        Self {
            temperature: float("temperature"),
            top_p: float("top_p"),
            top_k: config.get("top_k").and_then(Value::as_i64),
            min_p: float("min_p"),
            repetition_penalty: float("repetition_penalty"),
        }
    }

    /// Parses an override such as `{"temperature": 0.2}`, refusing unknown
    /// keys and values no sampler could honour.
    pub fn parse_override(json: &str) -> Result<Self> {
        let parsed: Self = serde_json::from_str(json)
            .map_err(|e| EngineError::InvalidConfig(format!("override_generation_config {json:?}: {e}")))?;
        parsed.validated()
    }

    /// Checks the values the way a request's own fields are checked.
    pub fn validated(self) -> Result<Self> {
        if self.top_k.is_some_and(|k| k < -1) {
            return Err(EngineError::InvalidConfig("generation defaults: top_k must be -1, 0 or positive".into()));
        }
        self.apply(SamplingParams::default())
            .validate()
            .map_err(|e| EngineError::InvalidConfig(format!("generation defaults: {e}")))?;
        Ok(self)
    }

    /// `self` with `over`'s values laid on top.
    pub fn overlay(self, over: Self) -> Self {
        Self {
            temperature: over.temperature.or(self.temperature),
            top_p: over.top_p.or(self.top_p),
            top_k: over.top_k.or(self.top_k),
            min_p: over.min_p.or(self.min_p),
            repetition_penalty: over.repetition_penalty.or(self.repetition_penalty),
        }
    }

    /// `params` with the defaults filled in.
    pub fn apply(&self, params: SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(params.temperature),
            top_p: self.top_p.unwrap_or(params.top_p),
            top_k: self.top_k.map_or(params.top_k, |k| k.max(0) as usize),
            min_p: self.min_p.unwrap_or(params.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(params.repetition_penalty),
            ..params
        }
    }

    /// The sampling parameters a request with no sampling fields gets.
    pub fn sampling(&self) -> SamplingParams {
        self.apply(SamplingParams::default())
    }

    /// The bundled default model's: its GGUF carries no generation config.
    /// SmolLM2-135M-Instruct's model card samples at temperature 0.2 with
    /// top_p 0.9, but measured here that answers the README's "What is the
    /// capital of France?" with "Paris" only 21 times in 40: the first token
    /// is a near tie ("The" at logprob -1.88, "L" at -1.97, the start of
    /// "L'Étoile, la Cité, la Nation..."). Temperature 0.2 with top_p 0.5
    /// keeps the card's temperature and drops that tail: 40 in 40 (each
    /// figure from 40 requests to `ember serve` with those two fields set).
    pub fn smollm2() -> Self {
        Self {
            temperature: Some(0.2),
            top_p: Some(0.5),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_generation_config_gives_its_sampling_fields_only() {
        let config = json!({"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
            "repetition_penalty": 1.05, "eos_token_id": [151645, 151643], "max_length": 100});
        let d = GenerationDefaults::from_generation_config(&config);
        assert_eq!(
            d,
            GenerationDefaults {
                temperature: Some(0.7),
                top_p: Some(0.8),
                top_k: Some(20),
                min_p: None,
                repetition_penalty: Some(1.05),
            }
        );
        let p = d.sampling();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.min_p), (0.7, 0.8, 20, 0.0));
    }

    #[test]
    fn an_override_wins_key_by_key_and_bad_ones_are_refused() -> Result<()> {
        let base = GenerationDefaults::smollm2();
        let over = GenerationDefaults::parse_override(r#"{"temperature": 0}"#)?;
        let d = base.overlay(over);
        assert_eq!((d.temperature, d.top_p), (Some(0.0), Some(0.5)));
        for bad in [r#"{"temperature": -1}"#, r#"{"top_p": 0}"#, r#"{"temprature": 0.2}"#, "0.2", r#"{"top_k": -5}"#] {
            assert!(GenerationDefaults::parse_override(bad).is_err(), "{bad}");
        }
        assert_eq!(GenerationDefaults::parse_override(r#"{"top_k": -1}"#)?.sampling().top_k, 0);
        Ok(())
    }
}
