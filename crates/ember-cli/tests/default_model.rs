//! End to end on the default model (SmolLM2-135M-Instruct, fetched by
//! scripts/fetch-default-model.sh): a real question gets a real answer, and
//! `ember chat` keeps a conversation.

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
