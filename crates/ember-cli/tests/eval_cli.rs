//! `ember eval` against a stub OpenAI server on loopback that answers with
//! known texts: the scores must come out as computed by hand, a busy answer
//! (503) is retried, and `--resume` asks only for the samples `--out` lacks.

mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::stub::{Stub, chat_reply, tokenize_words, user_content};
use serde_json::{Value, json};

fn ember(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_ember")).args(args).output()
}

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

#[test]
fn jsonl_scores_are_the_hand_computed_ones() -> anyhow::Result<()> {
    let served = AtomicUsize::new(0);
    let stub = Stub::start(move |_, body| {
        if served.fetch_add(1, Ordering::Relaxed) == 0 {
            return (503, json!({"error": {"message": "busy", "type": "server_error"}}));
        }
        (200, chat_reply(answer(user_content(body))))
    })?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data.jsonl");
    let lines = [
        json!({"context": "France's capital is Paris.", "question": "What is the capital of France?", "answers": ["Paris"]}),
        json!({"context": "New York City is called the big apple.", "question": "Which city is the big apple?", "answers": ["New York City"], "task": "qa"}),
        json!({"context": "The report: revenue grew; costs fell.", "answers": ["revenue grew and costs fell"], "task": "summarization"}),
    ];
    std::fs::write(&data, lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n"))?;
    let rows_path = dir.path().join("rows.jsonl");
    let out = ember(&[
        "eval", "--base-url", &stub.base_url(), "--model", "stub", "--suite", "jsonl", "--concurrency", "2",
        "--data", data.to_str().unwrap_or_default(), "--json", rows_path.to_str().unwrap_or_default(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("503") && stderr.contains("retrying"), "the busy answer is retried: {stderr}");
    assert!(stderr.contains("eval: 3 rows, 3 requests"), "the summary line: {stderr}");
    let table = String::from_utf8(out.stdout)?;
    assert!(table.contains("| qa | 100 | f1 | 0.75 | 2 |"), "{table}");
    let rows: Vec<Value> = std::fs::read_to_string(&rows_path)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
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

    let missing = ember(&["eval", "--model", "stub", "--suite", "jsonl"])?;
    assert_eq!(missing.status.code(), Some(1));
    // Flags that only shape synthetic prompts are refused, not ignored.
    let data_arg = data.to_str().unwrap_or_default();
    let ignored = ember(&["eval", "--model", "stub", "--suite", "jsonl", "--data", data_arg, "--important"])?;
    assert_eq!(ignored.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&ignored.stderr).contains("--important"));
    Ok(())
}

/// The value of the first needle ("... is: VALUE.") in a RULER prompt.
fn first_needle(prompt: &str) -> String {
    prompt
        .split("is: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_owned()
}

#[test]
fn resume_asks_only_for_what_the_out_file_lacks() -> anyhow::Result<()> {
    // Tokens are words; the stub answers every needle question with the
    // first needle's value, right for single-needle samples.
    let stub = Stub::start(|path, body| match path {
        "/tokenize" => (200, tokenize_words(body)),
        _ => (200, chat_reply(&first_needle(user_content(body)))),
    })?;
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("samples.jsonl");
    let base_url = stub.base_url();
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "--base-url", &base_url, "--model", "stub", "--suite", "niah"];
        args.extend(["--lengths", "300", "--samples", "3", "--max-tokens", "16"]);
        args.extend(["--out", out_path.to_str().unwrap_or_default()]);
        args.extend(extra);
        ember(&args)
    };
    let first = run(&[])?;
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let table = String::from_utf8(first.stdout.clone())?;
    assert!(table.contains("| niah_single | 300 | string_match_all | 1.00 | 3 |"), "{table}");
    let chats = |stub: &Stub| stub.bodies("/chat/completions").len();
    assert_eq!(chats(&stub), 9, "three tasks, three samples each");
    let records: Vec<Value> = std::fs::read_to_string(&out_path)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(records.len(), 9);
    assert!(records.iter().all(|r| r["run"]["seed"] == 0 && r["scores"]["string_match_all"].is_number()));
    // A prompt fills its length: 300 tokens less the 16 for the answer.
    let prompts = stub.bodies("/chat/completions");
    assert!(prompts.iter().all(|b| (266..=284).contains(&user_content(b).split_whitespace().count())));

    // An interrupted run: two records and half a line are left.
    let text = std::fs::read_to_string(&out_path)?;
    let kept: Vec<&str> = text.lines().take(2).collect();
    std::fs::write(&out_path, format!("{}\n{}", kept.join("\n"), &text.lines().nth(2).unwrap_or_default()[..20]))?;
    let resumed = run(&["--resume"])?;
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert_eq!(chats(&stub), 9 + 7, "only the seven missing samples are asked again");
    assert!(stderr.contains("9 requests (7 now, 2 resumed)"), "{stderr}");
    // The same scores (the timings are new).
    let scores = |stdout: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(stdout).lines().map(|l| l.split('|').take(6).collect::<Vec<_>>().join("|")).collect()
    };
    assert_eq!(scores(&resumed.stdout), scores(&first.stdout));
    assert_eq!(std::fs::read_to_string(&out_path)?.lines().count(), 9);

    // Resuming another run's file is refused, and nothing is asked.
    let other = run(&["--resume", "--seed", "1"])?;
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stderr).contains("another run"), "{}", String::from_utf8_lossy(&other.stderr));
    assert_eq!(chats(&stub), 16);
    Ok(())
}
