//! The routing policy against scripted fake backends.

use super::*;
use crate::backend::{BoxFuture, Endpoint, Usage};
use crate::openai::{CompletionRequest, PromptField, SamplingFields};

/// A backend that answers from a script: fail before the first event
/// with a status, or send some text and usage.
struct Fake {
    name: String,
    fail_with: Option<u16>,
    calls: AtomicUsize,
}

impl Backend for Fake {
    fn name(&self) -> &str {
        &self.name
    }

    fn start<'a>(&'a self, _model: &'a str, _request: BackendRequest) -> BoxFuture<'a, Result<EventStream, ApiError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let result = match self.fail_with {
            Some(status) => Err(ApiError {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                ..ApiError::internal(format!("{} failed", self.name))
            }),
            None => {
                let events = vec![
                    Event::Text {
                        index: 0,
                        text: self.name.clone(),
                        logprobs: Vec::new(),
                    },
                    Event::Usage(Usage::default()),
                ];
                Ok(Box::pin(stream::iter(events)) as EventStream)
            }
        };
        Box::pin(async move { result })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<ModelCard>, ApiError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn fake(name: &str, fail_with: Option<u16>, weight: u32, limit: Option<usize>) -> (Arc<Fake>, Arc<Slot>) {
    let backend = Arc::new(Fake {
        name: name.into(),
        fail_with,
        calls: AtomicUsize::new(0),
    });
    (backend.clone(), Slot::new(backend, weight, limit, None))
}

fn router(slots: &[&Arc<Slot>], strategy: Strategy, policy: Policy) -> Router {
    let targets = slots
        .iter()
        .map(|slot| Target {
            slot: (*slot).clone(),
            model: "m".into(),
            max_model_len: None,
        })
        .collect();
    Router::new(None, vec![Route::new("m", targets, strategy, Vec::new())], Vec::new(), policy, None)
}

fn request() -> BackendRequest {
    BackendRequest {
        endpoint: Endpoint::Completions(Box::new(CompletionRequest {
            model: "m".into(),
            prompt: PromptField::Text("hi".into()),
            max_tokens: None,
            logprobs: None,
            echo: None,
            suffix: None,
            best_of: None,
            logit_bias: None,
        })),
        sampling: SamplingFields::default(),
        body: serde_json::Map::new(),
    }
}

/// Who answered a request.
async fn answer(router: &Router) -> Result<String, ApiError> {
    let mut events = router.start("m", request()).await?;
    match events.next().await {
        Some(Event::Text { text, .. }) => Ok(text),
        other => panic!("{other:?}"),
    }
}

#[actix_web::test]
async fn round_robin_takes_turns_and_weighted_follows_the_weights() {
    let (_, a) = fake("a", None, 1, None);
    let (_, b) = fake("b", None, 3, None);
    let rr = router(&[&a, &b], Strategy::RoundRobin, Policy::default());
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(answer(&rr).await.unwrap_or_default());
    }
    assert_eq!(got, ["a", "b", "a", "b"]);
    let weighted = router(&[&a, &b], Strategy::Weighted, Policy::default());
    let mut to_b = 0;
    for _ in 0..4000 {
        to_b += usize::from(answer(&weighted).await.unwrap_or_default() == "b");
    }
    // 3/4 expected; the bounds are over 10 standard deviations away.
    assert!((2750..3250).contains(&to_b), "{to_b} of 4000 went to the weight-3 backend");
}

#[actix_web::test]
async fn least_outstanding_avoids_the_busy_backend() {
    let (_, a) = fake("a", None, 1, None);
    let (_, b) = fake("b", None, 1, None);
    let router = router(&[&a, &b], Strategy::LeastOutstanding, Policy::default());
    // A request held open on `a` (its stream not yet consumed).
    let held = router.start("m", request()).await;
    let busy = if a.outstanding() == 1 { "a" } else { "b" };
    for _ in 0..5 {
        assert_ne!(answer(&router).await.unwrap_or_default(), busy);
    }
    drop(held);
    assert_eq!(a.outstanding() + b.outstanding(), 0, "every attempt gave its place back");
}

#[actix_web::test]
async fn failures_before_the_first_event_are_retried_elsewhere_and_cool_the_backend_down() {
    let (down, d) = fake("down", Some(503), 1, None);
    let (_, up) = fake("up", None, 1, None);
    let policy = Policy {
        retries: 1,
        backoff: Duration::from_millis(1),
        allowed_fails: 2,
        cooldown: Duration::from_secs(60),
    };
    let router = router(&[&d, &up], Strategy::RoundRobin, policy);
    for _ in 0..6 {
        assert_eq!(answer(&router).await.ok().as_deref(), Some("up"));
    }
    // Two failures put it in cooldown; after that it is not tried.
    assert_eq!(down.calls.load(Ordering::SeqCst), 2);
}

