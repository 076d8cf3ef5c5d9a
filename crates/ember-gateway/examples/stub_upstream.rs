//! A fast stub of an OpenAI-compatible server, for measuring what a gateway
//! in front of it adds (scripts/bench_gateway.py): `/v1/models`, and
//! `/v1/chat/completions` answering at once with a fixed 16-token reply,
//! whole or as 16 streamed chunks plus usage and `[DONE]`.
//!
//!   cargo run --release --example stub_upstream -- PORT [WORKERS]

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

const WORDS: [&str; 16] = [
    "The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", " while", " the", " cat", " sleeps", " in",
    " the", " sun",
];

async fn chat(body: web::Json<Value>) -> HttpResponse {
    let model = body["model"].as_str().unwrap_or("stub").to_owned();
    let usage = json!({"prompt_tokens": 12, "completion_tokens": WORDS.len(), "total_tokens": 12 + WORDS.len()});
    if !body["stream"].as_bool().unwrap_or(false) {
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": WORDS.concat()}, "finish_reason": "stop"}],
            "usage": usage,
        }));
    }
    let chunk = |delta: Value, finish: Value| {
        let body = json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {body}\n\n")
    };
    let mut out = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for word in WORDS {
        out.push_str(&chunk(json!({"content": word}), Value::Null));
    }
    out.push_str(&chunk(json!({}), json!("stop")));
    if body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)) {
        let body = json!({"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [], "usage": usage});
        out.push_str(&format!("data: {body}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    HttpResponse::Ok().content_type("text/event-stream").body(out)
}

async fn models() -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "stub"}]}))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9000);
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(1);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new()
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/models", web::get().to(models))
        })
        .workers(workers)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
