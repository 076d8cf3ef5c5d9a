//! What the HTTP test files share: the tiny Qwen3 fixture behind the real
//! app configuration, and helpers for requests and OpenAI-shaped errors.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{test, web};
use ember_engine::{EngineConfig, EngineHandle, KvCacheMemory, LoadedModel, MarkerPolicy};
use ember_gateway::{AppState, GatewayMetrics, Limits};
use ember_model::sparse::SparseLayout;
use ember_model::{DType, Device, LoadOptions};
use serde_json::{Value, json};

pub const MODEL: &str = "tiny";

/// A ChatML template, like SmolLM2's and Qwen's; it ignores `tools`.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// How the fixture directory is put together.
pub struct Fixture {
    pub chat_template: String,
    /// `max_position_embeddings`; the random model writes long JSON strings.
    pub window: usize,
    /// Add `<tool_call>` and `</tool_call>` to the vocabulary as single
    /// tokens, as Qwen3's tokenizer has them.
    pub tool_tokens: bool,
    /// Sparse attention and what `[IMPORTANT]` markers do; `None` is dense.
    pub sparse: Option<(SparseLayout, MarkerPolicy)>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self {
            chat_template: CHATML.into(),
            window: 256,
            tool_tokens: false,
            sparse: None,
        }
    }
}

/// qwen3-tiny plus a tokenizer_config.json with a chat template.
pub fn model_dir(fixture: &Fixture) -> anyhow::Result<tempfile::TempDir> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tiny");
    let dir = tempfile::tempdir()?;
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    config["max_position_embeddings"] = json!(fixture.window);
    std::fs::write(dir.path().join("config.json"), config.to_string())?;
    std::fs::copy(src.join("model.safetensors"), dir.path().join("model.safetensors"))?;
    let mut tokenizer: Value = serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json"))?)?;
    if fixture.tool_tokens {
        // Qwen3 marks these non-special: they stay in decoded text.
        if let Some(added) = tokenizer["added_tokens"].as_array_mut() {
            for (id, content) in [(392, "<tool_call>"), (393, "</tool_call>")] {
                added.push(
                    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": false}),
                );
            }
        }
    }
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string())?;
    let config = json!({"chat_template": fixture.chat_template, "eos_token": "<|im_end|>", "bos_token": null});
    std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string())?;
    Ok(dir)
}

pub struct Server {
    pub state: web::Data<AppState>,
    _dir: tempfile::TempDir,
}

pub fn server_for(
    fixture: &Fixture,
    keys: Vec<String>,
    limits: Limits,
    engine: EngineConfig,
) -> anyhow::Result<Server> {
    let dir = model_dir(fixture)?;
    let metrics = Arc::new(GatewayMetrics::new()?);
    let state = web::Data::new(AppState::new(MODEL.into(), limits, keys, metrics.clone()));
    let options = LoadOptions {
        sparse: fixture.sparse.map(|(layout, _)| layout),
        ..LoadOptions::default()
    };
    let mut loaded = LoadedModel::open_with(dir.path(), &Device::flex(), DType::F32, options)?;
    loaded.info.markers = fixture.sparse.map(|(_, markers)| markers);
    let engine = EngineHandle::start(
        loaded,
        EngineConfig {
            observer: Some(metrics),
            ..engine
        },
    )?;
    state.set_engine(engine);
    Ok(Server { state, _dir: dir })
}

pub fn server_with(keys: Vec<String>, limits: Limits, engine: EngineConfig) -> anyhow::Result<Server> {
    server_for(&Fixture::default(), keys, limits, engine)
}

pub fn small_engine() -> EngineConfig {
    EngineConfig {
        kv_cache_memory: KvCacheMemory::Tokens(4096),
        block_size: 4,
        ..EngineConfig::default()
    }
}

pub fn server() -> anyhow::Result<Server> {
    server_with(Vec::new(), Limits::default(), small_engine())
}

#[macro_export]
macro_rules! app {
    ($server:expr) => {
        actix_web::test::init_service(actix_web::App::new().configure(ember_gateway::configure($server.state.clone())))
            .await
    };
}

pub async fn call<S, B>(app: &S, req: test::TestRequest) -> (StatusCode, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let resp = test::call_service(app, req.to_request()).await;
    let status = resp.status();
    let bytes = test::read_body(resp).await;
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

pub fn post(path: &str, body: Value) -> test::TestRequest {
    test::TestRequest::post().uri(path).set_json(body)
}

pub fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8, "temperature": 0});
    let Value::Object(extra) = extra else {
        panic!("extra request fields must be a JSON object, got {extra}");
    };
    for (k, v) in extra {
        body[k] = v;
    }
    body
}

/// The `data:` payloads of an SSE body.
pub fn sse_events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

pub fn assert_openai_error(status: StatusCode, body: &Value, want: StatusCode, param: Option<&str>) {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
}
