//! `POST /v1/completions`: raw prompts (text, token ids, or lists of
//! either), no chat template; a backend's events shaped into one
//! `text_completion` or a stream of them.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::backend::{BackendRequest, Endpoint, Event};
use crate::error::ApiError;
use crate::openai::{CompletionRequest, TokenLogprobJson};
use crate::params::{parse_body, streaming};
use crate::state::{AppState, Head};
use crate::streams::{collect, sse_body, sse_response};

pub async fn completions(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling, body): (CompletionRequest, _, _) = parse_body(body)?;
    let (stream, include_usage) = streaming(&sampling)?;
    let logprobs = req.logprobs.is_some();
    let head = Head::new("cmpl", &req.model);
    let request = BackendRequest {
        endpoint: Endpoint::Completions(Box::new(req)),
        sampling,
        body,
    };
    let events = state.start(&head.model, request).await?;
    if stream {
        let Head { id, created, model } = head;
        let chunk = move |choices: Value, usage: Option<Value>| {
            let mut body = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
            if include_usage {
                body["usage"] = usage.unwrap_or(Value::Null);
            }
            body
        };
        // Each choice's text offsets run on from its earlier chunks.
        let mut offsets: HashMap<usize, usize> = HashMap::new();
        let body = sse_body(events, move |event| match event {
            Event::Text { index, text, logprobs: lps } => {
                let offset = offsets.entry(index).or_default();
                let lp = logprobs.then(|| legacy_logprobs(&lps, offset));
                vec![chunk(json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": null}]), None)]
            }
            Event::Finish { index, reason } => vec![chunk(
                json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]),
                None,
            )],
            Event::Usage(usage) if include_usage => vec![chunk(json!([]), Some(json!(crate::openai::Usage::from(usage))))],
            _ => Vec::new(),
        });
        return Ok(sse_response(body));
    }
    let (choices, usage) = collect(events).await?;
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, choice)| {
            json!({
                "index": index,
                "text": choice.text,
                "logprobs": logprobs.then(|| legacy_logprobs(&choice.logprobs, &mut 0)),
                "finish_reason": choice.finish_reason,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "system_fingerprint": crate::state::fingerprint(),
        "choices": choices,
        "usage": crate::openai::Usage::from(usage),
    })))
}

/// The legacy logprobs shape: parallel lists plus `{token: logprob}` maps,
/// text offsets counted on from `offset`.
fn legacy_logprobs(logprobs: &[TokenLogprobJson], offset: &mut usize) -> Value {
    let mut text_offset = Vec::with_capacity(logprobs.len());
    for lp in logprobs {
        text_offset.push(*offset);
        *offset += lp.token.len();
    }
    json!({
        "tokens": logprobs.iter().map(|l| l.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": logprobs.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": logprobs.iter().map(|l| {
            l.top_logprobs.iter().map(|t| (t.token.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}
