//! The gateway through its real app configuration (`ember_gateway::configure`)
//! on the tiny Qwen3 fixture with a ChatML template: routes, response shapes,
//! streaming, errors in OpenAI's shape, auth, limits, cancellation, metrics.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::http::StatusCode;
use actix_web::{App, test, web};
use common::*;
use ember_engine::{EngineConfig, MarkerPolicy};
use ember_model::sparse::SparseLayout;
use ember_gateway::{AppState, GatewayMetrics, Limits};
use serde_json::{Value, json};

#[actix_web::test]
async fn chat_completion_has_the_openai_shape() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let (status, body) = call(&app, post("/v1/chat/completions", chat(json!({"logprobs": true, "top_logprobs": 2})))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].is_u64() && body["system_fingerprint"].is_string());
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(1), "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap_or_default()));
    let usage = &body["usage"];
    let (p, c) = (usage["prompt_tokens"].as_u64().unwrap_or(0), usage["completion_tokens"].as_u64().unwrap_or(0));
    assert!(p > 0 && c > 0 && usage["total_tokens"].as_u64() == Some(p + c));
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
    let lps = choice["logprobs"]["content"].as_array().cloned().unwrap_or_default();
    assert_eq!(lps.len() as u64, c);
    assert_eq!(lps[0]["top_logprobs"].as_array().map(Vec::len), Some(2));

    // The same conversation again is served from the prefix cache, with the same answer.
    let (status, again) = call(&app, post("/v1/chat/completions", chat(json!({"logprobs": true, "top_logprobs": 2})))).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) > 0);
    assert_eq!(again["choices"][0]["message"], choice["message"]);
    Ok(())
}

#[actix_web::test]
async fn streaming_sends_role_deltas_finish_usage_and_done() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let (status, whole) = call(&app, post("/v1/chat/completions", chat(json!({"n": 2, "seed": 7, "temperature": 1.0})))).await;
    assert_eq!(status, StatusCode::OK, "{whole}");
    assert_eq!(whole["choices"].as_array().map(Vec::len), Some(2), "{whole}");
    let req = post(
        "/v1/chat/completions",
        chat(json!({"stream": true, "stream_options": {"include_usage": true}, "n": 2, "seed": 7, "temperature": 1.0})),
    );
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")));
    let events = sse_events(&test::read_body(resp).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e)).collect::<Result<_, _>>()?;
    let mut texts = [String::new(), String::new()];
    let mut finishes = [Value::Null, Value::Null];
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "chat.completion.chunk");
        let last = i == chunks.len() - 1;
        if last {
            assert_eq!(c["choices"], json!([]));
            assert!(c["usage"]["completion_tokens"].as_u64().is_some_and(|n| n > 0));
            continue;
        }
        assert!(c["usage"].is_null());
        let choice = &c["choices"][0];
        let index = choice["index"].as_u64().unwrap_or(9) as usize;
        if i < 2 {
            assert_eq!(choice["delta"]["role"], "assistant");
        }
        if let Some(t) = choice["delta"]["content"].as_str() {
            texts[index].push_str(t);
        }
        if choice["finish_reason"].is_string() {
            assert!(finishes[index].is_null(), "choice {index} finished twice: {c}");
            finishes[index] = choice["finish_reason"].clone();
        }
    }
    // Same seed, same choices as the non-streamed request; each finished once.
    for i in 0..2 {
        assert!(finishes[i].is_string(), "choice {i} never finished");
        assert_eq!(whole["choices"][i]["finish_reason"], finishes[i], "choice {i}");
        assert_eq!(whole["choices"][i]["message"]["content"], texts[i].as_str(), "choice {i}");
    }
    Ok(())
}

