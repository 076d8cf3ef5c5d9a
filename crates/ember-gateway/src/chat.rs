//! `POST /v1/chat/completions`: messages through the model's own chat
//! template, then the engine; one JSON response or a stream of
//! `chat.completion.chunk` events.

use actix_web::{HttpResponse, web};
use ember_engine::{FinishReason, RenderOptions, TextTokenizer, TokenLogprob};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatLogprobs, ChatMessage, MessageContent, TokenLogprobJson, TopLogprob};
use crate::params::{encode, generation_request, parse_body, reject_present, streaming};
use crate::state::{AppState, fingerprint, random_id, unix_time};
use crate::streams::{Frame, collect, merge, sse_body, sse_event, sse_response};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub async fn chat_completions(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling): (ChatCompletionRequest, _) = parse_body(body)?;
    let engine = state.engine()?.clone();
    state.check_model(&req.model)?;
    reject_present(&[
        ("tools", req.tools.is_some(), "tool calls are not implemented yet"),
        ("tool_choice", req.tool_choice.is_some(), "tool calls are not implemented yet"),
        ("parallel_tool_calls", req.parallel_tool_calls.is_some(), "tool calls are not implemented yet"),
        ("functions", req.functions.is_some(), "deprecated, and tool calls are not implemented yet"),
        ("function_call", req.function_call.is_some(), "deprecated, and tool calls are not implemented yet"),
        ("response_format", req.response_format.is_some(), "structured outputs are not implemented yet"),
        ("logit_bias", req.logit_bias.is_some(), "logit biases are not implemented"),
        ("audio", req.audio.is_some(), "the model is text-only"),
        ("modalities", req.modalities.is_some(), "the model is text-only"),
        ("prediction", req.prediction.is_some(), "predicted outputs are not implemented"),
        ("reasoning_effort", req.reasoning_effort.is_some(), "the model has no reasoning-effort control"),
        ("web_search_options", req.web_search_options.is_some(), "no web search"),
        ("service_tier", req.service_tier.is_some(), "there is one tier"),
        ("store", req.store.as_ref().is_some_and(|v| v != &Value::Bool(false)), "completions are not stored"),
        ("metadata", req.metadata.is_some(), "completions are not stored"),
    ])?;
    let (stream, include_usage) = streaming(&sampling)?;
    let messages = template_messages(&req.messages, state.limits.max_messages)?;

    let model = engine.model();
    let (Some(tokenizer), Some(template)) = (model.tokenizer.clone(), model.chat_template.as_ref()) else {
        return Err(ApiError::bad_request(
            "this model has no tokenizer or chat template; use /v1/completions with token ids",
        ));
    };
    let rendered = template.render(RenderOptions {
        messages: &messages,
        tools: None::<&[Value]>,
        add_generation_prompt: true,
    })?;
    let prompt = encode(tokenizer.clone(), rendered, false).await?;

    let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => Some(("max_completion_tokens", m)),
        (None, Some(m)) => Some(("max_tokens", m)),
        (None, None) => None,
    };
    let logprobs = req.logprobs.unwrap_or(false);
    let request = generation_request(
        prompt,
        &sampling,
        max_tokens,
        logprobs,
        req.top_logprobs.map(|k| ("top_logprobs", k)),
        model.chat_stop_ids(),
    )?;
    let n = request.n;
    let events = engine.submit(request)?;
    let items = merge(vec![events], n, state.limits.request_timeout);
    let head = Head {
        id: random_id("chatcmpl"),
        created: unix_time(),
        model: state.model_name.clone(),
    };
    if stream {
        let body = chat_sse(items, head, n, include_usage, logprobs, tokenizer);
        return Ok(sse_response(body));
    }
    let (choices, usage) = collect(items).await?;
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, choice)| {
            json!({
                "index": index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": logprobs.then(|| chat_logprobs(&tokenizer, &choice.logprobs)),
                "finish_reason": choice.finish_reason.as_ref().map(FinishReason::as_str),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": crate::openai::Usage::from(usage),
    })))
}

