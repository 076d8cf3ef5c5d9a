//! Two `ember serve` replicas of the default model behind a third started
//! with `--upstream` twice and no model of its own, all real processes on
//! loopback: the front lists the one model, spreads requests over both
//! replicas, streamed and not, and keeps answering when one replica dies.

mod common;

use anyhow::{Result, ensure};
use common::{MODEL, Server};
use serde_json::{Value, json};

fn ask(front: &Server, stream: bool) -> Result<String> {
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": stream,
    });
    let (status, text) = front.post("/v1/chat/completions", &body)?;
    ensure!(status == 200, "status {status}: {text}");
    if !stream {
        let value: Value = serde_json::from_str(&text)?;
        return Ok(value["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned());
    }
    // Chunked transfer encoding interleaves size lines: take the events.
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    ensure!(events.last() == Some(&"[DONE]") && !text.contains("\"error\""), "{text}");
    Ok(events
        .iter()
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect())
}

/// Chat requests a replica answered, from its own metrics.
fn answered(replica: &Server) -> Result<f64> {
    replica.metric(r#"ember:http_requests_total{route="/v1/chat/completions",status="200"}"#)
}

#[test]
fn two_replicas_behind_a_third_share_requests_and_survive_one_dying() -> Result<()> {
    let a = Server::start(&["--kv-cache-memory", "64MiB"])?;
    let b = Server::start(&["--kv-cache-memory", "64MiB"])?;
    let front = Server::start(&["--upstream", &a.url(), "--upstream", &format!("{}/v1", b.url())])?;

    let models = front.get("/v1/models")?;
    let body: Value = serde_json::from_str(models.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim())?;
    let ids: Vec<&str> = body["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    ensure!(ids == [MODEL], "{body}");

    let mut answers = Vec::new();
    for i in 0..6 {
        answers.push(ask(&front, i % 2 == 0)?);
    }
    ensure!(answers.iter().all(|a| a == &answers[0] && !a.is_empty()), "greedy answers differ: {answers:?}");
    let (on_a, on_b) = (answered(&a)?, answered(&b)?);
    ensure!(on_a >= 1.0 && on_b >= 1.0 && on_a + on_b == 6.0, "a answered {on_a}, b {on_b}");

    // One replica dies: the front keeps answering through the other.
    drop(a);
    for i in 0..4 {
        ensure!(ask(&front, i % 2 == 0)? == answers[0]);
    }
    ensure!(answered(&b)? >= on_b + 4.0);
    let outcomes = front.get("/metrics")?;
    ensure!(outcomes.contains("ember:backend_requests_total{"), "{outcomes}");
    Ok(())
}