#[actix_web::test]
async fn completions_models_generate_and_tokenize() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let (status, body) = call(
        &app,
        post("/v1/completions", json!({"model": MODEL, "prompt": ["one two", "three"], "max_tokens": 5, "temperature": 0, "logprobs": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["choices"][1]["index"], 1);
    assert_eq!(body["choices"][0]["logprobs"]["tokens"].as_array().map(Vec::len), Some(5));
    let (status, by_ids) = call(&app, post("/v1/completions", json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3}))).await;
    assert_eq!(status, StatusCode::OK, "{by_ids}");
    assert_eq!(by_ids["usage"]["prompt_tokens"], 3);

    let (status, models) = call(&app, test::TestRequest::get().uri("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["max_model_len"], 256);
    let (status, _) = call(&app, test::TestRequest::get().uri(&format!("/v1/models/{MODEL}"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, missing) = call(&app, test::TestRequest::get().uri("/v1/models/gpt-4")).await;
    assert_openai_error(status, &missing, StatusCode::NOT_FOUND, Some("model"));

    let (status, generated) = call(&app, post("/generate", json!({"prompt": "hello", "max_tokens": 4, "temperature": 0}))).await;
    assert_eq!(status, StatusCode::OK, "{generated}");
    assert!(generated["text"].is_string());
    let resp = test::call_service(&app, post("/generate", json!({"prompt": "hello", "max_tokens": 4, "stream": true})).to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let events = sse_events(&test::read_body(resp).await);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.len() > 1, "no text event before [DONE]: {events:?}");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event)?;
        assert!(chunk["text"].is_string(), "{chunk}");
    }

    let (status, tokens) = call(&app, post("/tokenize", json!({"prompt": "hello world"}))).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let ids = tokens["tokens"].clone();
    assert!(ids.as_array().is_some_and(|ids| !ids.is_empty()), "{tokens}");
    assert_eq!(tokens["count"], ids.as_array().map_or(0, Vec::len));
    let (status, text) = call(&app, post("/detokenize", json!({"tokens": ids}))).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text["prompt"], "hello world");
    let (status, chat_tokens) = call(&app, post("/tokenize", json!({"messages": [{"role": "user", "content": "hi"}]}))).await;
    assert_eq!(status, StatusCode::OK, "{chat_tokens}");
    assert!(chat_tokens["count"].as_u64().is_some_and(|n| n > 3));
    Ok(())
}

#[actix_web::test]
async fn bad_requests_get_openai_errors_naming_the_problem() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let cases: Vec<(Value, StatusCode, Option<&str>)> = vec![
        (chat(json!({"model": "gpt-4"})), StatusCode::NOT_FOUND, Some("model")),
        (chat(json!({"messages": []})), StatusCode::BAD_REQUEST, Some("messages")),
        (chat(json!({"messages": [{"role": "wizard", "content": "x"}]})), StatusCode::BAD_REQUEST, Some("messages[0].role")),
        (chat(json!({"n": 0})), StatusCode::BAD_REQUEST, Some("n")),
        (chat(json!({"n": 99})), StatusCode::BAD_REQUEST, Some("n")),
        (
            chat(json!({"temperature": -1})),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
        ),
        (
            chat(json!({"temperature": "hot"})),
            StatusCode::BAD_REQUEST,
            Some("temperature"),
        ),
        (
            chat(json!({"max_tokens": 0})),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            chat(json!({"max_tokens": 100000})),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            chat(json!({"top_logprobs": 3})),
            StatusCode::BAD_REQUEST,
            Some("top_logprobs"),
        ),
        (
            chat(json!({"frobnicate": true})),
            StatusCode::BAD_REQUEST,
            Some("frobnicate"),
        ),
        (
            chat(json!({"tools": []})),
            StatusCode::BAD_REQUEST,
            Some("tools"),
        ),
        (
            chat(json!({"response_format": {"type": "yaml"}})),
            StatusCode::BAD_REQUEST,
            Some("response_format.type"),
        ),
        (
            chat(json!({"stream_options": {"include_usage": true}})),
            StatusCode::BAD_REQUEST,
            Some("stream_options"),
        ),
        (
            chat(json!({"stream": true, "stream_options": {"continuous_usage_stats": true}})),
            StatusCode::BAD_REQUEST,
            Some("stream_options.continuous_usage_stats"),
        ),
        (
            chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})),
            StatusCode::BAD_REQUEST,
            Some("messages[0].content[0].type"),
        ),
        (json!({"model": MODEL}), StatusCode::BAD_REQUEST, None),
        (json!([1, 2]), StatusCode::BAD_REQUEST, None),
    ];
    for (body, want, param) in cases {
        let (status, got) = call(&app, post("/v1/chat/completions", body.clone())).await;
        assert_openai_error(status, &got, want, param);
    }
    // Not JSON at all, and the wrong content type.
    let raw = test::TestRequest::post()
        .uri("/v1/chat/completions")
        .insert_header(("content-type", "application/json"))
        .set_payload("{not json");
    let (status, got) = call(&app, raw).await;
    assert_openai_error(status, &got, StatusCode::BAD_REQUEST, None);
    let (status, got) = call(&app, test::TestRequest::post().uri("/v1/chat/completions").set_payload("x")).await;
    assert_openai_error(status, &got, StatusCode::BAD_REQUEST, None);
    let (status, got) = call(&app, test::TestRequest::get().uri("/v2/nothing")).await;
    assert_openai_error(status, &got, StatusCode::NOT_FOUND, None);
    Ok(())
}

