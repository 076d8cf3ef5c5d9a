//! Errors as OpenAI clients expect them: `{"error": {"message", "type",
//! "param", "code"}}` with the matching HTTP status, so the official SDKs
//! raise their typed exceptions (`BadRequestError`, `AuthenticationError`,
//! `RateLimitError`, ...).

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use ember_engine::EngineError;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 about one request field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 for a field Ember knows but does not implement.
    pub fn unsupported(param: &str, why: &str) -> Self {
        Self {
            code: Some("unsupported_parameter"),
            ..Self::invalid(param, format!("`{param}` is not supported by Ember: {why}"))
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
            )
        }
    }

    pub fn model_not_found(model: &str, served: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the model `{model}` does not exist; this server serves `{served}`"),
            )
        }
    }

    pub fn loading() -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the model is still loading")
        }
    }

    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
    }

    pub fn timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", "the request took longer than the server's timeout")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The JSON body, also used for errors inside an SSE stream.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header((RETRY_AFTER, HeaderValue::from(secs)));
        }
        response.json(self.body())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::QueueFull { .. } => Self {
                retry_after: Some(1),
                code: Some("queue_full"),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", e.to_string())
            },
            EngineError::ContextLength { .. } => Self {
                code: Some("context_length_exceeded"),
                ..Self::invalid("messages", e.to_string())
            },
            EngineError::InvalidParameter { field, .. } => Self::invalid(*field, e.to_string()),
            EngineError::EmptyPrompt => Self::invalid("prompt", e.to_string()),
            EngineError::Encode(_) | EngineError::LogitsProcessor(_) | EngineError::Grammar(_) => {
                Self::bad_request(e.to_string())
            }
            EngineError::EngineStopped => Self::shutting_down(),
            _ => Self::internal(e.to_string()),
        }
    }
}

impl From<ember_engine::chat_template::ChatTemplateError> for ApiError {
    fn from(e: ember_engine::chat_template::ChatTemplateError) -> Self {
        // The template raising is how it rejects a conversation it cannot render.
        Self::invalid("messages", format!("the chat template cannot render these messages: {e}"))
    }
}

/// Malformed or mistyped JSON bodies, in OpenAI's shape. Serde's message
/// names the field (`unknown field \`foo\``, `invalid type ... at line 1`).
pub fn json_error(err: JsonPayloadError, req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::too_large(*limit)
        }
        JsonPayloadError::ContentType => ApiError::bad_request("the body must be JSON (Content-Type: application/json)"),
        JsonPayloadError::Deserialize(e) => ApiError::bad_request(format!("invalid request body: {e}")),
        other => ApiError::bad_request(format!("invalid request body: {other}")),
    };
    let response = crate::messages::error::error_response_for(req.path(), api);
    actix_web::error::InternalError::from_response(err, response).into()
}

impl ApiError {
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the server's limit of {limit} bytes"),
        )
    }
}
