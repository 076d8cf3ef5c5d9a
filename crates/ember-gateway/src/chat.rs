//! `POST /v1/chat/completions`: the request's shape checked, a backend's
//! events shaped into one `chat.completion` or a stream of
//! `chat.completion.chunk` events.

use actix_web::{HttpResponse, web};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::backend::{BackendRequest, Endpoint, Event, EventStream};
use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatLogprobs, TokenLogprobJson};
use crate::params::{parse_body, streaming};
use crate::state::{AppState, Head};
use crate::streams::{collect, sse_body, sse_event, sse_response};

pub async fn chat_completions(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling, body): (ChatCompletionRequest, _, _) = parse_body(body)?;
    let (stream, include_usage) = streaming(&sampling)?;
    let logprobs = req.logprobs.unwrap_or(false);
    let head = Head::new("chatcmpl", &req.model);
    let request = BackendRequest {
        endpoint: Endpoint::Chat(Box::new(req)),
        sampling,
        body,
    };
    let n = request.n();
    let events = state.start(&head.model, request).await?;
    if stream {
        return Ok(sse_response(chat_sse(events, head, n, include_usage)));
    }
    let (choices, usage) = collect(events).await?;
    let choices: Vec<Value> = choices
        .into_iter()
        .enumerate()
        .map(|(index, choice)| {
            let content = if choice.text.is_empty() && !choice.calls.is_empty() {
                Value::Null
            } else {
                Value::String(choice.text)
            };
            let mut message = json!({"role": "assistant", "content": content});
            if !choice.calls.is_empty() {
                let calls: Vec<Value> = choice
                    .calls
                    .iter()
                    .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
                    .collect();
                message["tool_calls"] = json!(calls);
            }
            json!({
                "index": index,
                "message": message,
                "logprobs": logprobs.then(|| ChatLogprobs { content: choice.logprobs }),
                "finish_reason": choice.finish_reason,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": crate::state::fingerprint(),
        "choices": choices,
        "usage": crate::openai::Usage::from(usage),
    })))
}

/// `chat.completion.chunk` events: each choice's role first, then content
/// and tool-call deltas, a finish chunk per choice, the usage chunk if
/// asked, `[DONE]`.
fn chat_sse(
    events: EventStream,
    head: Head,
    n: usize,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut body = json!({
            "id": head.id,
            "object": "chat.completion.chunk",
            "created": head.created,
            "model": head.model,
            "system_fingerprint": crate::state::fingerprint(),
            "choices": choices,
        });
        if include_usage {
            body["usage"] = usage.unwrap_or(Value::Null);
        }
        body
    };
    let choice = |index: usize, delta: Value, logprobs: Option<ChatLogprobs>, reason: Option<&str>| {
        json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}])
    };
    let roles: Vec<Value> = (0..n)
        .map(|index| chunk(choice(index, json!({"role": "assistant", "content": ""}), None, None), None))
        .collect();
    let rest = sse_body(events, move |event| match event {
        Event::Text { index, text, logprobs } => {
            let logprobs = non_empty(logprobs);
            vec![chunk(choice(index, json!({"content": text}), logprobs, None), None)]
        }
        Event::ToolCallStart { index, call, id, name } => {
            let delta = json!({"tool_calls": [{
                "index": call, "id": id, "type": "function", "function": {"name": name, "arguments": ""}
            }]});
            vec![chunk(choice(index, delta, None, None), None)]
        }
        Event::ToolCallArguments { index, call, fragment } => {
            let delta = json!({"tool_calls": [{"index": call, "function": {"arguments": fragment}}]});
            vec![chunk(choice(index, delta, None, None), None)]
        }
        Event::Finish { index, reason } => vec![chunk(choice(index, json!({}), None, Some(&reason)), None)],
        Event::Usage(usage) if include_usage => vec![chunk(json!([]), Some(json!(crate::openai::Usage::from(usage))))],
        Event::Usage(_) | Event::Error(_) | Event::Embedding { .. } => Vec::new(),
    });
    futures_util::stream::iter(roles.into_iter().map(|r| Ok(sse_event(&r)))).chain(rest)
}

fn non_empty(logprobs: Vec<TokenLogprobJson>) -> Option<ChatLogprobs> {
    (!logprobs.is_empty()).then_some(ChatLogprobs { content: logprobs })
}
