//! `ember summarize` against a stub OpenAI server on loopback whose
//! `/tokenize` counts words and whose replies name what they were given:
//! the chunks, the merge tree and the final text come out as worked out by
//! hand, no chunk is over the budget, and the `[IMPORTANT]` span is in
//! every prompt.

mod common;

use std::process::{Command, Output};

use common::stub::{Stub, chat_reply, tokenize_words, user_content};
use serde_json::Value;

/// The first word of each `--- PART n ---` of a merge prompt.
fn part_heads(prompt: &str) -> Vec<&str> {
    prompt
        .split("--- PART ")
        .skip(1)
        .filter_map(|part| part.split_once('\n').and_then(|(_, body)| body.split_whitespace().next()))
        .collect()
}

/// The document text of a chunk prompt.
fn chunk_text(prompt: &str) -> Option<&str> {
    prompt.split_once("--- TEXT ---\n")?.1.split_once("\n--- END OF TEXT ---").map(|(text, _)| text)
}

/// `i` of a chunk prompt's "part i of n".
fn part_number(prompt: &str) -> Option<usize> {
    prompt.split_once("Below is part ")?.1.split_whitespace().next()?.parse().ok()
}

/// A summary of ten words whose first names what it covers.
fn ten_words(head: &str) -> String {
    format!("{head}{}", " w".repeat(9))
}

fn reply(prompt: &str) -> String {
    if let Some(text) = chunk_text(prompt) {
        if prompt.contains("Question:") {
            return if text.contains("4321") { "the code is 4321".into() } else { "NONE".into() };
        }
        let tags: Vec<String> = text.lines().filter_map(|l| l.strip_prefix("# Part ")).map(|k| format!("p{k}")).collect();
        return ten_words(&tags.join("+"));
    }
    if prompt.contains("Answer the question using only these notes") {
        return if prompt.contains("4321") { "4321".into() } else { "unknown".into() };
    }
    if prompt.contains("Write the summary of the whole document") {
        return format!("FINAL {}", part_heads(prompt).join("|"));
    }
    ten_words(&part_heads(prompt).join("+"))
}

/// Eight sections of 33 words; the third holds a marked fact.
fn document() -> String {
    (1..=8)
        .map(|k| {
            let fact = if k == 3 { "[IMPORTANT]the code is 4321[/IMPORTANT] " } else { "" };
            format!("# Part {k}\n{fact}{}\n\n", "text ".repeat(30).trim_end())
        })
        .collect()
}

/// The stub, and the document in a temporary directory.
fn setup() -> std::io::Result<(Stub, tempfile::TempDir, std::path::PathBuf)> {
    let stub = Stub::start(|path, body| match path {
        "/tokenize" => (200, tokenize_words(body)),
        _ => (200, chat_reply(&reply(user_content(body)))),
    })?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("doc.md");
    std::fs::write(&file, document())?;
    Ok((stub, dir, file))
}

fn summarize(stub: &Stub, file: &std::path::Path, chunk_tokens: &str, extra: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["summarize", file.to_str().unwrap_or_default(), "--base-url", &stub.base_url(), "--model", "stub"])
        .args(["--chunk-tokens", chunk_tokens, "--summary-tokens", "10", "--concurrency", "3"])
        .args(extra)
        .output()
}

#[test]
fn chunks_merge_level_by_level_and_carry_the_important_span() -> anyhow::Result<()> {
    let (stub, dir, file) = setup()?;
    let out_path = dir.path().join("summary.md");
    let out = summarize(&stub, &file, "90", &["--out", out_path.to_str().unwrap_or_default()])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The span block is 18 words, leaving 72 of the 90 for text: two
    // sections of 33 (37 with the span) per chunk, four chunks. Two ten-word
    // summaries and their part headers (16 each) fit in 72, three do not:
    // four summaries merge into two, and those two into the final text.
    assert_eq!(std::fs::read_to_string(&out_path)?, "# Summary of doc.md\n\nFINAL p1+p2+p3+p4|p5+p6+p7+p8\n");
    assert!(stderr.contains("4 chunks, 2 merge levels, 7 requests"), "{stderr}");
    let prompts: Vec<String> = stub.bodies("/chat/completions").iter().map(|b| user_content(b).to_owned()).collect();
    assert_eq!(prompts.len(), 7);
    assert!(prompts.iter().all(|p| p.contains("- the code is 4321")), "the span is in every prompt");
    // Chunks are asked for concurrently: put them back in document order.
    let mut chunks: Vec<(usize, &str)> =
        prompts.iter().filter_map(|p| Some((part_number(p)?, chunk_text(p)?))).collect();
    chunks.sort_unstable();
    let chunks: Vec<&str> = chunks.into_iter().map(|(_, text)| text).collect();
    assert_eq!(chunks.len(), 4);
    for chunk in &chunks {
        assert!(chunk.split_whitespace().count() + 18 <= 90, "over budget: {chunk}");
    }
    let all: String = chunks.join(" ");
    assert_eq!(all.split_whitespace().collect::<Vec<_>>(), document().split_whitespace().collect::<Vec<_>>());
    Ok(())
}

#[test]
fn a_question_is_answered_from_the_notes_that_hold_something() -> anyhow::Result<()> {
    let (stub, _dir, file) = setup()?;
    let out = summarize(&stub, &file, "90", &["--question", "What is the code?", "--frequency-penalty", "0.5"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout)?, "# What is the code?\n\n4321\n");
    // Four chunks, three of them NONE; the one note becomes the answer.
    assert!(stderr.contains("4 chunks, 1 merge levels, 5 requests"), "{stderr}");
    let last: Vec<Value> = stub.bodies("/chat/completions");
    assert!(last.iter().all(|b| b["frequency_penalty"] == 0.5 && b["temperature"] == 0.0), "{last:?}");
    let final_prompt = last.last().map(user_content).unwrap_or_default();
    assert!(final_prompt.contains("--- PART 1 ---\nthe code is 4321") && !final_prompt.contains("PART 2"), "{final_prompt}");

    // A budget the span leaves no room in is refused before any request.
    let before = stub.bodies("/chat/completions").len();
    let tight = summarize(&stub, &file, "60", &[])?;
    assert_eq!(tight.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&tight.stderr).contains("--chunk-tokens 60"));
    assert_eq!(stub.bodies("/chat/completions").len(), before);
    Ok(())
}
