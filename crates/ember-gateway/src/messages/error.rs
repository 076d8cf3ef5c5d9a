//! Errors as Anthropic's SDKs expect them: `{"type": "error", "error":
//! {"type", "message"}}` with the HTTP status, so `anthropic` raises its
//! typed exceptions (`BadRequestError`, `AuthenticationError`, ...).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Value, json};

use crate::error::ApiError;

/// An `ApiError` answered in Anthropic's shape.
#[derive(Debug)]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl std::fmt::Display for AnthropicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl ResponseError for AnthropicError {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.0.error_response();
        let body = anthropic_error_body(&self.0).to_string();
        response.headers_mut().insert(
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::HeaderValue::from_static("application/json"),
        );
        response.set_body(body).map_into_boxed_body()
    }
}

/// Whether `path` is Anthropic's API, whose errors have Anthropic's shape.
fn is_anthropic(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// `error` as the API at `path` shapes it: for the errors raised before a
/// handler runs (auth, malformed JSON, unknown routes).
pub fn error_response_for(path: &str, error: ApiError) -> HttpResponse {
    if is_anthropic(path) {
        AnthropicError(error).error_response()
    } else {
        error.error_response()
    }
}

/// Anthropic's error type for a status (docs: "HTTP errors").
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// The JSON body, also sent as a stream's `error` event. Anthropic's
/// errors have no `param`, so the field goes into the message.
pub fn anthropic_error_body(error: &ApiError) -> Value {
    let message = match &error.param {
        Some(param) if !error.message.contains(param.as_str()) => format!("{param}: {}", error.message),
        _ => error.message.clone(),
    };
    json!({"type": "error", "error": {"type": error_type(error.status), "message": message}})
}
