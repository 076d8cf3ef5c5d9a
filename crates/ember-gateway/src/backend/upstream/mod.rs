//! `OpenAiUpstream`: an OpenAI-compatible server (vLLM, SGLang, TGI, Ollama,
//! llama.cpp's server, another Ember, OpenAI) as a backend. The client's
//! body goes on as sent, with the upstream's model name and, when streaming,
//! `stream_options.include_usage` so the usage is always known (the handler
//! leaves the usage chunk out when the client did not ask for it). Answers
//! come back as backend events: streams chunk by chunk as they arrive.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::http::StatusCode;
use futures_util::stream::{self, StreamExt};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::backend::sse::SseDecoder;
use crate::backend::{Backend, BackendRequest, BoxFuture, Endpoint, Event, EventStream, ModelCard, Usage};
use crate::error::ApiError;
use answers::{chunk_events, embedding_events, gateway_error, response_events, upstream_error};

mod answers;

/// How to reach one upstream server.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// The API root, as OpenAI SDKs take it: `http://host:8000/v1`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; never logged.
    pub api_key: Option<String>,
    pub connect_timeout: Duration,
    /// Until the response's status and headers arrive.
    pub first_byte_timeout: Option<Duration>,
    /// The whole request, streamed body included.
    pub total_timeout: Option<Duration>,
    pub headers: Vec<(String, String)>,
    /// Speak HTTP/2 without TLS from the first byte (h2c, prior knowledge).
    pub http2: bool,
}

impl UpstreamConfig {
    pub fn new(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Some(Duration::from_secs(600)),
            total_timeout: None,
            headers: Vec::new(),
            http2: false,
        }
    }
}

/// The gateway's pooled HTTP clients, one per connection setting, shared by
/// every upstream so keep-alive connections are reused across requests.
#[derive(Debug, Default)]
pub struct HttpClients {
    clients: Mutex<HashMap<(Duration, bool), reqwest::Client>>,
}

impl HttpClients {
    pub fn client(&self, connect_timeout: Duration, http2: bool) -> Result<reqwest::Client, ApiError> {
        let mut clients = self.clients.lock().map_err(|_| ApiError::internal("HTTP client pool poisoned"))?;
        if let Some(client) = clients.get(&(connect_timeout, http2)) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90));
        if http2 {
            builder = builder.http2_prior_knowledge();
        }
        let client = builder.build().map_err(|e| ApiError::internal(format!("cannot build the HTTP client: {e}")))?;
        clients.insert((connect_timeout, http2), client.clone());
        Ok(client)
    }
}

pub struct OpenAiUpstream {
    config: UpstreamConfig,
    client: reqwest::Client,
    headers: HeaderMap,
}

impl std::fmt::Debug for OpenAiUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("OpenAiUpstream")
            .field("name", &self.config.name)
            .field("base_url", &self.config.base_url)
            .finish_non_exhaustive()
    }
}

/// A setting of an upstream that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("upstream `{name}`: {message}")]
pub struct UpstreamConfigError {
    pub name: String,
    pub message: String,
}

