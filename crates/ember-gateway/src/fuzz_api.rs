//! The crate-private request handling the cargo-fuzz targets in `fuzz/`
//! drive, re-exported as is. Not an API: nothing here is stable, and the
//! server does not use this module.

use actix_web::web;
use ember_engine::ChatTemplate;
use serde_json::Value;

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, SamplingFields};

pub use crate::params::streaming;
pub use crate::backend::local::response_format::content_schema;
pub use crate::backend::local::tool_parser::{ParsedCall, ToolCallParser, ToolEvent, parse_all};
pub use crate::backend::local::tools::{CLOSE_TAG, OPEN_TAG, Tags, Tools};

/// A chat-completions body as the handler parses it (`parse_body`).
pub fn parse_chat_request(body: Value) -> Result<(ChatCompletionRequest, SamplingFields), ApiError> {
    crate::params::parse_body(web::Json(body)).map(|(request, sampling, _)| (request, sampling))
}

/// The handler's message checks and template rendering (`render_chat`).
pub fn render_chat(
    template: &ChatTemplate,
    request: &ChatCompletionRequest,
    max_messages: usize,
    tools: Option<&Tools>,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    crate::backend::local::prompt::render_chat(template, &request.messages, max_messages, tools, add_generation_prompt)
}
