//! Prometheus metrics under the names vLLM users know (`ember:` instead of
//! `vllm:`), fed by the engine's observer hooks and the HTTP middleware.

use std::time::Duration;

use ember_engine::{EngineObserver, FinishReason, StepReport, Usage};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct GatewayMetrics {
    registry: Registry,
    ttft: Histogram,
    inter_token: Histogram,
    e2e: Histogram,
    batch_size: Histogram,
    grammar_mask: Histogram,
    running: IntGauge,
    waiting: IntGauge,
    kv_usage: Gauge,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    request_success: IntCounterVec,
    http_requests: IntCounterVec,
    backend_requests: IntCounterVec,
    backend_latency: HistogramVec,
    backend_outstanding: IntGaugeVec,
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> prometheus::Result<T> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
];

impl GatewayMetrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        Ok(Self {
            ttft: histogram(&r, "ember:time_to_first_token_seconds", "Time to first token.", LATENCY_BUCKETS.to_vec())?,
            inter_token: histogram(&r, "ember:inter_token_latency_seconds", "Time between two tokens of a stream.", LATENCY_BUCKETS.to_vec())?,
            e2e: histogram(&r, "ember:e2e_request_latency_seconds", "Request latency, submission to last token.", LATENCY_BUCKETS.to_vec())?,
            batch_size: histogram(
                &r,
                "ember:batch_size",
                "Sequences per engine step.",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            )?,
            grammar_mask: histogram(
                &r,
                "ember:grammar_mask_seconds",
                "Time to compute one constrained sequence's next-token mask.",
                vec![1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1],
            )?,
            running: register(&r, IntGauge::new("ember:num_requests_running", "Requests with a choice in the running batch.")?)?,
            waiting: register(&r, IntGauge::new("ember:num_requests_waiting", "Requests waiting for admission.")?)?,
            kv_usage: register(&r, Gauge::new("ember:kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).")?)?,
            prefix_queries: register(&r, IntCounter::new("ember:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.")?)?,
            prefix_hits: register(&r, IntCounter::new("ember:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.")?)?,
            prompt_tokens: register(&r, IntCounter::new("ember:prompt_tokens_total", "Prompt tokens of finished requests.")?)?,
            generation_tokens: register(&r, IntCounter::new("ember:generation_tokens_total", "Generated tokens of finished requests.")?)?,
            request_success: register(
                &r,
                IntCounterVec::new(
                    Opts::new("ember:request_success_total", "Finished requests by finish reason."),
                    &["finished_reason"],
                )?,
            )?,
            http_requests: register(
                &r,
                IntCounterVec::new(Opts::new("ember:http_requests_total", "HTTP requests by route and status."), &["route", "status"])?,
            )?,
            backend_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "ember:backend_requests_total",
                        "Attempts on each backend by outcome: success, error (after it started answering), failed (before; \
                         retried on another backend when one is left), rejected (the request itself was refused), cancelled \
                         (the client went away).",
                    ),
                    &["backend", "outcome"],
                )?,
            )?,
            backend_latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("ember:backend_request_duration_seconds", "Attempts on each backend, start to end.")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["backend"],
                )?,
            )?,
            backend_outstanding: register(
                &r,
                IntGaugeVec::new(Opts::new("ember:backend_outstanding_requests", "Requests in flight on each backend."), &["backend"])?,
            )?,
            registry: r,
        })
    }

    pub fn record_http(&self, route: &str, status: u16) {
        self.http_requests.with_label_values(&[route, &status.to_string()]).inc();
    }

    /// An attempt on `backend` began.
    pub fn backend_started(&self, backend: &str) {
        self.backend_outstanding.with_label_values(&[backend]).inc();
    }

    /// An attempt on `backend` ended with `outcome`.
    pub fn backend_finished(&self, backend: &str, outcome: &str, elapsed: Duration) {
        self.backend_outstanding.with_label_values(&[backend]).dec();
        self.backend_requests.with_label_values(&[backend, outcome]).inc();
        self.backend_latency.with_label_values(&[backend]).observe(elapsed.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl EngineObserver for GatewayMetrics {
    fn on_step(&self, step: &StepReport, _duration: Duration) {
        if step.batch_size > 0 {
            self.batch_size.observe(step.batch_size as f64);
        }
        self.running.set(step.running as i64);
        self.waiting.set(step.waiting as i64);
        if step.kv_blocks_total > 0 {
            self.kv_usage.set(step.kv_blocks_used as f64 / step.kv_blocks_total as f64);
        }
    }

    fn on_first_token(&self, ttft: Duration) {
        self.ttft.observe(ttft.as_secs_f64());
    }

    fn on_inter_token(&self, gap: Duration) {
        self.inter_token.observe(gap.as_secs_f64());
    }

    fn on_request_finished(&self, reason: &FinishReason, usage: &Usage, elapsed: Duration) {
        self.e2e.observe(elapsed.as_secs_f64());
        self.prompt_tokens.inc_by(usage.prompt_tokens as u64);
        self.generation_tokens.inc_by(usage.completion_tokens as u64);
        self.request_success.with_label_values(&[reason.as_str()]).inc();
    }

    fn on_prefix_lookup(&self, queried: usize, hit: usize) {
        self.prefix_queries.inc_by(queried as u64);
        self.prefix_hits.inc_by(hit as u64);
    }

    fn on_grammar_mask(&self, elapsed: Duration) {
        self.grammar_mask.observe(elapsed.as_secs_f64());
    }
}
