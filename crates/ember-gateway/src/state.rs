//! What every handler shares: the router (and through it the engine in
//! this process, once loaded), limits, keys and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ember_engine::EngineHandle;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::backend::local::LocalBackend;
use crate::backend::router::{Policy, Route, Router, Slot, Target};
use crate::backend::{BackendRequest, Event, EventStream};
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;
use crate::responses::store::ResponseStore;

/// Request limits enforced before a request reaches a backend.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// A request running longer is cancelled; `None` never times out.
    pub request_timeout: Option<Duration>,
    /// Stored Responses API responses: how many (0 stores none) and how long.
    pub responses_store_size: usize,
    pub responses_store_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        crate::config::ServerSection::default().limits()
    }
}

pub struct AppState {
    pub router: Arc<Router>,
    pub limits: Limits,
    pub api_keys: Vec<String>,
    pub metrics: Arc<GatewayMetrics>,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
    pub responses: Arc<ResponseStore>,
    /// Unix time the server started, for `created` fields.
    pub started: u64,
    shutting_down: AtomicBool,
}

impl AppState {
    /// A server for one model in this process, named `model_name`; the
    /// engine comes later, through `set_engine`.
    pub fn new(model_name: String, limits: Limits, api_keys: Vec<String>, metrics: Arc<GatewayMetrics>) -> Self {
        let local = Arc::new(LocalBackend::new("local", model_name.clone(), limits.max_messages));
        let route = Route::new(
            model_name.clone(),
            vec![Target {
                slot: Slot::new(local.clone(), 1, None, None),
                model: model_name,
                max_model_len: None,
            }],
            Default::default(),
            Vec::new(),
        );
        let router = Router::new(Some(local), vec![route], Vec::new(), Policy::default(), Some(metrics.clone()));
        Self::with_router(Arc::new(router), limits, api_keys, metrics)
    }

    pub fn with_router(router: Arc<Router>, limits: Limits, api_keys: Vec<String>, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            router,
            responses: Arc::new(ResponseStore::new(limits.responses_store_size, limits.responses_store_ttl)),
            limits,
            api_keys,
            metrics,
            started: unix_time(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Makes the loaded engine available to the local backend.
    pub fn set_engine(&self, engine: EngineHandle) {
        if let Ok(local) = self.router.local(None) {
            local.set_engine(engine);
        }
    }

    /// The engine in this process (503 while it loads or the server stops).
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.check_open()?;
        self.router.local(None)?.engine()
    }

    pub fn is_ready(&self) -> bool {
        self.router.is_ready()
    }

    /// New requests get 503 from now on; running streams finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<(), ApiError> {
        if self.is_shutting_down() {
            Err(ApiError::shutting_down())
        } else {
            Ok(())
        }
    }

    /// Routes `request` for `model` and returns its events, cut off with a
    /// timeout error at the server's request timeout (dropping the backend's
    /// stream cancels the request there).
    pub async fn start(&self, model: &str, request: BackendRequest) -> Result<EventStream, ApiError> {
        self.check_open()?;
        let deadline = self.limits.request_timeout.map(|t| Instant::now() + t);
        let started = self.router.start(model, request);
        let events = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, started).await.map_err(|_| ApiError::timeout())??,
            None => started.await?,
        };
        let Some(deadline) = deadline else {
            return Ok(events);
        };
        Ok(Box::pin(stream::unfold(Some(events), move |events| async move {
            let mut events = events?;
            match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(Some(event)) => Some((event, Some(events))),
                Ok(None) => None,
                Err(_) => Some((Event::Error(ApiError::timeout()), None)),
            }
        })))
    }
}

/// The `id`, `created` and `model` of a response and each of its chunks.
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Head {
    pub fn new(prefix: &str, model: &str) -> Self {
        Self {
            id: random_id(prefix),
            created: unix_time(),
            model: model.to_owned(),
        }
    }
}

pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id such as `chatcmpl-3f9a...`.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

/// `system_fingerprint` of responses: which Ember produced them.
pub fn fingerprint() -> String {
    format!("ember-{}", env!("CARGO_PKG_VERSION"))
}
