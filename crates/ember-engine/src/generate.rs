//! One sequence, start to finish: prefill the prompt, then decode one token
//! at a time until an end-of-sequence id or `max_tokens`. The batching
//! scheduler replaces this loop for serving; `ember generate` uses it as is.

use ember_model::{CausalLm, LogitsMode, SequenceInput};

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
    while token_ids.len() < params.max_tokens {
        let logits = model
            .forward(
                &mut [SequenceInput {
                    tokens: &input,
                    cache: &mut cache,
                }],
                LogitsMode::Last,
            )?
            .pop()
            .ok_or(EngineError::EmptyPrompt)?;
        let row: Vec<f32> = logits
            .into_data()
            .try_to_vec()
            .map_err(|e| EngineError::ReadLogits(format!("{e:?}")))?;
        let next = sampler.sample(&row);
        token_ids.push(next);
        on_token(next);
        if params.stop_token_ids.contains(&next) {
            return Ok(GenerationOutput {
                token_ids,
                finish_reason: FinishReason::Stop,
            });
        }
        input = vec![next];
    }
    Ok(GenerationOutput {
        token_ids,
        finish_reason: FinishReason::Length,
    })
}
