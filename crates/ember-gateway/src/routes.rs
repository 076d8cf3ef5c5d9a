//! The small routes: the seed's `/generate`, `/tokenize`, `/detokenize`,
//! `/v1/models`, `/health` and `/metrics`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::backend::local::prompt;
use crate::backend::router::Route;
use crate::backend::{BackendRequest, Endpoint, Event};
use crate::error::ApiError;
use crate::openai::{ChatMessage, CompletionRequest, KnownFields, PromptField};
use crate::params::{off_workers, parse_body};
use crate::state::AppState;
use crate::streams::{collect, sse_body, sse_response};
use crate::backend::local::tools::Tools;

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
    let (req, sampling, mut body): (GenerateRequest, _, _) = parse_body(body)?;
    if sampling.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "/generate returns one text; use /v1/completions for n > 1"));
    }
    // The seed API has no `model`: the model in this server, else the
    // first routed one; the request goes on as a completions request.
    let model = match state.router.local(None) {
        Ok(local) => local.served_name().to_owned(),
        Err(_) => state.router.routes().first().map(|r| r.name.clone()).ok_or_else(ApiError::loading)?,
    };
    let max_tokens = req.max_tokens.unwrap_or(128);
    body.insert("model".into(), json!(model));
    body.insert("max_tokens".into(), json!(max_tokens));
    let completion = CompletionRequest {
        model: model.clone(),
        prompt: PromptField::Text(req.prompt),
        max_tokens: Some(max_tokens),
        logprobs: None,
        echo: None,
        suffix: None,
        best_of: None,
        logit_bias: None,
    };
    let stream = sampling.stream.unwrap_or(false);
    let request = BackendRequest {
        endpoint: Endpoint::Completions(Box::new(completion)),
        sampling,
        body,
    };
    let events = state.start(&model, request).await?;
    if stream {
        let body = sse_body(events, |event| match event {
            Event::Text { text, .. } if text.is_empty() => None,
            Event::Text { text, .. } => Some(json!({"text": text})),
            Event::Finish { reason, .. } => Some(json!({"text": "", "finish_reason": reason})),
            _ => None,
        });
        return Ok(sse_response(body));
    }
    let (choices, usage) = collect(events).await?;
    let choice = choices.into_iter().next().unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({
        "text": choice.text,
        "finish_reason": choice.finish_reason,
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
    let (req, _, _): (TokenizeRequest, _, _) = parse_body(body)?;
    let local = state.router.local(req.model.as_deref())?.clone();
    let engine = local.engine()?.clone();
    let max_messages = local.max_messages();
    let max_model_len = engine.info().max_model_len;
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
                Ok(prompt::chat_prompt(info, &messages, max_messages, tools.as_ref(), add_generation_prompt, add_special_tokens)?.ids)
            }
            _ => Err(ApiError::bad_request("give exactly one of `prompt` and `messages`")),
        }
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "count": tokens.len(),
        "max_model_len": max_model_len,
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
    let (req, _, _): (DetokenizeRequest, _, _) = parse_body(body)?;
    let engine = state.router.local(req.model.as_deref())?.engine()?;
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

/// A route as `/v1/models` shows it; the window is the local engine's, or
/// the smallest an upstream replica reported.
fn model_card(state: &AppState, route: &Route) -> Value {
    let max_model_len = route
        .targets
        .iter()
        .filter_map(|t| match t.slot.backend.as_local() {
            Some(local) => local.engine().ok().map(|e| e.info().max_model_len),
            None => t.max_model_len,
        })
        .min();
    let owned_by = if route.targets.iter().all(|t| t.slot.backend.as_local().is_some()) { "ember" } else { "upstream" };
    let mut card = json!({
        "id": route.name,
        "object": "model",
        "created": state.started,
        "owned_by": owned_by,
        "max_model_len": max_model_len,
    });
    // The chat page marks `[IMPORTANT]` spans when the model here reads them.
    let sparse = route.targets.iter().any(|t| {
        t.slot.backend.as_local().and_then(|l| l.engine().ok()).is_some_and(|e| e.model().markers.is_some())
    });
    if sparse {
        card["sparse_attention"] = json!(true);
    }
    card
}

pub async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    let mut data = Vec::new();
    for route in state.router.routes() {
        data.push(model_card(&state, &route));
        for alias in &route.aliases {
            let mut card = model_card(&state, &route);
            card["id"] = json!(alias);
            data.push(card);
        }
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

pub async fn get_model(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let route = state.router.route(&id)?;
    let mut card = model_card(&state, &route);
    card["id"] = json!(id.as_str());
    Ok(HttpResponse::Ok().json(card))
}

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    if state.is_shutting_down() {
        HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}))
    } else if state.is_ready() {
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

/// Unknown routes answer in OpenAI's error shape too (Anthropic's under
/// `/v1/messages/`).
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    let error = ApiError {
        status: actix_web::http::StatusCode::NOT_FOUND,
        ..ApiError::bad_request("no such route")
    };
    crate::messages::error::error_response_for(req.path(), error)
}
