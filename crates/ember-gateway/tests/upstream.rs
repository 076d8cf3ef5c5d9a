//! Ember in front of OpenAI-compatible upstreams, against a fault-injecting
//! upstream written for these tests and served on a real loopback socket:
//! it refuses connections, answers 500, 429 and 400, hangs before the first
//! byte, dies mid-stream, or streams slowly, and records what it was sent
//! and whether its client hung up. The gateway is the real app
//! configuration over a router built from a `ServeConfig`, as `ember serve`
//! builds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, test, web};
use ember_gateway::backend::build::build_router;
use ember_gateway::config::{BackendSection, RouteSection};
use ember_gateway::{AppState, GatewayMetrics, Limits, ServeConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// What the fault server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    asked_usage: AtomicBool,
    /// A slow stream's client went away before the end.
    hung_up: AtomicBool,
    last_body: std::sync::Mutex<Value>,
}

fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(text) => json!({"content": text}),
        None => json!({"role": "assistant", "content": ""}),
    };
    let body = json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {body}\n\n")
}

fn usage_chunk() -> String {
    let body = json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}});
    format!("data: {body}\n\n")
}

/// Sets a flag when dropped before `done`: the stream's client hung up.
struct HangUpGuard {
    seen: Arc<Seen>,
    done: bool,
}

impl Drop for HangUpGuard {
    fn drop(&mut self) {
        if !self.done {
            self.seen.hung_up.store(true, Ordering::SeqCst);
        }
    }
}

async fn fault(req: HttpRequest, body: web::Json<Value>, seen: web::Data<Arc<Seen>>) -> HttpResponse {
    let mode = req.match_info().get("mode").unwrap_or("ok").to_owned();
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let stream = body["stream"].as_bool().unwrap_or(false);
    if body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
        seen.asked_usage.store(true, Ordering::SeqCst);
    }
    if let Ok(mut last) = seen.last_body.lock() {
        *last = body.clone();
    }
    let error = |status: StatusCode, message: &str, param: Option<&str>| {
        HttpResponse::build(status).json(json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}))
    };
    match mode.as_str() {
        "e500" => return error(StatusCode::INTERNAL_SERVER_ERROR, "boom", None),
        "e429" => return error(StatusCode::TOO_MANY_REQUESTS, "slow down", None),
        "e400" => return error(StatusCode::BAD_REQUEST, "the messages are wrong", Some("messages")),
        "hang" => tokio::time::sleep(Duration::from_secs(30)).await,
        _ => {}
    }
    if !stream {
        return HttpResponse::Ok().json(json!({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}));
    }
    let parts: Vec<Result<web::Bytes, actix_web::Error>> = match mode.as_str() {
        "die" => vec![
            Ok(chunk(None, None).into()),
            Ok(chunk(Some("Hello"), None).into()),
            Err(actix_web::error::ErrorInternalServerError("died")),
        ],
        _ => {
            let mut parts = vec![chunk(None, None), chunk(Some("Hello"), None), chunk(Some(" world"), None), chunk(None, Some("stop"))];
            if body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
                parts.push(usage_chunk());
            }
            parts.push("data: [DONE]\n\n".into());
            parts.into_iter().map(|p| Ok(p.into())).collect()
        }
    };
    if mode == "slow" {
        let guard = HangUpGuard {
            seen: seen.get_ref().clone(),
            done: false,
        };
        let ticks = futures_util::stream::iter(0..50).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            i
        });
        let body = ticks.scan(guard, |guard, i| {
            guard.done = i == 49;
            std::future::ready(Some(Ok::<_, actix_web::Error>(web::Bytes::from(chunk(Some("."), None)))))
        });
        return HttpResponse::Ok().content_type("text/event-stream").streaming(body);
    }
    // Parts go out 20 ms apart, so the ones before a failure reach the wire
    // before the connection is cut.
    let paced = futures_util::stream::iter(parts).then(|part| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        part
    });
    HttpResponse::Ok().content_type("text/event-stream").streaming(paced)
}

async fn models() -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 4096}]}))
}

/// The fault server on a free loopback port; its base URL for `mode` is
/// `http://127.0.0.1:PORT/MODE/v1`.
fn start_fault_server(seen: Arc<Seen>) -> anyhow::Result<u16> {
    let seen = web::Data::new(seen);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(seen.clone())
            .route("/{mode}/v1/chat/completions", web::post().to(fault))
            .route("/{mode}/v1/models", web::get().to(models))
    })
    .workers(2)
    .bind_auto_h2c(("127.0.0.1", 0))?;
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    Ok(port)
}

