//! Request-wide concerns: API keys, and a request id with a log line and a
//! metrics count for every request.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::error::ApiError;
use crate::state::AppState;

/// Routes open without a key: health checks, and the chat page, which
/// asks for the key itself.
fn is_open(path: &str) -> bool {
    path == "/health" || crate::page::PATHS.contains(&path)
}

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// With keys configured, every route but `/health` needs `Authorization:
/// Bearer <key>` (or `x-api-key: <key>`). Keys are compared in constant time, all of them, so the
/// timing does not tell which key came close.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let keys = req.app_data::<web::Data<AppState>>().map(|s| s.api_keys.clone()).unwrap_or_default();
    if keys.is_empty() || is_open(req.path()) {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    // Anthropic's SDKs send the key as `x-api-key`.
    let header = |name| req.headers().get(name).and_then(|h| h.to_str().ok());
    let presented = header(AUTHORIZATION)
        .and_then(|h| h.strip_prefix("Bearer "))
        .or_else(|| header(X_API_KEY))
        .unwrap_or_default()
        .trim()
        .as_bytes()
        .to_vec();
    let mut ok = subtle::Choice::from(0);
    for key in &keys {
        ok |= key.as_bytes().ct_eq(&presented);
    }
    if bool::from(ok) && !presented.is_empty() {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let response = crate::messages::error::error_response_for(req.path(), ApiError::unauthorized());
    Ok(req.into_response(response))
}

/// Tags the request with an id (`x-request-id`), logs it with its status
/// and latency, and counts it by route and status.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = format!("{:016x}", rand::random::<u64>());
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let path = req.path().to_owned();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let span = tracing::info_span!("request", id = %id, method = %method, path = %path);
    let result = next.call(req).instrument(span.clone()).await;
    let mut response = result?.map_into_boxed_body();
    let status = response.status().as_u16();
    if let Some(state) = state {
        state.metrics.record_http(&route, status);
    }
    span.in_scope(|| tracing::info!(status, elapsed_ms = started.elapsed().as_millis() as u64, "handled"));
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(response)
}
