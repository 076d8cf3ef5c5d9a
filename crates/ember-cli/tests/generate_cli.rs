//! `ember generate` as outside checks run it: the JSON contract on every
//! fixture, and clear, non-panicking errors for broken model directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde::Deserialize;

const FIXTURES: [&str; 4] = ["qwen3-tiny", "qwen3-yarn-tiny", "llama-tiny", "qwen2-tiny"];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn ember(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_ember")).args(args).output()?)
}

#[derive(Deserialize)]
struct Greedy {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
}

#[derive(Deserialize)]
struct Reference {
    greedy: Greedy,
}

#[derive(Deserialize)]
struct GenerateJson {
    prompt_ids: Vec<u32>,
    token_ids: Vec<u32>,
    text: Option<String>,
}

#[test]
fn json_contract_gives_reference_greedy_tokens() -> anyhow::Result<()> {
    for name in FIXTURES {
        let dir = fixture(name);
        let reference: Reference =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let ids: Vec<String> = reference.greedy.prompt.iter().map(u32::to_string).collect();
        let out = ember(&[
            "generate", "--model", dir.to_str().unwrap_or_default(),
            "--prompt-ids", &ids.join(","), "--max-tokens", "20", "--temperature", "0", "--json",
        ])?;
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout)?;
        let last = stdout.lines().last().unwrap_or_default();
        let parsed: GenerateJson = serde_json::from_str(last)?;
        assert_eq!(parsed.prompt_ids, reference.greedy.prompt, "{name}");
        assert_eq!(parsed.token_ids, reference.greedy.tokens, "{name}");
        let has_tokenizer = dir.join("tokenizer.json").is_file();
        assert_eq!(parsed.text.is_some(), has_tokenizer, "{name}: text is null without a tokenizer");
    }
    Ok(())
}

#[derive(Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct TokenizerReference {
    tokenizer: Vec<TokenizerCase>,
}

#[test]
fn text_prompt_is_tokenized_and_answer_decoded() -> anyhow::Result<()> {
    let dir = fixture("qwen3-tiny");
    let reference: TokenizerReference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let case = &reference.tokenizer[1];
    let out = ember(&[
        "generate", "--model", dir.to_str().unwrap_or_default(),
        "--prompt", &case.text, "--max-tokens", "5", "--temperature", "0", "--json",
    ])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout)?;
    let parsed: GenerateJson = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    assert_eq!(parsed.prompt_ids, case.ids);
    assert!(!parsed.token_ids.is_empty() && parsed.token_ids.len() <= 5);
    let text = parsed.text.ok_or_else(|| anyhow::anyhow!("no text although the model has a tokenizer"))?;

    // Without --json the same greedy answer streams as text, then a newline.
    let out = ember(&[
        "generate", "--model", dir.to_str().unwrap_or_default(),
        "--prompt", &case.text, "--max-tokens", "5", "--temperature", "0",
    ])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout)?, format!("{text}\n"));
    Ok(())
}

#[test]
fn text_prompt_without_tokenizer_is_a_clear_error() -> anyhow::Result<()> {
    let out = ember(&["generate", "--model", fixture("llama-tiny").to_str().unwrap_or_default(), "--prompt", "hi"])?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("tokenizer.json"), "{stderr}");
    Ok(())
}

/// A copy of a fixture to break.
fn broken_copy() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("qwen3-tiny").join(file), dir.path().join(file))?;
    }
    Ok(dir)
}

/// Rewrites model.safetensors, letting `edit` drop or replace tensors.
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, TensorView<'_>) -> Option<(Vec<usize>, Vec<u8>)>,
) -> anyhow::Result<()> {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path)?;
    let tensors = SafeTensors::deserialize(&bytes)?;
    let mut kept = Vec::new();
    for (name, view) in tensors.tensors() {
        let dtype = view.dtype();
        if let Some((shape, data)) = edit(&name, view) {
            kept.push((name, dtype, shape, data));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = kept
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<anyhow::Result<_>>()?;
    safetensors::serialize_to_file(views, None, &path)?;
    Ok(())
}

fn keep(_: &str, v: TensorView<'_>) -> Option<(Vec<usize>, Vec<u8>)> {
    Some((v.shape().to_vec(), v.data().to_vec()))
}

/// Runs generate on `dir` and returns stderr, asserting failure without a panic.
fn failing_generate(dir: &Path) -> anyhow::Result<String> {
    let out = ember(&["generate", "--model", dir.to_str().unwrap_or_default(), "--prompt-ids", "1,2"])?;
    let stderr = String::from_utf8(out.stderr)?;
    assert!(!out.status.success(), "should fail: {stderr}");
    assert_eq!(out.status.code(), Some(1), "a clean error exit, not a panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(stderr)
}

#[test]
fn missing_weights_file_is_named() -> anyhow::Result<()> {
    let dir = broken_copy()?;
    std::fs::remove_file(dir.path().join("model.safetensors"))?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("model.safetensors"), "{err}");
    Ok(())
}

#[test]
fn truncated_weights_file_is_named() -> anyhow::Result<()> {
    let dir = broken_copy()?;
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("model.safetensors"), "{err}");
    Ok(())
}

#[test]
fn wrong_shape_names_file_and_tensor() -> anyhow::Result<()> {
    let dir = broken_copy()?;
    rewrite_weights(dir.path(), |name, v| {
        if name == "model.layers.1.mlp.up_proj.weight" {
            let [out, inp] = [v.shape()[0], v.shape()[1]];
            Some((vec![inp, out], v.data().to_vec()))
        } else {
            keep(name, v)
        }
    })?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("model.safetensors") && err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
    assert!(err.contains("expected [160, 64]"), "{err}");
    Ok(())
}

