//! Which backend answers: each served model name (and its aliases) maps to
//! one or more backends, picked by a strategy among those that are healthy,
//! not cooling down and under their concurrency limit. A request that fails
//! before its first event (refused, 5xx, 429, timed out, died) is tried on
//! another backend after a short backoff; one that has produced events is
//! never retried, so nothing is generated twice. Every attempt ends in
//! exactly one outcome, counted per backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use crate::backend::local::LocalBackend;
use crate::backend::{Backend, BackendRequest, Event, EventStream, ModelCard, is_retryable};
use crate::error::ApiError;
use crate::metrics::GatewayMetrics;

/// How a route spreads requests over its backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The backend with the fewest requests in flight (ties in turn).
    #[default]
    LeastOutstanding,
    RoundRobin,
    /// At random, in proportion to each backend's `weight`.
    Weighted,
}

/// Retries and the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Further backends tried after the first fails before its first event.
    pub retries: usize,
    /// The wait before the first retry; it doubles with each further one.
    pub backoff: Duration,
    /// Consecutive failures that put a backend in cooldown.
    pub allowed_fails: u32,
    pub cooldown: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff: Duration::from_millis(20),
            allowed_fails: 3,
            cooldown: Duration::from_secs(10),
        }
    }
}

/// A backend with its limits and state, shared by every route it serves.
pub struct Slot {
    pub backend: Arc<dyn Backend>,
    pub weight: u32,
    pub max_concurrency: Option<usize>,
    /// How often the active health check asks for the models; `None`: never.
    pub health_interval: Option<Duration>,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
    /// The models it reported last (backends whose models define routes).
    models: Mutex<Vec<ModelCard>>,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    cooling_until: Option<Instant>,
    /// The last active check failed.
    down: bool,
}