#[actix_web::test]
async fn limits_body_size_message_count_and_a_full_queue() -> anyhow::Result<()> {
    let limits = Limits {
        max_body_bytes: 2048,
        max_messages: 3,
        ..Limits::default()
    };
    let s = server_with(Vec::new(), limits, EngineConfig { max_queue_len: 0, ..small_engine() })?;
    let app = app!(s);
    let big = chat(json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]}));
    let (status, got) = call(&app, post("/v1/chat/completions", big)).await;
    assert_openai_error(status, &got, StatusCode::PAYLOAD_TOO_LARGE, None);
    let many = chat(json!({"messages": vec![json!({"role": "user", "content": "x"}); 4]}));
    let (status, got) = call(&app, post("/v1/chat/completions", many)).await;
    assert_openai_error(status, &got, StatusCode::BAD_REQUEST, Some("messages"));
    // A queue of length 0 refuses everything: 429 with Retry-After.
    let resp = test::call_service(&app, post("/v1/chat/completions", chat(json!({}))).to_request()).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_slice(&test::read_body(resp).await)?;
    assert_eq!(body["error"]["type"], "rate_limit_error");
    Ok(())
}

#[actix_web::test]
async fn api_keys_close_everything_but_health() -> anyhow::Result<()> {
    let s = server_with(vec!["k-one".into(), "k-two".into()], Limits::default(), small_engine())?;
    let app = app!(s);
    let (status, got) = call(&app, test::TestRequest::get().uri("/v1/models")).await;
    assert_openai_error(status, &got, StatusCode::UNAUTHORIZED, None);
    let wrong = test::TestRequest::get().uri("/v1/models").insert_header(("authorization", "Bearer k-three"));
    assert_eq!(call(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    for key in ["k-one", "k-two"] {
        let ok = test::TestRequest::get().uri("/v1/models").insert_header(("authorization", format!("Bearer {key}")));
        assert_eq!(call(&app, ok).await.0, StatusCode::OK);
    }
    assert_eq!(call(&app, test::TestRequest::get().uri("/health")).await.0, StatusCode::OK);
    assert_eq!(call(&app, test::TestRequest::get().uri("/metrics")).await.0, StatusCode::UNAUTHORIZED);
    // The chat page loads without a key and asks for one; its policy keeps it on this server.
    for path in ["/", "/static/app.js", "/static/app.css"] {
        let page = test::call_service(&app, test::TestRequest::get().uri(path).to_request()).await;
        assert_eq!(page.status(), StatusCode::OK, "{path}");
        let policy = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"), "{path}: {policy}");
    }
    let api_key = test::TestRequest::get().uri("/v1/models").insert_header(("x-api-key", "k-two"));
    assert_eq!(call(&app, api_key).await.0, StatusCode::OK);
    Ok(())
}

#[actix_web::test]
async fn health_is_503_until_loaded_and_while_shutting_down() -> anyhow::Result<()> {
    let metrics = Arc::new(GatewayMetrics::new()?);
    let state = web::Data::new(AppState::new(MODEL.into(), Limits::default(), Vec::new(), metrics));
    let app = test::init_service(App::new().configure(ember_gateway::configure(state.clone()))).await;
    let (status, body) = call(&app, test::TestRequest::get().uri("/health")).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("loading")));
    let (status, got) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_openai_error(status, &got, StatusCode::SERVICE_UNAVAILABLE, None);

    let s = server()?;
    let app = app!(s);
    assert_eq!(call(&app, test::TestRequest::get().uri("/health")).await.0, StatusCode::OK);
    s.state.begin_shutdown();
    assert_eq!(call(&app, test::TestRequest::get().uri("/health")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, got) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_openai_error(status, &got, StatusCode::SERVICE_UNAVAILABLE, None);
    Ok(())
}

#[actix_web::test]
async fn a_dropped_stream_is_cancelled_in_the_engine() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let req = post(
        "/v1/chat/completions",
        chat(json!({"stream": true, "max_tokens": 200, "ignore_eos": true})),
    );
    let resp = test::call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Read a little of the stream, then hang up.
    let mut body = resp.into_body();
    let first = futures_util::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_next(cx)).await;
    assert!(matches!(first, Some(Ok(_))), "the stream gave no first chunk");
    drop(body);
    let engine = s.state.engine()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = engine.stats();
        if stats.requests_cancelled == 1 && stats.kv_blocks_used == 0 && stats.running == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not cancelled: {stats:?}");
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(engine.stats().generated_tokens < 200);
    Ok(())
}

