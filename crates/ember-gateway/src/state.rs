//! What every handler shares: the engine (once loaded), the served name,
//! limits, keys and metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ember_engine::EngineHandle;

use crate::error::ApiError;
use crate::metrics::GatewayMetrics;

/// Request limits enforced before a request reaches the engine.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_messages: usize,
    /// A request running longer is cancelled; `None` never times out.
    pub request_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        crate::config::ServerSection::default().limits()
    }
}

pub struct AppState {
    engine: OnceLock<EngineHandle>,
    pub model_name: String,
    pub limits: Limits,
    pub api_keys: Vec<String>,
    pub metrics: Arc<GatewayMetrics>,
    /// Unix time the server started, for `created` fields.
    pub started: u64,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(model_name: String, limits: Limits, api_keys: Vec<String>, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            engine: OnceLock::new(),
            model_name,
            limits,
            api_keys,
            metrics,
            started: unix_time(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Makes the loaded engine available; `/health` turns 200.
    pub fn set_engine(&self, engine: EngineHandle) {
        let _ = self.engine.set(engine);
    }

    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::shutting_down());
        }
        self.engine.get().ok_or_else(ApiError::loading)
    }

    pub fn is_loaded(&self) -> bool {
        self.engine.get().is_some()
    }

    /// New requests get 503 from now on; running streams finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// 404 unless `model` is the served model's name.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        if model == self.model_name {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model, &self.model_name))
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