/// The messages as the template sees them (Hugging Face's dict shape).
fn template_messages(messages: &[ChatMessage], limit: usize) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    if messages.len() > limit {
        return Err(ApiError::invalid("messages", format!("at most {limit} messages per request")));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("unknown role `{}`; expected one of {}", m.role, ROLES.join(", ")),
                ));
            }
            if m.tool_calls.is_some() {
                return Err(ApiError::unsupported(&format!("messages[{i}].tool_calls"), "tool calls are not implemented yet"));
            }
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.kind.as_str(), &part.text) {
                            ("text", Some(text)) => texts.push(text.as_str()),
                            ("text", None) => {
                                return Err(ApiError::invalid(format!("messages[{i}].content[{j}].text"), "a text part needs `text`"));
                            }
                            (other, _) => {
                                return Err(ApiError::unsupported(
                                    &format!("messages[{i}].content[{j}].type"),
                                    &format!("`{other}` parts are not supported; the model reads text"),
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            if m.content.is_none() && m.role != "assistant" {
                return Err(ApiError::invalid(format!("messages[{i}].content"), "`content` is required"));
            }
            // OpenAI's `developer` role is the system prompt of newer models.
            let role = if m.role == "developer" { "system" } else { m.role.as_str() };
            let mut message = json!({"role": role, "content": content});
            if let Some(name) = &m.name {
                message["name"] = json!(name);
            }
            if let Some(id) = &m.tool_call_id {
                message["tool_call_id"] = json!(id);
            }
            if let Some(reasoning) = &m.reasoning_content {
                message["reasoning_content"] = json!(reasoning);
            }
            Ok(message)
        })
        .collect()
}

struct Head {
    id: String,
    created: u64,
    model: String,
}

/// OpenAI's logprobs: the token's text and bytes, and its alternatives.
fn chat_logprobs(tokenizer: &TextTokenizer, logprobs: &[TokenLogprob]) -> ChatLogprobs {
    let text = |id: u32| tokenizer.decode(&[id]).unwrap_or_default();
    ChatLogprobs {
        content: logprobs
            .iter()
            .map(|lp| {
                let token = text(lp.token);
                TokenLogprobJson {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob: lp.logprob,
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|&(id, logprob)| {
                            let token = text(id);
                            TopLogprob {
                                bytes: token.as_bytes().to_vec(),
                                token,
                                logprob,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// `chat.completion.chunk` events: each choice's role first, then content
/// deltas, a finish chunk per choice, the usage chunk if asked, `[DONE]`.
fn chat_sse(
    items: crate::streams::ItemStream,
    head: Head,
    n: usize,
    include_usage: bool,
    logprobs: bool,
    tokenizer: std::sync::Arc<TextTokenizer>,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut body = json!({
            "id": head.id,
            "object": "chat.completion.chunk",
            "created": head.created,
            "model": head.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        });
        if include_usage {
            body["usage"] = usage.unwrap_or(Value::Null);
        }
        body
    };
    let roles: Vec<Value> = (0..n)
        .map(|index| {
            chunk(
                json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
                None,
            )
        })
        .collect();
    let rest = sse_body(items, move |frame| match frame {
        Frame::Delta { text, logprobs: lps, .. } if text.is_empty() && (lps.is_empty() || !logprobs) => None,
        Frame::Delta { index, text, logprobs: lps } => {
            let lp = logprobs.then(|| chat_logprobs(&tokenizer, &lps));
            Some(chunk(
                json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]),
                None,
            ))
        }
        Frame::Finish { index, reason } => Some(chunk(
            json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]),
            None,
        )),
        Frame::Usage(usage) => include_usage.then(|| chunk(json!([]), Some(json!(crate::openai::Usage::from(usage))))),
    });
    futures_util::stream::iter(roles.into_iter().map(|r| Ok(sse_event(&r)))).chain(rest)
}
