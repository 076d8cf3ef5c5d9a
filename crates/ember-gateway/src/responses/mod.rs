//! OpenAI's Responses API: `POST /v1/responses` and `GET`/`DELETE
//! /v1/responses/{id}`. A request is translated into a chat completion
//! (`request`), answered by whichever backend serves the model, and its
//! events shaped into a response object or the Responses event stream
//! (`output`); finished responses are kept in a bounded store (`store`) so
//! `previous_response_id` can continue a conversation.

mod output;
mod request;
pub mod store;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::state::{AppState, unix_time};
use crate::streams::{collect, named_sse_body, sse_response};
use crate::translate::{chat_request, renamed};
use output::{Draft, ResponseStream, items};
use request::{RENAMES, ResponsesRequest};

pub async fn create(state: web::Data<AppState>, body: web::Json<Value>) -> Result<HttpResponse, ApiError> {
    let Value::Object(body) = body.into_inner() else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let req = request::parse(&body)?;
    let history = match &req.previous_response_id {
        Some(id) => {
            let stored = state.responses.get(id).ok_or_else(|| not_found(id, Some("previous_response_id")))?;
            stored.conversation
        }
        None => Vec::new(),
    };
    let input = request::input_messages(req.input.as_ref().unwrap_or(&Value::Null))?;
    let request = chat_request(request::chat_body(&req, &history, &input)?, RENAMES)?;
    let store = req.store.unwrap_or(true) && state.responses.enabled();
    let mut conversation = history;
    conversation.extend(input);
    let draft = Draft {
        id: format!("resp_{:032x}", rand::random::<u128>()),
        created_at: unix_time(),
        echo: echo(&req, store),
        conversation,
        store: store.then(|| state.responses.clone()),
    };
    let events = state.start(&req.model, request).await.map_err(|e| renamed(e, RENAMES))?;
    if req.stream.unwrap_or(false) {
        return Ok(sse_response(named_sse_body(events, ResponseStream::new(draft))));
    }
    let (choices, usage) = collect(events).await.map_err(|e| renamed(e, RENAMES))?;
    let choice = choices.into_iter().next().unwrap_or_default();
    Ok(HttpResponse::Ok().json(draft.finish(items(&choice), choice.finish_reason.as_deref(), &usage)))
}

pub async fn get(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let stored = state.responses.get(&id).ok_or_else(|| not_found(&id, None))?;
    Ok(HttpResponse::Ok().json(stored.response))
}

pub async fn delete(state: web::Data<AppState>, id: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if !state.responses.remove(&id) {
        return Err(not_found(&id, None));
    }
    Ok(HttpResponse::Ok().json(json!({"id": id.as_str(), "object": "response", "deleted": true})))
}

/// OpenAI's 404 for an unknown (or expired, or never stored) response.
fn not_found(id: &str, param: Option<&str>) -> ApiError {
    let what = if param.is_some() { "Previous response" } else { "Response" };
    ApiError {
        status: StatusCode::NOT_FOUND,
        param: param.map(str::to_owned),
        code: param.map(|_| "previous_response_not_found"),
        ..ApiError::bad_request(format!("{what} with id '{id}' not found."))
    }
}

/// The request fields a response object repeats, with OpenAI's defaults.
fn echo(req: &ResponsesRequest, stored: bool) -> Map<String, Value> {
    let text = match &req.text {
        Some(text) => json!({"format": text.format.clone().unwrap_or(json!({"type": "text"})), "verbosity": "medium"}),
        None => json!({"format": {"type": "text"}, "verbosity": "medium"}),
    };
    let fields = json!({
        "model": req.model,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": req.metadata.clone().unwrap_or_default(),
        "parallel_tool_calls": req.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": req.previous_response_id,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "tool_choice": req.tool_choice.clone().unwrap_or(json!("auto")),
        "tools": req.tools.clone().unwrap_or_default(),
        "text": text,
        "user": req.user,
        "safety_identifier": req.safety_identifier,
        "prompt_cache_key": req.prompt_cache_key,
        "store": stored,
        "truncation": "disabled",
        "reasoning": {"effort": null, "summary": null},
        "background": false,
        "service_tier": "default",
    });
    fields.as_object().cloned().unwrap_or_default()
}
