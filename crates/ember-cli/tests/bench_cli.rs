//! `ember bench` end to end on a tiny fixture: every level runs its requests
//! and reports them (the figures themselves are not checked: benchmarks
//! never assert times).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn bench_reports_every_level_as_a_table_and_json() -> anyhow::Result<()> {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["bench", "--model", model.to_str().unwrap_or_default()])
        .args(["--concurrency", "1,4,16", "--prompt-len", "20", "--output-len", "6", "--requests", "16"])
        .args(["--kv-cache-memory", "16MiB", "--block-size", "4"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("KV cache"), "the pool is reported at start: {stderr}");
    let stdout = String::from_utf8(out.stdout)?;
    assert!(stdout.contains("TTFT p50") && stdout.contains("throughput at 16 concurrent streams"), "{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    let levels = report["levels"].as_array().cloned().unwrap_or_default();
    assert_eq!(levels.len(), 3);
    for (level, c) in levels.iter().zip([1, 4, 16]) {
        assert_eq!(level["concurrency"], c);
        assert_eq!(level["requests"], 16);
        for key in ["requests_per_s", "output_tokens_per_s", "ttft_p50_ms", "itl_p99_ms", "mean_batch_size"] {
            assert!(level[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {level}");
        }
    }
    assert!(report["throughput_ratio_16_to_1"].as_f64().is_some());

    let bad = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["bench", "--model", model.to_str().unwrap_or_default(), "--concurrency", "0"])
        .output()?;
    assert_eq!(bad.status.code(), Some(1));
    Ok(())
}

/// The engine-only mode (llama-bench's tests) reports each test's mean and
/// spread over the repetitions, as a table and as JSON on the last line.
#[test]
fn engine_only_bench_reports_pp_and_tg_tests() -> anyhow::Result<()> {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen3-tiny");
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .args(["bench", "--engine-only", "--model", model.to_str().unwrap_or_default()])
        .args(["--n-prompt", "24", "--n-gen", "6", "--depth", "0,10", "--repetitions", "2"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout)?;
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    let tests = report["tests"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = tests.iter().filter_map(|t| t["test"].as_str()).collect();
    assert_eq!(names, ["pp24", "tg6", "pp24 @ d10", "tg6 @ d10"], "{stdout}");
    for t in &tests {
        assert!(t["avg_ts"].as_f64().is_some_and(|v| v > 0.0), "{t}");
        assert!(t["stddev_ts"].as_f64().is_some_and(|v| v >= 0.0), "{t}");
        assert_eq!(t["samples_ts"].as_array().map(Vec::len), Some(2), "{t}");
    }
    assert!(stdout.contains("pp24 @ d10"), "a table row per test: {stdout}");
    Ok(())
}