impl Slot {
    pub fn new(backend: Arc<dyn Backend>, weight: u32, max_concurrency: Option<usize>, health_interval: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            backend,
            weight: weight.max(1),
            max_concurrency,
            health_interval,
            outstanding: AtomicUsize::new(0),
            health: Mutex::new(Health::default()),
            models: Mutex::new(Vec::new()),
        })
    }

    pub fn name(&self) -> &str {
        self.backend.name()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Takes a place under the concurrency limit.
    fn try_acquire(&self) -> bool {
        let limit = self.max_concurrency.unwrap_or(usize::MAX);
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    fn has_room(&self) -> bool {
        self.outstanding() < self.max_concurrency.unwrap_or(usize::MAX)
    }

    /// Not cooling down and not failing its health check.
    fn available(&self, now: Instant) -> bool {
        self.health
            .lock()
            .map(|h| !h.down && h.cooling_until.is_none_or(|until| until <= now))
            .unwrap_or(true)
    }

    fn record_success(&self) {
        if let Ok(mut h) = self.health.lock() {
            h.consecutive_failures = 0;
            h.cooling_until = None;
        }
    }

    fn record_failure(&self, policy: &Policy) {
        if let Ok(mut h) = self.health.lock() {
            h.consecutive_failures += 1;
            if h.consecutive_failures >= policy.allowed_fails {
                h.consecutive_failures = 0;
                h.cooling_until = Some(Instant::now() + policy.cooldown);
                tracing::warn!(backend = self.name(), secs = policy.cooldown.as_secs_f64(), "backend failing: cooling down");
            }
        }
    }

    /// The result of an active health check.
    pub fn set_checked(&self, up: bool) {
        if let Ok(mut h) = self.health.lock() {
            if h.down != !up {
                tracing::info!(backend = self.name(), up, "backend health changed");
            }
            h.down = !up;
        }
    }

    fn ready(&self) -> bool {
        match self.backend.as_local() {
            Some(local) => local.is_loaded(),
            None => self.available(Instant::now()),
        }
    }
}

/// One backend of a route and the model name it knows the route by.
#[derive(Clone)]
pub struct Target {
    pub slot: Arc<Slot>,
    pub model: String,
    pub max_model_len: Option<usize>,
}

pub struct Route {
    pub name: String,
    pub aliases: Vec<String>,
    pub targets: Vec<Target>,
    pub strategy: Strategy,
    next: AtomicUsize,
}

impl Route {
    pub fn new(name: impl Into<String>, targets: Vec<Target>, strategy: Strategy, aliases: Vec<String>) -> Self {
        Self {
            name: name.into(),
            aliases,
            targets,
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend for the next attempt: among those not yet tried and
    /// with room, the available ones; when none is, the ones cooling down
    /// or failing checks (a last chance beats a certain error).
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let open: Vec<usize> = (0..self.targets.len())
            .filter(|i| !tried.contains(i) && self.targets[*i].slot.has_room())
            .collect();
        let available: Vec<usize> = open.iter().copied().filter(|&i| self.targets[i].slot.available(now)).collect();
        let pool = if available.is_empty() { open } else { available };
        if pool.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(match self.strategy {
            Strategy::RoundRobin => pool[turn % pool.len()],
            Strategy::LeastOutstanding => {
                let least = pool.iter().map(|&i| self.targets[i].slot.outstanding()).min().unwrap_or(0);
                let tied: Vec<usize> = pool.iter().copied().filter(|&i| self.targets[i].slot.outstanding() == least).collect();
                tied[turn % tied.len()]
            }
            Strategy::Weighted => {
                let total: u64 = pool.iter().map(|&i| u64::from(self.targets[i].slot.weight)).sum();
                let mut ticket = rand::random_range(0..total.max(1));
                let mut chosen = pool[0];
                for &i in &pool {
                    let weight = u64::from(self.targets[i].slot.weight);
                    if ticket < weight {
                        chosen = i;
                        break;
                    }
                    ticket -= weight;
                }
                chosen
            }
        })
    }
}

/// The routing table: fixed routes from the configuration, and routes
/// found by asking discovering backends (`--upstream`) for their models.
pub struct Router {
    /// The engine in this process, when one is loaded.
    local: Option<Arc<LocalBackend>>,
    fixed: Vec<Arc<Route>>,
    /// Backends whose reported models become routes.
    discovering: Vec<Arc<Slot>>,
    table: RwLock<Table>,
    policy: Policy,
    metrics: Option<Arc<GatewayMetrics>>,
}

#[derive(Default)]
struct Table {
    /// Names and aliases.
    by_name: HashMap<String, Arc<Route>>,
    /// Served names in listing order.
    order: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(
        local: Option<Arc<LocalBackend>>,
        fixed: Vec<Route>,
        discovering: Vec<Arc<Slot>>,
        policy: Policy,
        metrics: Option<Arc<GatewayMetrics>>,
    ) -> Self {
        let router = Self {
            local,
            fixed: fixed.into_iter().map(Arc::new).collect(),
            discovering,
            table: RwLock::new(Table::default()),
            policy,
            metrics,
        };
        router.rebuild();
        router
    }

    /// Every backend, each once.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let mut slots: Vec<Arc<Slot>> = Vec::new();
        let all = self.fixed.iter().flat_map(|r| r.targets.iter().map(|t| &t.slot)).chain(&self.discovering);
        for slot in all {
            if !slots.iter().any(|s| Arc::ptr_eq(s, slot)) {
                slots.push(slot.clone());
            }
        }
        slots
    }

    /// The backends whose models define routes.
    pub fn discovering(&self) -> &[Arc<Slot>] {
        &self.discovering
    }

    /// Whether `slot`'s models define routes.
    pub fn discovers(&self, slot: &Arc<Slot>) -> bool {
        self.discovering.iter().any(|s| Arc::ptr_eq(s, slot))
    }

    /// Records the models a discovering backend reports; routes follow.
    pub fn set_models(&self, slot: &Arc<Slot>, models: Vec<ModelCard>) {
        let changed = match slot.models.lock() {
            Ok(mut known) if *known != models => {
                *known = models;
                true
            }
            _ => false,
        };
        if changed {
            self.rebuild();
        }
    }

    fn rebuild(&self) {
        let mut table = Table::default();
        let mut discovered: Vec<(String, Vec<Target>)> = Vec::new();
        for slot in &self.discovering {
            let models = slot.models.lock().map(|m| m.clone()).unwrap_or_default();
            for card in models {
                let target = Target {
                    slot: slot.clone(),
                    model: card.id.clone(),
                    max_model_len: card.max_model_len,
                };
                match discovered.iter_mut().find(|(name, _)| *name == card.id) {
                    Some((_, targets)) => targets.push(target),
                    None => discovered.push((card.id, vec![target])),
                }
            }
        }
        for route in &self.fixed {
            // A discovered model of a fixed route's name adds replicas to it.
            let more = discovered.iter().position(|(name, _)| *name == route.name).map(|i| discovered.remove(i).1);
            let route = match more {
                Some(more) => {
                    let targets = route.targets.iter().cloned().chain(more).collect();
                    Arc::new(Route::new(route.name.clone(), targets, route.strategy, route.aliases.clone()))
                }
                None => route.clone(),
            };
            table.insert(route);
        }
        for (name, targets) in discovered {
            if !table.by_name.contains_key(&name) {
                table.insert(Arc::new(Route::new(name, targets, Strategy::default(), Vec::new())));
            }
        }
        if let Ok(mut current) = self.table.write() {
            *current = table;
        }
    }

    pub fn route(&self, model: &str) -> Result<Arc<Route>, ApiError> {
        let table = self.table.read().map_err(|_| ApiError::internal("routing table poisoned"))?;
        table.by_name.get(model).cloned().ok_or_else(|| {
            let served: Vec<&str> = table.order.iter().map(|r| r.name.as_str()).collect();
            ApiError::model_not_found(model, &served.join("`, `"))
        })
    }

    /// The routes in listing order.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.table.read().map(|t| t.order.clone()).unwrap_or_default()
    }

    /// Some route has a backend ready to answer.
    pub fn is_ready(&self) -> bool {
        self.routes().iter().any(|r| r.targets.iter().any(|t| t.slot.ready()))
    }

    /// The engine in this process, for the routes only it answers; with
    /// `model`, only if that model's route includes it.
    pub fn local(&self, model: Option<&str>) -> Result<&Arc<LocalBackend>, ApiError> {
        if let Some(model) = model
            && !self.route(model)?.targets.iter().any(|t| t.slot.backend.as_local().is_some())
        {
            return Err(ApiError::invalid(
                "model",
                format!("`{model}` is served by an upstream server; this route works for models loaded in this server"),
            ));
        }
        self.local
            .as_ref()
            .ok_or_else(|| ApiError::bad_request("no model is loaded in this server; it routes to upstream servers"))
    }

    /// Starts `request` on a backend of `model`'s route, trying others
    /// while attempts fail before their first event.
    pub async fn start(&self, model: &str, request: BackendRequest) -> Result<EventStream, ApiError> {
        let route = self.route(model)?;
        let mut tried = Vec::new();
        let mut last_error = None;
        for attempt in 0..=self.policy.retries {
            let Some(i) = route.pick(&tried) else { break };
            if attempt > 0 {
                let wait = self.policy.backoff * 2u32.saturating_pow(attempt as u32 - 1);
                tokio::time::sleep(wait + wait.mul_f64(rand::random::<f64>() * 0.5)).await;
            }
            tried.push(i);
            let target = &route.targets[i];
            if !target.slot.try_acquire() {
                continue;
            }
            let mut tracker = Tracker::new(target.slot.clone(), self.metrics.clone());
            let started = target.slot.backend.start(&target.model, request.clone()).await;
            let first = match started {
                Ok(mut events) => match events.next().await {
                    Some(Event::Error(e)) => Err(e),
                    Some(first) => Ok((first, events)),
                    None => Err(ApiError {
                        status: StatusCode::BAD_GATEWAY,
                        ..ApiError::internal(format!("backend `{}` ended the request without an answer", target.slot.name()))
                    }),
                },
                Err(e) => Err(e),
            };
            match first {
                Ok((first, rest)) => {
                    target.slot.record_success();
                    return Ok(tracker.follow(first, rest));
                }
                Err(e) if is_retryable(&e) => {
                    tracing::warn!(backend = target.slot.name(), error = %e, attempt, "backend failed before its first event");
                    target.slot.record_failure(&self.policy);
                    tracker.finish("failed");
                    last_error = Some(e);
                }
                Err(e) => {
                    tracker.finish("rejected");
                    return Err(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            kind: "rate_limit_error",
            retry_after: Some(1),
            ..ApiError::internal(format!("every backend of `{model}` is at its concurrency limit"))
        }))
    }
}

impl Table {
    fn insert(&mut self, route: Arc<Route>) {
        for alias in &route.aliases {
            self.by_name.insert(alias.clone(), route.clone());
        }
        self.by_name.insert(route.name.clone(), route.clone());
        self.order.push(route);
    }
}

/// One attempt on a backend: holds its place under the concurrency limit
/// and records its outcome and duration once, when it ends or is dropped
/// (a dropped attempt is a client that went away).
struct Tracker {
    slot: Arc<Slot>,
    metrics: Option<Arc<GatewayMetrics>>,
    started: Instant,
    outcome: Option<&'static str>,
}

impl Tracker {
    fn new(slot: Arc<Slot>, metrics: Option<Arc<GatewayMetrics>>) -> Self {
        if let Some(m) = &metrics {
            m.backend_started(slot.name());
        }
        Self {
            slot,
            metrics,
            started: Instant::now(),
            outcome: None,
        }
    }

    fn finish(&mut self, outcome: &'static str) {
        self.outcome.get_or_insert(outcome);
    }

    /// The attempt's events from the first on. Its outcome follows the
    /// last one: usage or the end is success, an error is an error.
    fn follow(self, first: Event, rest: EventStream) -> EventStream {
        Box::pin(stream::unfold((Some(first), rest, self), |(first, mut rest, mut tracker)| async move {
            let event = match first {
                Some(first) => Some(first),
                None => rest.next().await,
            };
            match event {
                Some(event) => {
                    match &event {
                        Event::Usage(_) => tracker.finish("success"),
                        Event::Error(_) => tracker.finish("error"),
                        _ => {}
                    }
                    Some((event, (None, rest, tracker)))
                }
                None => {
                    tracker.finish("success");
                    None
                }
            }
        }))
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.slot.outstanding.fetch_sub(1, Ordering::AcqRel);
        let outcome = self.outcome.unwrap_or("cancelled");
        if let Some(m) = &self.metrics {
            m.backend_finished(self.slot.name(), outcome, self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests;
