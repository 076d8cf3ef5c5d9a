//! `ember eval --suite jsonl` against a stub OpenAI server on loopback that
//! answers each question with a fixed text: the scores must come out as
//! computed by hand, and a busy answer (503) is retried.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// The stub's answer to a prompt: chosen by what the prompt asks.
fn answer(prompt: &str) -> &'static str {
    if prompt.contains("capital of France") {
        "Paris"
    } else if prompt.contains("big apple") {
        "The big apple is New York"
    } else {
        "costs fell while revenue grew"
    }
}

/// Serves chat completions on `listener` until the test ends (keep-alive
/// connections, one request after another); the first request gets a 503.
fn serve(listener: TcpListener) {
    let requests = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming().flatten() {
        let requests = requests.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut writer = stream;
            loop {
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
                let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let prompt = request["messages"][0]["content"].as_str().unwrap_or_default();
                let (status, reply) = if requests.fetch_add(1, Ordering::Relaxed) == 0 {
                    ("503 Service Unavailable\r\nRetry-After: 0", json!({"error": {"message": "busy", "type": "server_error"}}))
                } else {
                    let reply = json!({
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer(prompt)}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105},
                    });
                    ("200 OK", reply)
                };
                let reply = reply.to_string();
                let head = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", reply.len());
                if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(reply.as_bytes())).is_err() {
                    return;
                }
            }
        });
    }
}

#[test]
fn jsonl_scores_are_the_hand_computed_ones() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || serve(listener));
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data.jsonl");
    let lines = [
        json!({"context": "France's capital is Paris.", "question": "What is the capital of France?", "answers": ["Paris"]}),
        json!({"context": "New York City is called the big apple.", "question": "Which city is the big apple?", "answers": ["New York City"], "task": "qa"}),
        json!({"context": "The report: revenue grew; costs fell.", "answers": ["revenue grew and costs fell"], "task": "summarization"}),
    ];
    std::fs::write(&data, lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"))?;
    let out_path = dir.path().join("rows.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["eval", "--base-url", &format!("http://127.0.0.1:{port}/v1"), "--model", "stub", "--suite", "jsonl"])
        .args(["--data", data.to_str().unwrap_or_default(), "--json", out_path.to_str().unwrap_or_default()])
        .args(["--concurrency", "2"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("503") && stderr.contains("retrying"), "the busy answer is retried: {stderr}");
    assert!(stderr.contains("eval: 3 rows, 3 requests"), "the summary line: {stderr}");
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("| qa | 100 | f1 | 0.75 | 2 |"), "{table}");
    let rows: Vec<Value> = std::fs::read_to_string(&out_path)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let score = |task: &str, metric: &str| {
        rows.iter().find(|r| r["task"] == task && r["metric"] == metric).and_then(|r| r["score"].as_f64())
    };
    // "Paris" is exact; "the big apple is new york" against "new york city":
    // 2 shared words, precision 2/5, recall 2/3, F1 1/2.
    assert_eq!(score("qa", "exact_match"), Some(0.5));
    assert_eq!(score("qa", "f1"), Some(0.75));
    // "costs fell while revenue grew" against "revenue grew and costs fell":
    // the longest common subsequence is 2 of 5 words each way, F 0.4.
    assert!((score("summarization", "rouge_l").unwrap_or(0.0) - 0.4).abs() < 1e-12);
    assert!(rows.iter().all(|r| r["length"] == 100 && r["ms_per_token"].as_f64().is_some()));

    let missing = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["eval", "--model", "stub", "--suite", "jsonl"])
        .output()?;
    assert_eq!(missing.status.code(), Some(1));
    Ok(())
}