/// A port nothing listens on.
fn refused_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn backend(name: &str, base_url: String) -> BackendSection {
    let mut section: BackendSection = toml::from_str(&format!("name = {name:?}\nbase_url = {base_url:?}\nhealth_check_secs = 0"))
        .unwrap_or_else(|e| panic!("{e}"));
    section.first_byte_timeout_secs = 0.5;
    section
}

fn route(model: &str, backends: &[&str], strategy: &str) -> RouteSection {
    toml::from_str(&format!("model = {model:?}\nbackends = {backends:?}\nstrategy = {strategy:?}\naliases = [\"{model}-alias\"]"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The gateway with every fault mode as a backend and these routes.
fn gateway(port: u16, routes: Vec<RouteSection>, retries: usize) -> anyhow::Result<(web::Data<AppState>, Arc<GatewayMetrics>)> {
    let url = |mode: &str| format!("http://127.0.0.1:{port}/{mode}/v1");
    let mut config = ServeConfig::default();
    config.backends = vec![
        backend("ok", url("ok")),
        backend("e500", url("e500")),
        backend("e429", url("e429")),
        backend("e400", url("e400")),
        backend("hang", url("hang")),
        backend("die", url("die")),
        backend("slow", url("slow")),
        backend("refused", format!("http://127.0.0.1:{}/v1", refused_port()?)),
        BackendSection {
            http2: true,
            ..backend("ok-h2c", url("ok"))
        },
    ];
    config.routes = routes;
    config.routing.retries = retries;
    config.routing.backoff_ms = 1;
    let metrics = Arc::new(GatewayMetrics::new()?);
    let router = build_router(&config, &[], None, Some(metrics.clone()))?;
    let state = web::Data::new(AppState::with_router(Arc::new(router), Limits::default(), Vec::new(), metrics.clone()));
    Ok((state, metrics))
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

/// The `data:` payloads of an SSE body.
fn sse(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn streamed_text(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

#[actix_web::test]
async fn failures_before_the_first_byte_go_to_another_backend() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let routes = vec![route("m", &["refused", "e500", "e429", "ok"], "round_robin")];
    let (state, metrics) = gateway(port, routes, 3)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    for i in 0..4 {
        let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", false));
        let body: Value = test::call_and_read_body_json(&app, req.to_request()).await;
        assert_eq!(body["choices"][0]["message"]["content"], "Hello world", "request {i}: {body}");
        assert_eq!(body["usage"]["total_tokens"], 9);
        let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m-alias", true));
        let events = sse(&test::call_and_read_body(&app, req.to_request()).await);
        assert_eq!(streamed_text(&events), "Hello world", "{events:?}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    }
    let text = metrics.render();
    assert!(text.contains(r#"ember:backend_requests_total{backend="ok",outcome="success"} 8"#), "{text}");
    for failing in ["refused", "e500", "e429"] {
        assert!(text.contains(&format!(r#"ember:backend_requests_total{{backend="{failing}",outcome="failed"}}"#)), "{text}");
    }
    Ok(())
}

#[actix_web::test]
async fn an_upstream_can_be_spoken_to_over_h2c() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, _) = gateway(port, vec![route("m", &["ok-h2c"], "round_robin")], 0)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    for stream in [false, true] {
        let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", stream));
        let body = test::call_and_read_body(&app, req.to_request()).await;
        let text = if stream {
            streamed_text(&sse(&body))
        } else {
            let value: Value = serde_json::from_slice(&body)?;
            value["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
        };
        assert_eq!(text, "Hello world", "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    Ok(())
}

#[actix_web::test]
async fn a_refusal_of_the_request_itself_is_not_retried_and_keeps_its_status() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, _) = gateway(port, vec![route("m", &["e400", "ok"], "round_robin")], 3)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", false));
        let resp = test::call_service(&app, req.to_request()).await;
        let status = resp.status();
        let body: Value = test::read_body_json(resp).await;
        if status == StatusCode::BAD_REQUEST {
            assert_eq!(body["error"]["param"], "messages", "{body}");
            assert_eq!(body["error"]["message"], "the messages are wrong");
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_REQUEST]);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2, "each request went to one backend");
    Ok(())
}

#[actix_web::test]
async fn a_backend_that_hangs_before_the_first_byte_times_out_and_another_answers() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, _) = gateway(port, vec![route("m", &["hang", "ok"], "round_robin")], 1)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    for _ in 0..2 {
        let started = Instant::now();
        let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", true));
        let events = sse(&test::call_and_read_body(&app, req.to_request()).await);
        assert_eq!(streamed_text(&events), "Hello world", "{events:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    }
    Ok(())
}

#[actix_web::test]
async fn a_stream_that_dies_midway_ends_with_an_error_chunk_and_done() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, metrics) = gateway(port, vec![route("m", &["die"], "round_robin")], 2)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", true));
    let events = sse(&test::call_and_read_body(&app, req.to_request()).await);
    assert_eq!(streamed_text(&events), "Hello", "{events:?}");
    let n = events.len();
    assert!(n >= 3 && events[n - 1] == "[DONE]", "{events:?}");
    let error: Value = serde_json::from_str(&events[n - 2])?;
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("die")), "{error}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1, "a stream that has sent text is not retried");
    let text = metrics.render();
    assert!(text.contains(r#"ember:backend_requests_total{backend="die",outcome="error"} 1"#), "{text}");
    Ok(())
}

#[actix_web::test]
async fn a_client_that_hangs_up_closes_the_upstream_request() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, metrics) = gateway(port, vec![route("m", &["slow"], "round_robin")], 0)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", true));
    let resp = test::call_service(&app, req.to_request()).await;
    let mut body = Box::pin(resp.into_body());
    // Read the role chunk and a first delta, then go away.
    let mut got = 0;
    while got < 2 {
        let next = futures_util::future::poll_fn(|cx| actix_web::body::MessageBody::poll_next(body.as_mut(), cx)).await;
        if next.is_none() {
            break;
        }
        got += 1;
    }
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.hung_up.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.hung_up.load(Ordering::SeqCst), "the upstream's stream was not closed");
    let text = metrics.render();
    assert!(text.contains(r#"ember:backend_requests_total{backend="slow",outcome="cancelled"} 1"#), "{text}");
    assert!(text.contains(r#"ember:backend_outstanding_requests{backend="slow"} 0"#), "{text}");
    Ok(())
}

#[actix_web::test]
async fn usage_is_always_asked_of_the_upstream_and_sent_only_when_the_client_asked() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, _) = gateway(port, vec![route("m", &["ok"], "round_robin")], 0)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("m", true));
    let events = sse(&test::call_and_read_body(&app, req.to_request()).await);
    assert!(seen.asked_usage.load(Ordering::SeqCst));
    assert!(!events.iter().any(|e| e.contains("usage")), "{events:?}");
    let mut body = ask("m", true);
    body["stream_options"] = json!({"include_usage": true});
    // A vLLM extension field goes on to the upstream as sent.
    body["min_tokens"] = json!(2);
    let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(body);
    let events = sse(&test::call_and_read_body(&app, req.to_request()).await);
    let usage: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| c["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1, "{events:?}");
    assert_eq!(usage[0]["usage"]["total_tokens"], 9);
    let sent = seen.last_body.lock().map(|b| b.clone()).unwrap_or_default();
    assert_eq!(sent["min_tokens"], 2, "{sent}");
    assert_eq!(sent["model"], "m");
    Ok(())
}

#[actix_web::test]
async fn models_list_routes_and_aliases_and_local_only_routes_say_so() -> anyhow::Result<()> {
    let seen = Arc::new(Seen::default());
    let port = start_fault_server(seen.clone())?;
    let (state, _) = gateway(port, vec![route("m", &["ok"], "least_outstanding")], 0)?;
    let app = test::init_service(App::new().configure(ember_gateway::configure(state))).await;
    let req = test::TestRequest::get().uri("/v1/models");
    let body: Value = test::call_and_read_body_json(&app, req.to_request()).await;
    let ids: Vec<&str> = body["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["m", "m-alias"], "{body}");
    let req = test::TestRequest::post().uri("/tokenize").set_json(json!({"model": "m", "prompt": "hi"}));
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = test::read_body_json(resp).await;
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("upstream")), "{body}");
    let req = test::TestRequest::post().uri("/v1/chat/completions").set_json(ask("nope", false));
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    Ok(())
}
