//! End to end on the default model (SmolLM2-135M-Instruct, fetched by
//! scripts/fetch-default-model.sh): a real question gets a real answer, and
//! `ember chat` keeps a conversation, and `ember eval` and `ember summarize`
//! run against `ember serve`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

fn ember() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ember"))
}

#[test]
fn the_default_model_knows_the_capital_of_france() -> anyhow::Result<()> {
    let out = ember()
        .args(["generate", "--chat", "--prompt", "What is the capital of France?", "--max-tokens", "32"])
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Paris"), "{stdout}");
    Ok(())
}

#[test]
fn chat_keeps_history_resets_and_exits() -> anyhow::Result<()> {
    let mut child = ember()
        .args(["chat", "--temperature", "0", "--max-tokens", "40"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(b"What is the capital of France?\n/reset\nWhat is the capital of France?\n/exit\nnever read\n")?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("Paris").count(), 2, "{stdout}");
    assert!(stdout.contains("(history cleared)"), "{stdout}");
    Ok(())
}

#[test]
fn a_missing_default_model_says_how_to_fetch_it() -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    let out = ember()
        .env("EMBER_CACHE_DIR", empty.path())
        .args(["generate", "--prompt", "hi"])
        .output()?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fetch-default-model.sh"), "{stderr}");
    Ok(())
}

#[test]
fn eval_and_summarize_run_against_ember_serve() -> anyhow::Result<()> {
    let server = common::Server::start(&["--kv-cache-memory", "256MiB"])?;
    let base_url = format!("{}/v1", server.url());
    let dir = tempfile::tempdir()?;
    let rows_path = dir.path().join("rows.jsonl");
    let out = ember()
        .args(["eval", "--base-url", &base_url, "--model", common::MODEL, "--suite", "niah", "--lengths", "512"])
        .args(["--samples", "1", "--max-tokens", "32", "--json", rows_path.to_str().unwrap_or_default()])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&rows_path)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        let score = row["score"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&score) && row["length"] == 512 && row["n"] == 1, "{row}");
        assert!(row["ms_per_token"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    }

    // The translator's note and the start of chapter I, in a few chunks.
    let book = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/summarize/botchan.md"))?;
    let excerpt: String = book.lines().take(140).collect::<Vec<_>>().join("\n");
    let file = dir.path().join("botchan-start.md");
    std::fs::write(&file, excerpt)?;
    let out = ember()
        .args(["summarize", file.to_str().unwrap_or_default(), "--base-url", &base_url, "--model", common::MODEL])
        .args(["--chunk-tokens", "768", "--summary-tokens", "96"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = String::from_utf8(out.stdout)?;
    assert!(summary.starts_with("# Summary of botchan-start.md\n\n") && summary.len() > 60, "{summary}");
    assert!(stderr.contains("merge levels") && stderr.contains("requests"), "{stderr}");
    Ok(())
}
