//! `POST /v1/completions`: raw prompts (text, token ids, or lists of
//! either), no chat template.

use actix_web::{HttpResponse, web};
use ember_engine::{EncodedPrompt, EngineHandle, FinishReason, TextTokenizer, TokenLogprob};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::openai::{CompletionRequest, PromptField};
use crate::params::{LengthFields, encode_prompts, generation_request, parse_body, reject_present, streaming, submit};
use crate::state::{AppState, fingerprint, random_id, unix_time};
use crate::streams::{Frame, collect, merge, sse_body, sse_response};

/// Most prompts in one request.
const MAX_PROMPTS: usize = 64;

pub async fn completions(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling): (CompletionRequest, _) = parse_body(body)?;
    let engine = state.engine()?.clone();
    state.check_model(&req.model)?;
    reject_present(&[
        ("echo", req.echo == Some(true), "the prompt is not echoed back"),
        ("suffix", req.suffix.as_ref().is_some_and(|s| !s.is_null()), "fill-in-the-middle is not implemented"),
        ("best_of", req.best_of.is_some_and(|b| b > 1), "use `n` instead"),
        ("logit_bias", req.logit_bias.is_some(), "logit biases are not implemented"),
    ])?;
    let (stream, include_usage) = streaming(&sampling)?;
    let tokenizer = engine.model().tokenizer.clone();
    let prompts = encoded_prompts(req.prompt, &engine).await?;
    let logprobs = req.logprobs.is_some();
    // OpenAI's default for completions.
    let max_tokens = req.max_tokens.unwrap_or(16);
    let mut streams = Vec::with_capacity(prompts.len());
    let mut n = 1;
    for prompt in prompts {
        let request = generation_request(
            prompt,
            &sampling,
            &engine.model().generation_defaults,
            Some(("max_tokens", max_tokens)),
            logprobs,
            req.logprobs.map(|k| ("logprobs", k)),
            Vec::new(),
        )?;
        n = request.n;
        // Dropping earlier streams on error cancels them.
        let fields = LengthFields {
            prompt: "prompt",
            max_tokens: "max_tokens",
        };
        streams.push(submit(&engine, request, fields).await?);
    }
    let items = merge(streams, n, state.limits.request_timeout);
    let (id, created, model) = (random_id("cmpl"), unix_time(), state.model_name.clone());
    if stream {
        let chunk = move |choices: Value, usage: Option<Value>| {
            let mut body = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
            if include_usage {
                body["usage"] = usage.unwrap_or(Value::Null);
            }
            body
        };
        let body = sse_body(items, move |frame| match frame {
            Frame::Delta { text, logprobs: lps, .. } if text.is_empty() && (lps.is_empty() || !logprobs) => None,
            Frame::Delta { index, text, logprobs: lps } => {
                let lp = logprobs.then(|| completion_logprobs(tokenizer.as_deref(), &lps));
                Some(chunk(json!([{"index": index, "text": text, "logprobs": lp, "finish_reason": null}]), None))
            }
            Frame::Finish { index, reason } => Some(chunk(
                json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]),
                None,
            )),
            Frame::Usage(usage) => include_usage.then(|| chunk(json!([]), Some(json!(crate::openai::Usage::from(usage))))),
        });
        return Ok(sse_response(body));
    }
    let (choices, usage) = collect(items).await?;
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, choice)| {
            json!({
                "index": index,
                "text": choice.text,
                "logprobs": logprobs.then(|| completion_logprobs(tokenizer.as_deref(), &choice.logprobs)),
                "finish_reason": choice.finish_reason.as_ref().map(FinishReason::as_str),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint(),
        "choices": choices,
        "usage": crate::openai::Usage::from(usage),
    })))
}

/// Every prompt as token ids, texts with their `[IMPORTANT]` spans.
async fn encoded_prompts(prompt: PromptField, engine: &EngineHandle) -> Result<Vec<EncodedPrompt>, ApiError> {
    let ids = |ids: Vec<u32>| EncodedPrompt {
        ids,
        global_spans: Vec::new(),
    };
    let prompts = match prompt {
        PromptField::Tokens(tokens) => vec![ids(tokens)],
        PromptField::TokenLists(lists) => lists.into_iter().map(ids).collect(),
        PromptField::Text(text) => encode_texts(vec![text], engine).await?,
        PromptField::Texts(texts) if texts.len() <= MAX_PROMPTS => encode_texts(texts, engine).await?,
        PromptField::Texts(_) => Vec::new(),
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid("prompt", format!("give between 1 and {MAX_PROMPTS} prompts")));
    }
    Ok(prompts)
}

async fn encode_texts(texts: Vec<String>, engine: &EngineHandle) -> Result<Vec<EncodedPrompt>, ApiError> {
    if engine.model().tokenizer.is_none() {
        return Err(ApiError::invalid("prompt", "this model has no tokenizer: send token ids"));
    }
    encode_prompts(engine.clone(), texts, true).await
}

/// The legacy logprobs shape: parallel lists plus `{token: logprob}` maps.
fn completion_logprobs(tokenizer: Option<&TextTokenizer>, logprobs: &[TokenLogprob]) -> Value {
    let text = |id: u32| tokenizer.and_then(|t| t.decode(&[id]).ok()).unwrap_or_else(|| id.to_string());
    let mut offset = 0;
    let mut text_offset = Vec::new();
    let mut tokens = Vec::new();
    for lp in logprobs {
        let t = text(lp.token);
        text_offset.push(offset);
        offset += t.len();
        tokens.push(t);
    }
    json!({
        "tokens": tokens,
        "token_logprobs": logprobs.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": logprobs.iter().map(|l| {
            l.top.iter().map(|&(id, p)| (text(id), json!(p))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}
