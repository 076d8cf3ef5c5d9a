//! The small routes: the seed's `/generate`, `/tokenize`, `/detokenize`,
//! `/v1/models`, `/health` and `/metrics`.

use actix_web::{HttpResponse, web};
use ember_engine::FinishReason;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::chat_prompt;
use crate::error::ApiError;
use crate::openai::{ChatMessage, KnownFields};
use crate::params::{LengthFields, encode_prompts, generation_request, off_workers, parse_body, submit};
use crate::state::AppState;
use crate::streams::{Frame, collect, merge, sse_body, sse_response};
use crate::tools::Tools;

/// The seed API: `{"prompt", "max_tokens", "temperature", "top_p", "stream"}` -> `{"text"}`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    prompt: String,
    max_tokens: Option<i64>,
}

impl KnownFields for GenerateRequest {
    const FIELDS: &'static [&'static str] = &["prompt", "max_tokens"];
}

pub async fn generate(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, sampling): (GenerateRequest, _) = parse_body(body)?;
    let engine = state.engine()?.clone();
    if engine.model().tokenizer.is_none() {
        return Err(ApiError::bad_request("this model has no tokenizer"));
    }
    let prompt = encode_prompts(engine.clone(), vec![req.prompt], true)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let request = generation_request(
        prompt,
        &sampling,
        &engine.model().generation_defaults,
        Some(("max_tokens", req.max_tokens.unwrap_or(128))),
        false,
        None,
        Vec::new(),
    )?;
    if request.n != 1 {
        return Err(ApiError::invalid("n", "/generate returns one text; use /v1/completions for n > 1"));
    }
    let fields = LengthFields {
        prompt: "prompt",
        max_tokens: "max_tokens",
    };
    let items = merge(vec![submit(&engine, request, fields).await?], 1, state.limits.request_timeout);
    if sampling.stream.unwrap_or(false) {
        let body = sse_body(items, |frame| match frame {
            Frame::Delta { text, .. } if text.is_empty() => None,
            Frame::Delta { text, .. } => Some(json!({"text": text})),
            Frame::Finish { reason, .. } => Some(json!({"text": "", "finish_reason": reason})),
            Frame::Usage(_) => None,
        });
        return Ok(sse_response(body));
    }
    let (choices, usage) = collect(items).await?;
    let choice = choices.into_iter().next().unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({
        "text": choice.text,
        "finish_reason": choice.finish_reason.as_ref().map(FinishReason::as_str),
        "usage": crate::openai::Usage::from(usage),
    })))
}

/// `{"prompt": "..."}` or `{"messages": [...], "tools": [...]}` (rendered
/// exactly as a chat completion renders them).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    tools: Option<Value>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

impl KnownFields for TokenizeRequest {
    const SAMPLING: bool = false;
    const FIELDS: &'static [&'static str] = &[
        "model",
        "prompt",
        "messages",
        "tools",
        "add_special_tokens",
        "add_generation_prompt",
    ];
}

pub async fn tokenize(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, _): (TokenizeRequest, _) = parse_body(body)?;
    let engine = state.engine()?.clone();
    if let Some(model) = &req.model {
        state.check_model(model)?;
    }
    let max_messages = state.limits.max_messages;
    // The prompt the model would get: `[IMPORTANT]` markers are taken out
    // under sparse attention, as a generation request takes them out.
    let tokens = off_workers(move || {
        let info = engine.model();
        if info.tokenizer.is_none() {
            return Err(ApiError::bad_request("this model has no tokenizer"));
        }
        match (req.prompt, req.messages) {
            (Some(prompt), None) => Ok(info.encode_prompt(&info.mark_important(&prompt), req.add_special_tokens.unwrap_or(true))?.ids),
            (None, Some(messages)) => {
                if info.chat_template.is_none() {
                    return Err(ApiError::bad_request("this model has no chat template"));
                }
                let tools = Tools::from_request(req.tools.as_ref(), None, None)?;
                let add_generation_prompt = req.add_generation_prompt.unwrap_or(true);
                let add_special_tokens = req.add_special_tokens.unwrap_or(false);
                Ok(chat_prompt(info, &messages, max_messages, tools.as_ref(), add_generation_prompt, add_special_tokens)?.ids)
            }
            _ => Err(ApiError::bad_request("give exactly one of `prompt` and `messages`")),
        }
    })
    .await?;
    let engine = state.engine()?;
    Ok(HttpResponse::Ok().json(json!({
        "count": tokens.len(),
        "max_model_len": engine.info().max_model_len,
        "tokens": tokens,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

impl KnownFields for DetokenizeRequest {
    const SAMPLING: bool = false;
    const FIELDS: &'static [&'static str] = &["model", "tokens"];
}

pub async fn detokenize(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let (req, _): (DetokenizeRequest, _) = parse_body(body)?;
    let engine = state.engine()?;
    if let Some(model) = &req.model {
        state.check_model(model)?;
    }
    let info = engine.model();
    let tokenizer = info.tokenizer.as_ref().ok_or_else(|| ApiError::bad_request("this model has no tokenizer"))?;
    let vocab = info.config.vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid("tokens", format!("token id {bad} is outside the vocabulary (size {vocab})")));
    }
    let tokenizer = tokenizer.clone();
    let text = off_workers(move || Ok(tokenizer.decode(&req.tokens)?)).await?;
    Ok(HttpResponse::Ok().json(json!({"prompt": text})))
}

fn model_card(state: &AppState) -> Value {
    let max_model_len = state.engine().ok().map(|e| e.info().max_model_len);
    json!({
        "id": state.model_name,
        "object": "model",
        "created": state.started,
        "owned_by": "ember",
        "max_model_len": max_model_len,
    })
}

pub async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": [model_card(&state)]}))
}

pub async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    state.check_model(&id)?;
    Ok(HttpResponse::Ok().json(model_card(&state)))
}

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    if state.is_shutting_down() {
        HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}))
    } else if state.is_loaded() {
        HttpResponse::Ok().json(json!({"status": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({"status": "loading"}))
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// Unknown routes answer in OpenAI's error shape too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError {
        status: actix_web::http::StatusCode::NOT_FOUND,
        ..ApiError::bad_request("no such route")
    })
}