#[actix_web::test]
async fn metrics_use_vllm_style_names() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let (status, body) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let resp = test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(test::read_body(resp).await.to_vec())?;
    for name in [
        "ember:time_to_first_token_seconds_bucket",
        "ember:inter_token_latency_seconds_count",
        "ember:e2e_request_latency_seconds_count 1",
        "ember:num_requests_running",
        "ember:num_requests_waiting",
        "ember:kv_cache_usage_perc",
        "ember:prefix_cache_hits_total",
        "ember:prompt_tokens_total",
        "ember:generation_tokens_total",
        "ember:request_success_total{finished_reason=",
        "ember:http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    Ok(())
}

/// Regression: `temperature: 1e-40` overflowed every logit and the request
/// ended in a 500 ("index out of bounds" in sampling). Extreme but valid
/// numbers must give a 200.
#[actix_web::test]
async fn extreme_sampling_numbers_are_answered_not_crashed() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let (status, greedy) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, StatusCode::OK, "{greedy}");
    let (status, tiny) = call(&app, post("/v1/chat/completions", chat(json!({"temperature": 1e-40})))).await;
    assert_eq!(status, StatusCode::OK, "{tiny}");
    assert_eq!(tiny["choices"][0]["message"], greedy["choices"][0]["message"], "a subnormal temperature is greedy");
    for extra in [
        json!({"temperature": 1e30, "top_p": 1e-30}),
        json!({"repetition_penalty": 1e-40, "temperature": 0.5}),
        json!({"repetition_penalty": 3.0e38, "min_p": 1e-40, "top_k": 9_223_372_036_854_775_807i64}),
        json!({"seed": -9_223_372_036_854_775_808i64, "temperature": 1.0, "logprobs": true, "top_logprobs": 20}),
    ] {
        let (status, body) = call(&app, post("/v1/chat/completions", chat(extra.clone()))).await;
        assert_eq!(status, StatusCode::OK, "{extra}: {body}");
        let lps = body["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default();
        // Where logprobs were asked for there must be some, or `all` checks nothing.
        assert_eq!(!lps.is_empty(), extra["logprobs"] == true, "{extra}: {body}");
        assert!(lps.iter().all(|lp| lp["logprob"].is_number()), "{extra}: {body}");
    }
    for (extra, field) in [
        (json!({"temperature": 1e39}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"n": 0}), "n"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"top_k": -2}), "top_k"),
    ] {
        let (status, body) = call(&app, post("/v1/chat/completions", chat(extra))).await;
        assert_openai_error(status, &body, StatusCode::BAD_REQUEST, Some(field));
    }
    Ok(())
}

