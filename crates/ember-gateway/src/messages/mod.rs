//! Anthropic's Messages API, `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`, for the `anthropic` SDKs and Claude
//! Code: each request is translated into a chat completion (`request`),
//! answered by whichever backend serves the model, and its events shaped
//! back into Anthropic's message or stream (`output`), errors included
//! (`error`).

pub mod error;
mod output;
mod request;

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::backend::local::prompt::chat_prompt;
use crate::backend::local::tools::Tools;
use crate::error::ApiError;
use crate::params::off_workers;
use crate::state::AppState;
use crate::streams::{collect, named_sse_body, sse_response};
use crate::translate::{chat_request, parse_chat, renamed};
use error::AnthropicError;
use request::RENAMES;

fn object(body: web::Json<Value>) -> Result<serde_json::Map<String, Value>, ApiError> {
    match body.into_inner() {
        Value::Object(body) => Ok(body),
        _ => Err(ApiError::bad_request("the request body must be a JSON object")),
    }
}

/// Anthropic's ids: `msg_` and 24 hex digits.
fn message_id() -> String {
    format!("msg_{:024x}", rand::random::<u128>() >> 32)
}

pub async fn create(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, AnthropicError> {
    let req = request::parse(&object(body)?, true)?;
    let stream = req.stream.unwrap_or(false);
    let request = chat_request(request::chat_body(&req)?, RENAMES)?;
    let (id, model) = (message_id(), req.model);
    let events = state.start(&model, request).await.map_err(|e| renamed(e, RENAMES))?;
    if stream {
        return Ok(sse_response(named_sse_body(events, output::MessageStream::new(id, model))));
    }
    let (choices, usage) = collect(events).await.map_err(|e| renamed(e, RENAMES))?;
    let choice = choices.into_iter().next().unwrap_or_default();
    Ok(HttpResponse::Ok().json(output::message(&id, &model, choice, &usage)))
}

/// The prompt's tokens as the model in this server would see them: the
/// conversation rendered by its chat template with the tools.
pub async fn count_tokens(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, AnthropicError> {
    let req = request::parse(&object(body)?, false)?;
    let (chat, _, _) = parse_chat(request::chat_body(&req)?, RENAMES)?;
    let local = state.router.local(Some(&req.model))?;
    let engine = local.engine()?.clone();
    let limit = local.max_messages();
    let tools = Tools::from_request(chat.tools.as_ref(), chat.tool_choice.as_ref(), chat.parallel_tool_calls.as_ref())
        .map_err(|e| renamed(e, RENAMES))?;
    let count = off_workers(move || Ok(chat_prompt(engine.model(), &chat.messages, limit, tools.as_ref(), true, false)?.ids.len()))
        .await
        .map_err(|e| renamed(e, RENAMES))?;
    Ok(HttpResponse::Ok().json(json!({"input_tokens": count})))
}