#[actix_web::test]
async fn a_refused_request_is_not_retried_and_no_retries_left_returns_the_last_error() {
    let (bad, b) = fake("bad", Some(400), 1, None);
    let (_, up) = fake("up", None, 1, None);
    let router = router(&[&b, &up], Strategy::RoundRobin, Policy::default());
    let first = answer(&router).await;
    assert_eq!(first.err().map(|e| e.status.as_u16()), Some(400));
    assert_eq!(bad.calls.load(Ordering::SeqCst), 1);
    let (_, x) = fake("x", Some(502), 1, None);
    let (_, y) = fake("y", Some(429), 1, None);
    let failing = router_with_retries(&[&x, &y], 1);
    let last = answer(&failing).await;
    assert!(last.is_err_and(|e| is_retryable(&e)));
}

fn router_with_retries(slots: &[&Arc<Slot>], retries: usize) -> Router {
    let policy = Policy {
        retries,
        backoff: Duration::from_millis(1),
        ..Policy::default()
    };
    router(slots, Strategy::RoundRobin, policy)
}

#[actix_web::test]
async fn backends_at_their_limit_are_skipped_and_all_full_is_a_429() {
    let (_, a) = fake("a", None, 1, Some(1));
    let router = router(&[&a], Strategy::LeastOutstanding, Policy::default());
    let held = router.start("m", request()).await;
    assert!(held.is_ok());
    let full = answer(&router).await;
    assert_eq!(full.err().map(|e| e.status.as_u16()), Some(429));
    drop(held);
    assert_eq!(answer(&router).await.ok().as_deref(), Some("a"));
}

#[actix_web::test]
async fn a_backend_failing_its_health_check_rests_until_it_answers_again() {
    let (_, a) = fake("a", None, 1, None);
    let (_, b) = fake("b", None, 1, None);
    let router = router(&[&a, &b], Strategy::RoundRobin, Policy::default());
    a.set_checked(false);
    for _ in 0..4 {
        assert_eq!(answer(&router).await.ok().as_deref(), Some("b"));
    }
    // With every backend down, one is still tried: a last chance beats a certain error.
    b.set_checked(false);
    assert!(answer(&router).await.is_ok());
    a.set_checked(true);
    b.set_checked(true);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(answer(&router).await.unwrap_or_default());
    }
    assert!(got.contains(&"a".to_owned()) && got.contains(&"b".to_owned()), "{got:?}");
}

#[actix_web::test]
async fn every_attempt_is_counted_once_with_its_outcome() -> Result<(), ApiError> {
    let metrics = Arc::new(GatewayMetrics::new().map_err(|e| ApiError::internal(e.to_string()))?);
    let (_, down) = fake("down", Some(503), 1, None);
    let (_, up) = fake("up", None, 1, None);
    let (_, bad) = fake("bad", Some(400), 1, None);
    let target = |slot: &Arc<Slot>| Target {
        slot: slot.clone(),
        model: "m".into(),
        max_model_len: None,
    };
    let routes = vec![
        Route::new("m", vec![target(&down), target(&up)], Strategy::RoundRobin, Vec::new()),
        Route::new("refused", vec![target(&bad)], Strategy::RoundRobin, Vec::new()),
    ];
    let policy = Policy {
        backoff: Duration::from_millis(1),
        ..Policy::default()
    };
    let router = Router::new(None, routes, Vec::new(), policy, Some(metrics.clone()));
    // `down` fails first, `up` answers and its stream is read to the end.
    let mut events = router.start("m", request()).await?;
    while events.next().await.is_some() {}
    drop(events);
    // The same again, dropped before its end: the client went away.
    let mut next = router.start("m", request()).await?;
    let _ = next.next().await;
    drop(next);
    assert!(router.start("refused", request()).await.is_err());
    let text = metrics.render();
    for line in [
        r#"ember:backend_requests_total{backend="down",outcome="failed"} 2"#,
        r#"ember:backend_requests_total{backend="up",outcome="success"} 1"#,
        r#"ember:backend_requests_total{backend="up",outcome="cancelled"} 1"#,
        r#"ember:backend_requests_total{backend="bad",outcome="rejected"} 1"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    Ok(())
}
