//! The seam between the OpenAI handlers and whatever answers a request: the
//! engine in this process (`LocalBackend`) or an OpenAI-compatible server
//! (`OpenAiUpstream`). A handler checks the request's shape, the router picks
//! a backend, the backend answers with a stream of `Event`s, and the handler
//! shapes them into OpenAI's JSON or server-sent events. Handlers never know
//! which backend answered.

pub mod build;
pub mod health;
pub mod local;
pub mod router;
mod sse;
pub mod upstream;

use std::future::Future;
use std::pin::Pin;

use futures_util::Stream;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, SamplingFields, TokenLogprobJson};

/// Which OpenAI endpoint a request came to.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Chat(Box<ChatCompletionRequest>),
    Completions(Box<CompletionRequest>),
    Embeddings(Box<EmbeddingsRequest>),
}

/// A request whose shape the handler has checked: the typed fields, and the
/// client's JSON body as sent, so an upstream gets every field, vLLM's
/// extensions included.
#[derive(Debug, Clone)]
pub struct BackendRequest {
    pub endpoint: Endpoint,
    pub sampling: SamplingFields,
    pub body: Map<String, Value>,
}

impl BackendRequest {
    pub fn stream(&self) -> bool {
        self.sampling.stream.unwrap_or(false)
    }

    /// Choices per prompt, within OpenAI's limit of 128 (each backend
    /// refuses what it cannot do; this only bounds what a handler sets up).
    pub fn n(&self) -> usize {
        self.sampling.n.map_or(1, |n| n.clamp(1, 128) as usize)
    }
}

/// Token counts of a whole request: the engine's own type, which upstream
/// answers fill in too.
pub use ember_engine::Usage;

/// What a backend reports as a request runs. Choice indices count across
/// prompts (a completions request with two prompts and `n = 2` has choices
/// 0 to 3). A stream ends after `Usage`, after `Error`, or when it runs out.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More of a choice's text (chat `content`, completions `text`) and the
    /// log probabilities of the tokens behind it, when asked for.
    Text {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprobJson>,
    },
    /// A tool call opens: its index among the choice's calls, id and name.
    ToolCallStart {
        index: usize,
        call: usize,
        id: String,
        name: String,
    },
    /// More of a call's `arguments` JSON text.
    ToolCallArguments { index: usize, call: usize, fragment: String },
    /// An embedding request's vector for its input at `index`, L2-normalized.
    Embedding { index: usize, vector: Vec<f32> },
    /// A choice is done: `stop`, `length`, `tool_calls`, ...
    Finish { index: usize, reason: String },
    /// Every choice is done: the request's token counts.
    Usage(Usage),
    /// The request failed; nothing follows.
    Error(ApiError),
}

pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A model as a backend lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCard {
    pub id: String,
    pub max_model_len: Option<usize>,
}

/// Something that answers OpenAI requests.
pub trait Backend: Send + Sync {
    /// The name in logs and metrics.
    fn name(&self) -> &str;

    /// Starts `request` for the backend's model `model`. An error here means
    /// nothing was generated, so another backend may take the request.
    fn start<'a>(&'a self, model: &'a str, request: BackendRequest) -> BoxFuture<'a, Result<EventStream, ApiError>>;

    /// The models the backend serves now.
    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelCard>, ApiError>>;

    /// The engine in this process, for the routes only it can answer
    /// (`/tokenize`, `/detokenize`, `/generate`'s checks).
    fn as_local(&self) -> Option<&local::LocalBackend> {
        None
    }
}

/// Whether a failure before the first byte may go to another backend: the
/// backend was unreachable, overloaded, or failed on its side. A request it
/// refused as malformed would be refused by any other too.
pub fn is_retryable(error: &ApiError) -> bool {
    matches!(error.status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}