/// The context-length error names the field at fault on every route: the
/// prompt when it alone fills the window, else the output limit.
#[actix_web::test]
async fn a_context_length_error_names_the_field_at_fault() -> anyhow::Result<()> {
    let s = server()?;
    let app = app!(s);
    let cases = [
        ("/v1/chat/completions", chat(json!({"max_tokens": 10_000})), "max_tokens"),
        ("/v1/chat/completions", chat(json!({"max_completion_tokens": 10_000})), "max_completion_tokens"),
        (
            "/v1/chat/completions",
            chat(json!({"messages": [{"role": "user", "content": "hello ".repeat(400)}]})),
            "messages",
        ),
        ("/v1/completions", json!({"model": MODEL, "prompt": vec![1; 300], "max_tokens": 1}), "prompt"),
        ("/v1/completions", json!({"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 10_000}), "max_tokens"),
        ("/generate", json!({"prompt": "hello", "max_tokens": 10_000}), "max_tokens"),
        ("/generate", json!({"prompt": "hello ".repeat(400), "max_tokens": 1}), "prompt"),
    ];
    for (route, body, field) in cases {
        let (status, got) = call(&app, post(route, body)).await;
        assert_openai_error(status, &got, StatusCode::BAD_REQUEST, Some(field));
        assert_eq!(got["error"]["code"], "context_length_exceeded", "{route}: {got}");
    }
    Ok(())
}

/// Fields a request leaves out take the server's sampling defaults (here a
/// greedy override); its own fields win.
#[actix_web::test]
async fn omitted_sampling_fields_take_the_server_defaults() -> anyhow::Result<()> {
    let greedy = ember_engine::GenerationDefaults {
        temperature: Some(0.0),
        ..Default::default()
    };
    let s = server_with(
        Vec::new(),
        Limits::default(),
        EngineConfig {
            generation_overrides: greedy,
            ..small_engine()
        },
    )?;
    let app = app!(s);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8});
    let (status, first) = call(&app, post("/v1/chat/completions", body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = call(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let (status, explicit) = call(&app, post("/v1/chat/completions", chat(json!({})))).await;
    assert_eq!(status, StatusCode::OK, "{explicit}");
    assert!(first["choices"][0]["message"]["content"].is_string(), "{first}");
    assert_eq!(first["choices"][0]["message"], second["choices"][0]["message"]);
    assert_eq!(first["choices"][0]["message"], explicit["choices"][0]["message"]);
    // The request's own temperature wins: seeded draws at temperature 1 differ by seed.
    let hot: Vec<Value> = (0..3)
        .map(|seed| chat(json!({"temperature": 1.0, "seed": seed, "max_tokens": 16})))
        .collect();
    let mut answers = Vec::new();
    for body in hot {
        let (status, got) = call(&app, post("/v1/chat/completions", body)).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        answers.push(got["choices"][0]["message"]["content"].clone());
    }
    answers.dedup();
    assert!(answers.len() > 1, "temperature 1 with different seeds gave one answer: {answers:?}");
    Ok(())
}

/// `[IMPORTANT]` ... `[/IMPORTANT]`: plain text under dense attention; under
/// sparse attention the markers leave the prompt (unless `keep_markers`)
/// and the text between them becomes a global span, which changes what a
/// query past the window sees.
#[actix_web::test]
async fn important_markers_are_global_spans_under_sparse_attention() -> anyhow::Result<()> {
    let layout = SparseLayout {
        block: 4,
        local: 1,
        sinks: 0,
        stride: 0,
        dense_below: 0,
    };
    let sparse = |keep_markers| Fixture {
        sparse: Some((layout, MarkerPolicy { keep_markers })),
        ..Fixture::default()
    };
    let filler = "Paris is the capital of France; Berlin is the capital of Germany. ".repeat(4);
    let marked = format!("The quick brown fox. [IMPORTANT]Ember serves Qwen3 models.[/IMPORTANT] {filler}");
    let plain = format!("The quick brown fox. Ember serves Qwen3 models. {filler}");
    let literal = format!("The quick brown fox. [IMPORTANT]Ember serves Qwen3 models.[/IMPORTANT] {filler}");
    let tokenize = |text: &str| post("/tokenize", json!({"prompt": text}));

    let dense = server()?;
    let dense_app = app!(dense);
    let (_, dense_marked) = call(&dense_app, tokenize(&marked)).await;
    let (_, dense_literal) = call(&dense_app, tokenize(&literal)).await;
    let (_, dense_plain) = call(&dense_app, tokenize(&plain)).await;
    assert_eq!(dense_marked["tokens"], dense_literal["tokens"], "dense: the markers are text");
    assert_ne!(dense_marked["tokens"], dense_plain["tokens"]);

    let kept = server_for(&sparse(true), Vec::new(), Limits::default(), small_engine())?;
    let kept_app = app!(kept);
    let (_, kept_marked) = call(&kept_app, tokenize(&marked)).await;
    assert_eq!(kept_marked["tokens"], dense_literal["tokens"], "keep_markers: the text is unchanged");

    let s = server_for(&sparse(false), Vec::new(), Limits::default(), small_engine())?;
    let app = app!(s);
    let (status, stripped) = call(&app, tokenize(&marked)).await;
    assert_eq!(status, StatusCode::OK, "{stripped}");
    assert_eq!(stripped["tokens"], dense_plain["tokens"], "sparse: the markers are removed");
    // The models list says so, for the chat page to mark the spans; a dense model's card has no such field.
    let (_, models) = call(&app, test::TestRequest::get().uri("/v1/models")).await;
    assert_eq!(models["data"][0]["sparse_attention"], true, "{models}");
    let (_, dense_models) = call(&dense_app, test::TestRequest::get().uri("/v1/models")).await;
    assert!(dense_models["data"][0].get("sparse_attention").is_none(), "{dense_models}");

    // The same tokens with and without the span: past the window the span
    // is still seen, so the next-token distribution changes.
    let completion = |prompt: Value| post("/v1/completions", json!({"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 5}));
    let (status, with_span) = call(&app, completion(json!(marked))).await;
    assert_eq!(status, StatusCode::OK, "{with_span}");
    let (_, without) = call(&app, completion(stripped["tokens"].clone())).await;
    assert_eq!(with_span["usage"]["prompt_tokens"], without["usage"]["prompt_tokens"]);
    let top = |body: &Value| body["choices"][0]["logprobs"]["top_logprobs"][0].clone();
    assert_ne!(top(&with_span), top(&without), "the span reached the model");

    // A chat message's markers are spans too, and unpaired ones stay text.
    let (status, chat_tokens) = call(
        &app,
        post("/tokenize", json!({"messages": [{"role": "user", "content": "[IMPORTANT]x[/IMPORTANT] and [IMPORTANT] alone"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{chat_tokens}");
    let (_, chat_plain) = call(&app, post("/tokenize", json!({"messages": [{"role": "user", "content": "x and [IMPORTANT] alone"}]}))).await;
    assert_eq!(chat_tokens["tokens"], chat_plain["tokens"]);
    Ok(())
}

/// Anthropic's routes answer errors in Anthropic's shape (a missing key,
/// malformed JSON) and take the key as `x-api-key`; with a store of size 0
/// a response is answered but not kept.
#[actix_web::test]
async fn anthropic_errors_and_a_response_store_of_size_zero() -> anyhow::Result<()> {
    let limits = Limits {
        responses_store_size: 0,
        ..Limits::default()
    };
    let s = server_with(vec!["k".into()], limits, small_engine())?;
    let app = app!(s);
    // Greedy, so the random model's 4 tokens are the same ones every run.
    let message = json!({"model": MODEL, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]});
    let (status, got) = call(&app, post("/v1/messages", message.clone())).await;
    assert_eq!((status, &got["type"], &got["error"]["type"]), (StatusCode::UNAUTHORIZED, &json!("error"), &json!("authentication_error")));
    let malformed = test::TestRequest::post()
        .uri("/v1/messages")
        .insert_header(("x-api-key", "k"))
        .insert_header(("content-type", "application/json"))
        .set_payload("{\"model\": ");
    let (status, got) = call(&app, malformed).await;
    assert_eq!((status, &got["error"]["type"]), (StatusCode::BAD_REQUEST, &json!("invalid_request_error")), "{got}");
    let (status, got) = call(&app, post("/v1/messages", message).insert_header(("x-api-key", "k"))).await;
    assert_eq!((status, &got["type"]), (StatusCode::OK, &json!("message")), "{got}");
    assert_eq!(got["usage"]["output_tokens"], 4);

    let bearer = ("authorization", "Bearer k");
    let response = json!({"model": MODEL, "input": "hi", "max_output_tokens": 4, "temperature": 0});
    let (status, got) = call(&app, post("/v1/responses", response).insert_header(bearer)).await;
    assert_eq!((status, &got["status"], &got["store"]), (StatusCode::OK, &json!("incomplete"), &json!(false)), "{got}");
    let id = got["id"].as_str().unwrap_or_default();
    let (status, got) = call(&app, test::TestRequest::get().uri(&format!("/v1/responses/{id}")).insert_header(bearer)).await;
    assert_openai_error(status, &got, StatusCode::NOT_FOUND, None);
    Ok(())
}