impl OpenAiUpstream {
    pub fn new(config: UpstreamConfig, clients: &HttpClients) -> Result<Self, UpstreamConfigError> {
        let bad = |message: String| UpstreamConfigError {
            name: config.name.clone(),
            message,
        };
        let url = reqwest::Url::parse(&config.base_url).map_err(|e| bad(format!("base URL {:?}: {e}", config.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("base URL {:?} is not http or https", config.base_url)));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|e| bad(format!("header name {name:?}: {e}")))?;
            let value = HeaderValue::try_from(value.as_str()).map_err(|e| bad(format!("header {name}: {e}")))?;
            headers.insert(name, value);
        }
        if let Some(key) = &config.api_key {
            let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| bad("the API key is not a valid header value".into()))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = clients.client(config.connect_timeout, config.http2).map_err(|e| bad(e.message))?;
        Ok(Self { config, client, headers })
    }

    pub fn base_url(&self) -> &str {
        &self.config.base_url
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url)
    }

    /// Sends a request and waits for its status, within the first-byte timeout.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let mut request = request.headers(self.headers.clone());
        if let Some(total) = self.config.total_timeout {
            request = request.timeout(total);
        }
        let sent = request.send();
        let response = match self.config.first_byte_timeout {
            Some(limit) => tokio::time::timeout(limit, sent).await.map_err(|_| {
                gateway_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream `{}` sent nothing within {} s", self.config.name, limit.as_secs_f64()),
                )
            })?,
            None => sent.await,
        };
        let response = response.map_err(|e| self.transport_error(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Err(upstream_error(&self.config.name, status, &body))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ApiError {
        let name = &self.config.name;
        if e.is_timeout() {
            gateway_error(StatusCode::GATEWAY_TIMEOUT, format!("upstream `{name}` timed out"))
        } else if e.is_connect() {
            gateway_error(StatusCode::BAD_GATEWAY, format!("upstream `{name}` is unreachable: {}", root_cause(e)))
        } else {
            gateway_error(StatusCode::BAD_GATEWAY, format!("upstream `{name}` failed: {}", root_cause(e)))
        }
    }
}

impl Backend for OpenAiUpstream {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn start<'a>(&'a self, model: &'a str, request: BackendRequest) -> BoxFuture<'a, Result<EventStream, ApiError>> {
        Box::pin(async move {
            let stream = request.stream();
            let chat = matches!(request.endpoint, Endpoint::Chat(_));
            let embeddings = matches!(request.endpoint, Endpoint::Embeddings(_));
            let mut body = request.body;
            body.insert("model".into(), Value::String(model.to_owned()));
            if stream {
                let options = body.entry("stream_options").or_insert_with(|| json!({}));
                if let Some(options) = options.as_object_mut() {
                    options.insert("include_usage".into(), Value::Bool(true));
                }
            }
            let path = match (chat, embeddings) {
                (true, _) => "chat/completions",
                (_, true) => "embeddings",
                _ => "completions",
            };
            let response = self.send(self.client.post(self.url(path)).json(&body)).await?;
            if stream {
                return Ok(sse_events(self.config.name.clone(), response, chat));
            }
            let bytes = response.bytes().await.map_err(|e| self.transport_error(&e))?;
            let answer: Value = serde_json::from_slice(&bytes).map_err(|e| {
                gateway_error(StatusCode::BAD_GATEWAY, format!("upstream `{}` sent a body that is not JSON: {e}", self.config.name))
            })?;
            let mut events = if embeddings { embedding_events(&answer) } else { response_events(&answer, chat) };
            if !events.iter().any(|e| matches!(e, Event::Usage(_))) {
                events.push(Event::Usage(Usage::default()));
            }
            Ok(Box::pin(stream::iter(events)) as EventStream)
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelCard>, ApiError>> {
        Box::pin(async move {
            let response = self.send(self.client.get(self.url("models"))).await?;
            let list: Value = response.json().await.map_err(|e| self.transport_error(&e))?;
            let cards = list["data"]
                .as_array()
                .map(|data| {
                    data.iter()
                        .filter_map(|m| {
                            Some(ModelCard {
                                id: m["id"].as_str()?.to_owned(),
                                max_model_len: m["max_model_len"].as_u64().map(|n| n as usize),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(cards)
        })
    }
}

/// An upstream's stream as events. The stream fails with an error event if
/// the upstream errs, closes before `[DONE]`, or sends something unreadable.
fn sse_events(name: String, response: reqwest::Response, chat: bool) -> EventStream {
    struct State<S> {
        body: S,
        decoder: SseDecoder,
        name: String,
        done: bool,
    }
    let state = State {
        body: response.bytes_stream(),
        decoder: SseDecoder::default(),
        name,
        done: false,
    };
    let batches = stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        let name = st.name.clone();
        let failed = |st: &mut State<_>, message: String| {
            st.done = true;
            vec![Event::Error(gateway_error(StatusCode::BAD_GATEWAY, message))]
        };
        let out = match st.body.next().await {
            None => failed(&mut st, format!("upstream `{name}` closed the stream before it was done")),
            Some(Err(e)) => {
                let message = format!("upstream `{name}` broke off the stream: {}", root_cause(&e));
                failed(&mut st, message)
            }
            Some(Ok(bytes)) => match st.decoder.push(&bytes) {
                Err(e) => failed(&mut st, format!("upstream `{name}` sent {e}")),
                Ok(payloads) => {
                    let mut out = Vec::new();
                    for payload in payloads {
                        if payload.trim() == "[DONE]" {
                            st.done = true;
                            break;
                        }
                        match serde_json::from_str::<Value>(&payload) {
                            Ok(chunk) => out.extend(chunk_events(&chunk, chat)),
                            Err(e) => {
                                out.extend(failed(&mut st, format!("upstream `{name}` sent a chunk that is not JSON: {e}")));
                                break;
                            }
                        }
                        if out.iter().any(|e| matches!(e, Event::Error(_))) {
                            st.done = true;
                            break;
                        }
                    }
                    out
                }
            },
        };
        Some((out, st))
    });
    Box::pin(batches.flat_map(stream::iter))
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests;
