//! One sequence, start to finish: prefill the prompt, then decode one token
//! at a time until an end-of-sequence id or `max_tokens`. The batching
//! scheduler replaces this loop for serving; `ember generate` uses it as is.

use std::time::{Duration, Instant};

use ember_model::{CausalLm, LogitsMode};

use crate::error::{EngineError, Result};
use crate::sampler::Sampler;

#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub max_tokens: usize,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: u64,
    /// Ids that end generation (included in the output, as Hugging Face does).
    pub stop_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id was generated.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Prompt processing up to the first sampled token.
    pub prefill_time: Duration,
    /// Everything after the first token.
    pub decode_time: Duration,
}

/// Generates from `prompt`, calling `on_token` with each new id as it is chosen.
pub fn generate(
    model: &CausalLm,
    prompt: &[u32],
    params: &GenerationParams,
    mut on_token: impl FnMut(u32),
) -> Result<GenerationOutput> {
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let mut sampler = Sampler::new(params.temperature, params.seed)?;
    let mut cache = model.new_cache();
    let mut token_ids = Vec::with_capacity(params.max_tokens);
    let mut input = prompt.to_vec();
    let start = Instant::now();
    let mut prefill_time = Duration::ZERO;
    let mut finish_reason = FinishReason::Length;
    while token_ids.len() < params.max_tokens {
        let logits = model.forward_cached(&mut cache, &input, LogitsMode::Last)?;
        let row: Vec<f32> = logits
            .into_data()
            .try_to_vec()
            .map_err(|e| EngineError::ReadLogits(format!("{e:?}")))?;
        let next = sampler.sample(&row);
        if token_ids.is_empty() {
            prefill_time = start.elapsed();
        }
        token_ids.push(next);
        on_token(next);
        if params.stop_token_ids.contains(&next) {
            finish_reason = FinishReason::Stop;
            break;
        }
        input = vec![next];
    }
    Ok(GenerationOutput {
        token_ids,
        finish_reason,
        prefill_time,
        decode_time: start.elapsed().saturating_sub(prefill_time),
    })
}