#[test]
fn missing_tensor_names_file_and_tensor() -> anyhow::Result<()> {
    let dir = broken_copy()?;
    rewrite_weights(dir.path(), |name, v| (name != "model.layers.0.self_attn.q_norm.weight").then(|| keep(name, v)).flatten())?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("model.safetensors") && err.contains("model.layers.0.self_attn.q_norm.weight"), "{err}");
    Ok(())
}

#[test]
fn unknown_model_type_is_named() -> anyhow::Result<()> {
    let dir = broken_copy()?;
    let config = std::fs::read_to_string(dir.path().join("config.json"))?;
    std::fs::write(dir.path().join("config.json"), config.replace("\"qwen3\"", "\"mamba\""))?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("config.json") && err.contains("mamba"), "{err}");
    Ok(())
}

#[test]
fn malformed_config_is_named() -> anyhow::Result<()> {
    let dir = broken_copy()?;
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"qwen3\", \"hidden_size\": ")?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("config.json") && err.contains("malformed JSON"), "{err}");

    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"qwen3\", \"hidden_size\": \"big\"}")?;
    let err = failing_generate(dir.path())?;
    assert!(err.contains("config.json") && err.contains("hidden_size"), "{err}");
    Ok(())
}

#[test]
fn token_outside_vocabulary_is_an_error() -> anyhow::Result<()> {
    let out = ember(&["generate", "--model", fixture("qwen3-tiny").to_str().unwrap_or_default(), "--prompt-ids", "99999"])?;
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("99999") && stderr.contains("vocabulary"), "{stderr}");
    Ok(())
}

/// `--attention sparse` with a window over the whole prompt gives the
/// reference greedy tokens; a real window still generates; bad settings
/// are errors that name the setting.
#[test]
fn sparse_attention_flags_reach_the_model() -> anyhow::Result<()> {
    let dir = fixture("qwen3-tiny");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let ids: Vec<String> = reference.greedy.prompt.iter().map(u32::to_string).collect();
    let ids = ids.join(",");
    let base = ["generate", "--model", dir.to_str().unwrap_or_default(), "--prompt-ids", &ids, "--max-tokens", "20", "--json"];
    let run = |extra: &[&str]| ember(&[&base[..], extra].concat());

    let whole = run(&["--attention", "sparse", "--sparse-block", "16", "--sparse-local", "100000", "--sparse-dense-below", "0"])?;
    assert!(whole.status.success(), "{}", String::from_utf8_lossy(&whole.stderr));
    let parsed: GenerateJson = serde_json::from_str(String::from_utf8(whole.stdout)?.lines().last().unwrap_or_default())?;
    assert_eq!(parsed.token_ids, reference.greedy.tokens, "a whole window is dense");

    let windowed = run(&["--attention", "sparse", "--sparse-block", "16", "--sparse-local", "0", "--sparse-sinks", "1", "--sparse-dense-below", "0"])?;
    assert!(windowed.status.success(), "{}", String::from_utf8_lossy(&windowed.stderr));

    for (extra, says) in [
        (&["--sparse-local", "3"][..], "sparse_local"),
        (&["--keep-markers"][..], "keep_markers is set but attention is dense"),
        (&["--attention", "sparse", "--sparse-block", "24"][..], "sparse_block must be a positive multiple of the KV block size 16"),
    ] {
        let out = run(extra)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    Ok(())
}

#[derive(Deserialize)]
struct RopeOverrides {
    prompt: Vec<u32>,
    cases: Vec<RopeOverrideCase>,
}

#[derive(Deserialize)]
struct RopeOverrideCase {
    rope_scaling: serde_json::Value,
    last_logits: Vec<f32>,
}

/// qwen3-tiny stops at 256 positions; `--rope-scaling` YaRN x4 opens a
/// 1024-token window, and the first greedy token of a 400-token prompt is
/// the one transformers picks under the same override.
#[test]
fn rope_scaling_extends_the_window() -> anyhow::Result<()> {
    let dir = fixture("qwen3-tiny");
    let reference: RopeOverrides = serde_json::from_str(&std::fs::read_to_string(dir.join("rope_overrides.json"))?)?;
    let yarn = reference
        .cases
        .iter()
        .find(|c| c.rope_scaling["rope_type"] == "yarn")
        .ok_or_else(|| anyhow::anyhow!("no yarn case"))?;
    let expected = yarn
        .last_logits
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i as u32, v) } else { best })
        .0;
    let ids: Vec<String> = reference.prompt.iter().map(u32::to_string).collect();
    let ids = ids.join(",");
    let override_json = yarn.rope_scaling.to_string();
    let base = ["generate", "--model", dir.to_str().unwrap_or_default(), "--prompt-ids", &ids, "--max-tokens", "1", "--json"];
    let run = |extra: &[&str]| ember(&[&base[..], extra].concat());

    let refused = run(&[])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("maximum context length is 256"), "{stderr}");

    let extended = run(&["--rope-scaling", &override_json, "--max-model-len", "1024"])?;
    assert!(extended.status.success(), "{}", String::from_utf8_lossy(&extended.stderr));
    let parsed: GenerateJson = serde_json::from_str(String::from_utf8(extended.stdout)?.lines().last().unwrap_or_default())?;
    assert_eq!(parsed.token_ids, vec![expected]);

    for (extra, says) in [
        (&["--rope-scaling", &override_json, "--max-model-len", "2048"][..], "exceeds the model's window of 1024"),
        (&["--rope-scaling", "{\"rope_type\":\"yarn\"}"][..], "`factor` is required"),
        (&["--rope-scaling", "yarn"][..], "not valid JSON"),
    ] {
        let out = run(extra)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
    }
    Ok(())
}
