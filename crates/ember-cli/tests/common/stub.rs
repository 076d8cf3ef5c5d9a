//! A stub OpenAI-compatible server on a loopback port: each request's path
//! and JSON body go to a handler that returns a status and a JSON reply,
//! and every request is kept for the test to inspect. Keep-alive
//! connections, one thread each; it serves until the test process ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

pub type Handler = dyn Fn(&str, &Value) -> (u16, Value) + Send + Sync;

pub struct Stub {
    pub port: u16,
    /// Every request so far: its path and body.
    pub requests: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Stub {
    pub fn start(handler: impl Fn(&str, &Value) -> (u16, Value) + Send + Sync + 'static) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, kept) = (handler.clone(), kept.clone());
                std::thread::spawn(move || serve(stream, &*handler, &kept));
            }
        });
        Ok(Self { port, requests })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The bodies of the requests to paths ending in `suffix`.
    pub fn bodies(&self, suffix: &str) -> Vec<Value> {
        let all = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        all.into_iter().filter(|(path, _)| path.ends_with(suffix)).map(|(_, body)| body).collect()
    }
}

fn serve(stream: std::net::TcpStream, handler: &Handler, kept: &Mutex<Vec<(String, Value)>>) {
    let Ok(clone) = stream.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if let Ok(mut all) = kept.lock() {
            all.push((path.clone(), body.clone()));
        }
        let (status, reply) = handler(&path, &body);
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nRetry-After: 0\r\nContent-Length: {}\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            reply.len()
        );
        if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(reply.as_bytes())).is_err() {
            return;
        }
    }
}

/// A chat completion reply with `content` and fixed usage.
pub fn chat_reply(content: &str) -> Value {
    serde_json::json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
    })
}

/// The one user message of a chat completion request.
pub fn user_content(body: &Value) -> &str {
    body["messages"][0]["content"].as_str().unwrap_or_default()
}

/// `/tokenize` counting whitespace-separated words, of `prompt` or of the
/// one user message.
pub fn tokenize_words(body: &Value) -> Value {
    let text = body["prompt"].as_str().unwrap_or_else(|| user_content(body));
    serde_json::json!({"count": text.split_whitespace().count()})
}
