//! What OpenAI-compatible servers answer, as backend events: streamed
//! chunks and whole answers of chat completions and completions, their
//! logprobs in either shape, usage, and their error bodies in the shapes
//! servers use.

use actix_web::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::{Event, Usage};
use crate::error::ApiError;
use crate::openai::{TokenLogprobJson, TopLogprob};

/// One `chat.completion.chunk` or streamed `text_completion` as events.
pub(super) fn chunk_events(chunk: &Value, chat: bool) -> Vec<Event> {
    if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
        return vec![Event::Error(error_from_body(&json!({"error": error}), StatusCode::BAD_GATEWAY))];
    }
    let mut out = Vec::new();
    for choice in chunk["choices"].as_array().into_iter().flatten() {
        let index = choice["index"].as_u64().unwrap_or(0) as usize;
        let (text, logprobs) = if chat {
            (choice["delta"]["content"].as_str(), chat_entries(&choice["logprobs"]))
        } else {
            (choice["text"].as_str(), legacy_entries(&choice["logprobs"]))
        };
        out.extend(text_event(index, text, logprobs));
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let position = call["index"].as_u64().unwrap_or(0) as usize;
            let name = call["function"]["name"].as_str();
            if call["id"].is_string() || name.is_some() {
                out.push(Event::ToolCallStart {
                    index,
                    call: position,
                    id: call["id"].as_str().map_or_else(|| crate::state::random_id("call"), str::to_owned),
                    name: name.unwrap_or_default().to_owned(),
                });
            }
            if let Some(fragment) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                out.push(Event::ToolCallArguments {
                    index,
                    call: position,
                    fragment: fragment.to_owned(),
                });
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.push(Event::Finish {
                index,
                reason: reason.to_owned(),
            });
        }
    }
    if let Some(usage) = usage(&chunk["usage"]) {
        out.push(Event::Usage(usage));
    }
    out
}

/// A whole `chat.completion` or `text_completion` as events.
pub(super) fn response_events(answer: &Value, chat: bool) -> Vec<Event> {
    let mut out = Vec::new();
    for choice in answer["choices"].as_array().into_iter().flatten() {
        let index = choice["index"].as_u64().unwrap_or(0) as usize;
        let (text, logprobs) = if chat {
            (choice["message"]["content"].as_str(), chat_entries(&choice["logprobs"]))
        } else {
            (choice["text"].as_str(), legacy_entries(&choice["logprobs"]))
        };
        out.extend(text_event(index, text, logprobs));
        for (position, call) in choice["message"]["tool_calls"].as_array().into_iter().flatten().enumerate() {
            out.push(Event::ToolCallStart {
                index,
                call: position,
                id: call["id"].as_str().map_or_else(|| crate::state::random_id("call"), str::to_owned),
                name: call["function"]["name"].as_str().unwrap_or_default().to_owned(),
            });
            out.push(Event::ToolCallArguments {
                index,
                call: position,
                fragment: call["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
            });
        }
        out.push(Event::Finish {
            index,
            reason: choice["finish_reason"].as_str().unwrap_or("stop").to_owned(),
        });
    }
    out.extend(usage(&answer["usage"]).map(Event::Usage));
    out
}

/// An embeddings answer (`encoding_format: "float"`, which Ember asks
/// for) as events.
pub(super) fn embedding_events(answer: &Value) -> Vec<Event> {
    let mut out = Vec::new();
    for (position, item) in answer["data"].as_array().into_iter().flatten().enumerate() {
        let vector = item["embedding"].as_array().into_iter().flatten().filter_map(Value::as_f64).map(|x| x as f32).collect();
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        out.push(Event::Embedding { index, vector });
    }
    out.extend(usage(&answer["usage"]).map(Event::Usage));
    out
}

/// A choice's text and its logprobs, when there is either.
fn text_event(index: usize, text: Option<&str>, logprobs: Vec<TokenLogprobJson>) -> Option<Event> {
    let text = text.unwrap_or_default();
    (!text.is_empty() || !logprobs.is_empty()).then(|| Event::Text {
        index,
        text: text.to_owned(),
        logprobs,
    })
}

fn usage(value: &Value) -> Option<Usage> {
    let object = value.as_object()?;
    let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0) as usize;
    Some(Usage {
        prompt_tokens: count(object.get("prompt_tokens")),
        completion_tokens: count(object.get("completion_tokens")),
        cached_tokens: count(value.pointer("/prompt_tokens_details/cached_tokens")),
    })
}

/// Chat logprobs: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`.
fn chat_entries(logprobs: &Value) -> Vec<TokenLogprobJson> {
    match &logprobs["content"] {
        content @ Value::Array(_) => Vec::deserialize(content).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Completions' legacy logprobs: parallel `tokens`, `token_logprobs` and
/// `top_logprobs` (maps from token text to logprob).
fn legacy_entries(logprobs: &Value) -> Vec<TokenLogprobJson> {
    let Some(tokens) = logprobs["tokens"].as_array() else {
        return Vec::new();
    };
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| TokenLogprobJson {
            token: token.as_str().unwrap_or_default().to_owned(),
            logprob: logprobs["token_logprobs"][i].as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
            bytes: None,
            top_logprobs: logprobs["top_logprobs"][i]
                .as_object()
                .map(|top| {
                    top.iter()
                        .map(|(token, p)| TopLogprob {
                            token: token.clone(),
                            logprob: p.as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                            bytes: None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// An error the gateway itself reports about an upstream.
pub(super) fn gateway_error(status: StatusCode, message: String) -> ApiError {
    ApiError {
        status,
        ..ApiError::internal(message)
    }
}

/// An upstream's error answer in OpenAI's shape. Its status is kept where
/// it means the same to the client (the request was bad, too long, too
/// many); a refused key is Ember's configuration, not the client's, so it
/// becomes 502.
pub(super) fn upstream_error(name: &str, status: u16, body: &[u8]) -> ApiError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(body)}));
    let status = match status {
        401 | 403 | 407 => StatusCode::BAD_GATEWAY,
        s => StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
    };
    let mut error = error_from_body(&parsed, status);
    if status.is_server_error() || error.message.is_empty() {
        error.message = format!("upstream `{name}` answered {status}: {}", error.message);
    }
    error
}

/// The message, type, param and code of the error shapes servers use:
/// OpenAI's `{"error": {...}}`, vLLM's older flat `{"message", "type"}`,
/// TGI's `{"error": "..."}` and FastAPI's `{"detail": ...}`.
fn error_from_body(body: &Value, status: StatusCode) -> ApiError {
    let error = match &body["error"] {
        Value::Object(_) => &body["error"],
        _ => body,
    };
    let message = error["message"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .map(str::to_owned)
        .or_else(|| body.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_owned)))
        .unwrap_or_default();
    let kind = match error["type"].as_str() {
        Some("invalid_request_error") | Some("BadRequestError") => "invalid_request_error",
        Some("authentication_error") => "authentication_error",
        Some("rate_limit_error") => "rate_limit_error",
        Some("not_found_error") | Some("NotFoundError") => "invalid_request_error",
        _ if status.is_client_error() => "invalid_request_error",
        _ => "server_error",
    };
    let code = match error["code"].as_str() {
        Some("context_length_exceeded") => Some("context_length_exceeded"),
        Some("model_not_found") => Some("model_not_found"),
        Some("rate_limit_exceeded") => Some("rate_limit_exceeded"),
        Some("unsupported_parameter") => Some("unsupported_parameter"),
        _ => None,
    };
    ApiError {
        status,
        message,
        kind,
        param: error["param"].as_str().map(str::to_owned),
        code,
        retry_after: None,
    }
}
