//! From OpenAI request fields to an engine `GenerationRequest`, checking
//! what the engine cannot (types, ranges of integer fields) and naming the
//! field on error. Ranges of float fields are checked once, by the engine.

use actix_web::web;
use ember_engine::engine::MAX_N;
use ember_engine::{EncodedPrompt, EngineError, EngineHandle, GenerationDefaults, GenerationRequest, GenerationStream, SamplingParams};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::openai::{KnownFields, SamplingFields};

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// Parses a JSON body into `T` and the shared sampling fields, refusing
/// unknown fields by name and naming the path of a mistyped one; the body
/// itself comes back too, for backends that pass it on.
pub fn parse_body<T: DeserializeOwned + KnownFields>(
    body: web::Json<Value>,
) -> Result<(T, SamplingFields, Map<String, Value>), ApiError> {
    let Value::Object(body) = body.into_inner() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    parse_map(body)
}

/// `parse_body` of a body already taken apart.
pub fn parse_map<T: DeserializeOwned + KnownFields>(
    body: Map<String, Value>,
) -> Result<(T, SamplingFields, Map<String, Value>), ApiError> {
    if let Some(field) = T::unknown_field(&body) {
        return Err(ApiError::invalid(field.clone(), format!("unknown field `{field}`")));
    }
    // Read in place: a long prompt's body is not copied for each reading.
    let sampling = if T::SAMPLING { deserialize(&body)? } else { SamplingFields::default() };
    let parsed = deserialize(&body)?;
    Ok((parsed, sampling, body))
}

/// `T` from a JSON object, an error naming the path of a mistyped field.
pub fn deserialize<T: DeserializeOwned>(body: &Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        ApiError::invalid(path.clone(), format!("invalid value for `{path}`: {}", e.inner()))
    })
}

/// Runs `work` on actix's blocking pool: tokenizing a long document or
/// rendering a long conversation takes a while, and the async workers must
/// keep streaming other requests meanwhile.
pub async fn off_workers<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(work).await.map_err(|e| ApiError::internal(e.to_string()))?
}

/// Tokenizes prompt texts off the async workers, each with its
/// `[IMPORTANT]` spans when attention is sparse.
pub async fn encode_prompts(
    engine: EngineHandle,
    texts: Vec<String>,
    add_special_tokens: bool,
) -> Result<Vec<EncodedPrompt>, ApiError> {
    off_workers(move || {
        let model = engine.model();
        Ok(texts
            .iter()
            .map(|t| model.encode_prompt(&model.mark_important(t), add_special_tokens))
            .collect::<Result<Vec<_>, _>>()?)
    })
    .await
}

/// Which request fields a context-length error names.
#[derive(Debug, Clone, Copy)]
pub struct LengthFields {
    /// `messages` or `prompt`.
    pub prompt: &'static str,
    /// `max_tokens` or `max_completion_tokens`.
    pub max_tokens: &'static str,
}

/// Queues a request off the async workers (submitting sorts the prompt and
/// copies each choice's grammar matcher). A request over the window names
/// the prompt when the prompt alone fills it, else the output limit.
pub async fn submit(
    engine: &EngineHandle,
    request: GenerationRequest,
    fields: LengthFields,
) -> Result<GenerationStream, ApiError> {
    let engine = engine.clone();
    off_workers(move || {
        engine.submit(request).map_err(|e| match e {
            EngineError::ContextLength {
                prompt, max_model_len, ..
            } => {
                let field = if prompt >= max_model_len { fields.prompt } else { fields.max_tokens };
                ApiError {
                    param: Some(field.into()),
                    ..ApiError::from(e)
                }
            }
            other => other.into(),
        })
    })
    .await
}


/// Refuses fields Ember recognizes but does not implement.
pub fn reject_present(fields: &[(&str, bool, &str)]) -> Result<(), ApiError> {
    match fields.iter().find(|(_, present, _)| *present) {
        Some((name, _, why)) => Err(ApiError::unsupported(name, why)),
        None => Ok(()),
    }
}

/// Builds the engine request for `prompt` from the shared sampling fields;
/// fields the request leaves out take the model's `defaults`.
#[allow(clippy::too_many_arguments)]
pub fn generation_request(
    prompt: EncodedPrompt,
    fields: &SamplingFields,
    defaults: &GenerationDefaults,
    max_tokens: Option<(&str, i64)>,
    logprobs: bool,
    top_logprobs: Option<(&str, i64)>,
    stop_token_ids: Vec<u32>,
) -> Result<GenerationRequest, ApiError> {
    let n = match fields.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_N}, got {n}"))),
    };
    let max_tokens = match max_tokens {
        None => None,
        Some((_, m)) if m >= 1 => Some(m as usize),
        Some((name, m)) => return Err(ApiError::invalid(name, format!("`{name}` must be at least 1, got {m}"))),
    };
    let defaults = defaults.apply(SamplingParams::default());
    let top_k = match fields.top_k {
        None => defaults.top_k,
        Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => return Err(ApiError::invalid("top_k", format!("top_k must be -1 (off) or positive, got {k}"))),
    };
    let top_logprobs = match top_logprobs {
        None => 0,
        Some((name, k)) if (0..=ember_engine::sampling::MAX_TOP_LOGPROBS as i64).contains(&k) => {
            if !logprobs && k > 0 {
                return Err(ApiError::invalid(name, format!("`{name}` needs `logprobs`")));
            }
            k as usize
        }
        Some((name, k)) => return Err(ApiError::invalid(name, format!("`{name}` must be between 0 and 20, got {k}"))),
    };
    let stop = fields.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOPS} stop sequences")));
    }
    if let Some(user) = &fields.user {
        // OpenAI's end-user id, for abuse tracing: it goes to the request's log span.
        tracing::info!(user = %user, "end user");
    }
    let mut stop_ids = stop_token_ids;
    stop_ids.extend(fields.stop_token_ids.iter().flatten());
    Ok(GenerationRequest {
        max_tokens,
        sampling: SamplingParams {
            temperature: fields.temperature.unwrap_or(defaults.temperature),
            top_k,
            top_p: fields.top_p.unwrap_or(defaults.top_p),
            min_p: fields.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: fields.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            presence_penalty: fields.presence_penalty.unwrap_or(defaults.presence_penalty),
            frequency_penalty: fields.frequency_penalty.unwrap_or(defaults.frequency_penalty),
            // Negative seeds are valid in OpenAI's API: keep their bits.
            seed: fields.seed.map(|s| s as u64),
            logprobs,
            top_logprobs,
        },
        stop,
        stop_token_ids: stop_ids,
        ignore_eos: fields.ignore_eos.unwrap_or(false),
        n,
        global_spans: prompt.global_spans,
        ..GenerationRequest::new(prompt.ids)
    })
}

/// Whether to stream, and whether a usage chunk ends the stream.
pub fn streaming(fields: &SamplingFields) -> Result<(bool, bool), ApiError> {
    let stream = fields.stream.unwrap_or(false);
    let include_usage = fields.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    if fields.stream_options.as_ref().and_then(|o| o.continuous_usage_stats) == Some(true) {
        return Err(ApiError::unsupported(
            "stream_options.continuous_usage_stats",
            "usage is reported once, in the final chunk (include_usage)",
        ));
    }
    if fields.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "`stream_options` needs `stream: true`"));
    }
    Ok((stream, include_usage))
}
