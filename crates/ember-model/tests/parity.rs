//! Golden parity against Hugging Face transformers (float32, eager attention).
//! References come from `scripts/make_fixtures.py`; regenerate only with it.
//!
//! Each fixture is checked three ways: logits of a full recompute, the same
//! logits through incremental decoding (prefill, then one token at a time, and
//! chunked prefill), and 20 greedy tokens. On flex every check runs twice:
//! on the CPU fast path (host KV pool, paged attention, host norms) and on
//! the generic Burn code that wgpu and CUDA run.

use std::path::PathBuf;

use ember_model::sparse::SparseLayout;
use ember_model::{CausalLm, DType, Device, KvCache, LoadOptions, LogitsMode, SequenceInput, Tensor};
use serde::Deserialize;

/// Absolute logit tolerance in f32 (the reference's own f32-vs-f64 error is ~1e-6).
const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Reference {
    short: ShortReference,
    long: Vec<LongReference>,
    greedy: GreedyReference,
}

#[derive(Deserialize)]
struct ShortReference {
    prompt: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct LongReference {
    prompt: Vec<u32>,
    last_logits: Vec<f32>,
}

#[derive(Deserialize)]
struct GreedyReference {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
}

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Which code runs the model on flex.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Fast,
    Generic,
}

fn load(name: &str) -> anyhow::Result<(CausalLm, Reference)> {
    load_on(name, Path::Fast)
}

fn load_on(name: &str, path: Path) -> anyhow::Result<(CausalLm, Reference)> {
    load_sparse(name, path, None)
}

fn load_sparse(name: &str, path: Path, sparse: Option<SparseLayout>) -> anyhow::Result<(CausalLm, Reference)> {
    let dir = fixture_dir(name);
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let options = LoadOptions {
        cpu_fast_path: path == Path::Fast,
        sparse,
        ..LoadOptions::default()
    };
    let model = CausalLm::from_dir_with(&dir, &test_device(), DType::F32, options)?;
    Ok((model, reference))
}

/// flex by default; `EMBER_TEST_DEVICE=wgpu` runs the same checks on wgpu.
fn test_device() -> Device {
    match std::env::var("EMBER_TEST_DEVICE").as_deref() {
        #[cfg(feature = "test-wgpu")]
        Ok("wgpu") => Device::wgpu(Default::default()),
        Ok(other) if other != "flex" => panic!("EMBER_TEST_DEVICE={other} is not built into this test"),
        _ => Device::flex(),
    }
}

fn rows(t: Tensor<2>) -> anyhow::Result<Vec<Vec<f32>>> {
    let [n, v] = t.dims();
    let flat: Vec<f32> = t.into_data().try_to_vec()?;
    Ok((0..n).map(|i| flat[i * v..(i + 1) * v].to_vec()).collect())
}

fn assert_close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let (worst, at) = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold((0.0f32, 0), |(w, at), (i, d)| if d > w || d.is_nan() { (d, i) } else { (w, at) });
    assert!(
        worst <= TOLERANCE,
        "{what}: max |diff| {worst} at index {at} (got {}, want {})",
        actual[at],
        expected[at]
    );
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn step(model: &CausalLm, cache: &mut KvCache, tokens: &[u32], mode: LogitsMode) -> anyhow::Result<Vec<Vec<f32>>> {
    rows(model.forward_cached(cache, tokens, mode)?)
}

fn full_recompute_matches(name: &str, path: Path) -> anyhow::Result<()> {
    let (model, r) = load_on(name, path)?;
    let got = rows(model.logits(&r.short.prompt)?)?;
    assert_eq!(got.len(), r.short.prompt.len(), "{name}: a row per position");
    assert_eq!(r.short.logits.len(), r.short.prompt.len(), "{name}: reference rows");
    for (i, (g, e)) in got.iter().zip(&r.short.logits).enumerate() {
        assert_close(&format!("{name} short position {i}"), g, e);
    }
    assert!(!r.long.is_empty(), "{name}: no long references");
    for long in &r.long {
        let got = rows(model.logits(&long.prompt)?)?;
        let last = got.last().ok_or_else(|| anyhow::anyhow!("no rows"))?;
        assert_close(&format!("{name} long prompt of {}", long.prompt.len()), last, &long.last_logits);
    }
    Ok(())
}

fn incremental_matches(name: &str, path: Path) -> anyhow::Result<()> {
    let (model, r) = load_on(name, path)?;
    // Prefill one token, then decode the rest one at a time.
    let mut cache = model.new_cache();
    for (i, &t) in r.short.prompt.iter().enumerate() {
        let got = step(&model, &mut cache, &[t], LogitsMode::Last)?;
        assert_close(&format!("{name} decode position {i}"), &got[0], &r.short.logits[i]);
    }
    // Chunked prefill of a long prompt: chunks of 7 over a growing cache.
    for long in &r.long {
        let mut cache = model.new_cache();
        let mut last = Vec::new();
        for chunk in long.prompt.chunks(7) {
            last = step(&model, &mut cache, chunk, LogitsMode::All)?;
        }
        assert_eq!(cache.len(), long.prompt.len());
        let got = last.last().ok_or_else(|| anyhow::anyhow!("no rows"))?;
        assert_close(&format!("{name} chunked prefill of {}", long.prompt.len()), got, &long.last_logits);
    }
    Ok(())
}

fn greedy_matches(name: &str, path: Path) -> anyhow::Result<()> {
    let (model, r) = load_on(name, path)?;
    // Incremental: prefill the prompt, then feed back each token.
    let mut cache = model.new_cache();
    let mut next = argmax(&step(&model, &mut cache, &r.greedy.prompt, LogitsMode::Last)?[0]);
    let mut incremental = vec![next];
    while incremental.len() < r.greedy.tokens.len() {
        next = argmax(&step(&model, &mut cache, &[next], LogitsMode::Last)?[0]);
        incremental.push(next);
    }
    assert_eq!(incremental, r.greedy.tokens, "{name}: incremental greedy tokens");

    // Full recompute at every step.
    let mut ids = r.greedy.prompt.clone();
    for _ in 0..r.greedy.tokens.len() {
        let logits = rows(model.logits(&ids)?)?;
        ids.push(argmax(logits.last().ok_or_else(|| anyhow::anyhow!("no rows"))?));
    }
    assert_eq!(&ids[r.greedy.prompt.len()..], r.greedy.tokens, "{name}: recomputed greedy tokens");
    Ok(())
}

/// A sparse layout whose window covers the whole sequence is dense
/// attention: the long prompts' logits, recomputed and in chunks of 7,
/// match the reference.
fn whole_window_matches(name: &str, path: Path) -> anyhow::Result<()> {
    let everything = SparseLayout { block: 16, local: 1 << 20, sinks: 0, stride: 0, dense_below: 0 };
    let (model, r) = load_sparse(name, path, Some(everything))?;
    for long in &r.long {
        let got = rows(model.logits(&long.prompt)?)?;
        let last = got.last().ok_or_else(|| anyhow::anyhow!("no rows"))?;
        assert_close(&format!("{name} sparse, whole window, prompt of {}", long.prompt.len()), last, &long.last_logits);
        let mut cache = model.new_cache();
        let mut chunked = Vec::new();
        for chunk in long.prompt.chunks(7) {
            chunked = step(&model, &mut cache, chunk, LogitsMode::All)?;
        }
        let last = chunked.last().ok_or_else(|| anyhow::anyhow!("no rows"))?;
        assert_close(&format!("{name} sparse, whole window, chunked {}", long.prompt.len()), last, &long.last_logits);
    }
    Ok(())
}

macro_rules! parity_tests {
    ($($module:ident => $fixture:literal),* $(,)?) => {$(
        mod $module {
            use super::Path::{Fast, Generic};
            #[test]
            fn full_recompute_logits_match_reference() -> anyhow::Result<()> {
                super::full_recompute_matches($fixture, Fast)?;
                super::full_recompute_matches($fixture, Generic)
            }
            #[test]
            fn incremental_logits_match_reference() -> anyhow::Result<()> {
                super::incremental_matches($fixture, Fast)?;
                super::incremental_matches($fixture, Generic)
            }
            #[test]
            fn greedy_tokens_match_reference() -> anyhow::Result<()> {
                super::greedy_matches($fixture, Fast)?;
                super::greedy_matches($fixture, Generic)
            }
            #[test]
            fn sparse_with_a_whole_window_matches_reference() -> anyhow::Result<()> {
                super::whole_window_matches($fixture, Fast)?;
                super::whole_window_matches($fixture, Generic)
            }
        }
    )*};
}

parity_tests! {
    qwen3_tied => "qwen3-tiny",
    qwen3_yarn => "qwen3-yarn-tiny",
    llama => "llama-tiny",
    qwen2_biases => "qwen2-tiny",
}

/// A sparse layout with real windows (sinks and a span ending mid-block,
/// strided blocks, a window of one block) on a 100-token prompt: the CPU
/// fast path's paged kernel, whole, in chunks and decoding, gives the
/// logits of the generic path, which computes dense attention under the
/// layout's explicit mask; and they differ from dense attention's.
#[test]
fn sparse_layouts_agree_with_dense_attention_under_their_mask() -> anyhow::Result<()> {
    let layout = SparseLayout { block: 16, local: 1, sinks: 5, stride: 3, dense_below: 20 };
    let spans = [30..37];
    let block_size = 16;
    let run = |path: Path, sparse: Option<SparseLayout>, chunk: usize| -> anyhow::Result<Vec<Vec<f32>>> {
        let (model, r) = load_sparse("qwen3-tiny", path, sparse)?;
        let prompt = &r.long[1].prompt;
        let table: Vec<u32> = (0..prompt.len().div_ceil(block_size) as u32).rev().collect();
        let mut pool = model.new_pool(table.len(), block_size);
        let mut all = Vec::new();
        for start in (0..prompt.len()).step_by(chunk) {
            let tokens = &prompt[start..(start + chunk).min(prompt.len())];
            let input = SequenceInput { tokens, past_len: start, block_table: &table, global_spans: &spans };
            let out = model.forward(&mut pool, &[input], LogitsMode::All)?;
            all.extend(rows(out.into_iter().next().ok_or_else(|| anyhow::anyhow!("no logits"))?)?);
        }
        Ok(all)
    };
    let reference = run(Path::Generic, Some(layout), 100)?;
    assert_eq!(reference.len(), 100);
    for (what, chunk) in [("whole", 100), ("chunks of 7", 7), ("decoding", 1)] {
        let fast = run(Path::Fast, Some(layout), chunk)?;
        for (i, (f, g)) in fast.iter().zip(&reference).enumerate() {
            let worst = f.iter().zip(g).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 2.0 * TOLERANCE, "sparse, fast path {what}, position {i}: max |diff| {worst}");
        }
    }
    let dense = run(Path::Generic, None, 100)?;
    let differs = dense[99].iter().zip(&reference[99]).any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(differs, "the sparse layout must change the last position's logits");
    Ok(())
}

/// Two sequences in one shared paged pool, their blocks interleaved and out
/// of order: a batched prefill and then a batched decode step give each
/// sequence its own reference logits.
#[test]
fn batched_sequences_in_a_shared_pool_match_their_solo_logits() -> anyhow::Result<()> {
    batched_in_shared_pool(Path::Fast)?;
    batched_in_shared_pool(Path::Generic)
}

fn batched_in_shared_pool(path: Path) -> anyhow::Result<()> {
    let (model, r) = load_on("qwen3-tiny", path)?;
    let a = &r.long[0].prompt;
    let b = &r.short.prompt;
    let block_size = 4;
    let blocks_a = a.len().div_ceil(block_size);
    let blocks_b = b.len().div_ceil(block_size);
    let mut pool = model.new_pool(blocks_a + blocks_b + 3, block_size);
    // a takes blocks from the top down, b the rest in order from the bottom.
    let top = pool.num_blocks() as u32 - 1;
    let table_a: Vec<u32> = (0..blocks_a as u32).map(|i| top - i).collect();
    let table_b: Vec<u32> = (0..blocks_b as u32).collect();
    assert!(table_a.iter().all(|x| !table_b.contains(x)));

    let (last_a, last_b) = (a.len() - 1, b.len() - 1);
    let prefill = [
        SequenceInput { tokens: &a[..last_a], past_len: 0, block_table: &table_a, global_spans: &[] },
        SequenceInput { tokens: &b[..last_b], past_len: 0, block_table: &table_b, global_spans: &[] },
    ];
    let out = model.forward(&mut pool, &prefill, LogitsMode::All)?;
    let got_b = rows(out.into_iter().nth(1).ok_or_else(|| anyhow::anyhow!("missing b"))?)?;
    assert_eq!(got_b.len(), last_b, "batched prefill of b: a row per token");
    for (i, row) in got_b.iter().enumerate() {
        assert_close(&format!("batched prefill of b, position {i}"), row, &r.short.logits[i]);
    }
    let decode = [
        SequenceInput { tokens: &a[last_a..], past_len: last_a, block_table: &table_a, global_spans: &[] },
        SequenceInput { tokens: &b[last_b..], past_len: last_b, block_table: &table_b, global_spans: &[] },
    ];
    let mut out = model.forward(&mut pool, &decode, LogitsMode::Last)?.into_iter();
    let got_a = rows(out.next().ok_or_else(|| anyhow::anyhow!("missing a"))?)?;
    let got_b = rows(out.next().ok_or_else(|| anyhow::anyhow!("missing b"))?)?;
    assert_close("batched decode of a", &got_a[0], &r.long[0].last_logits);
    assert_close("batched decode of b", &got_b[0], &r.short.logits[last_b]);
    Ok(())
}

#[test]
fn a_short_block_table_is_an_error_not_a_panic() -> anyhow::Result<()> {
    for path in [Path::Fast, Path::Generic] {
        short_table_is_an_error(path)?;
    }
    Ok(())
}

fn short_table_is_an_error(path: Path) -> anyhow::Result<()> {
    let (model, r) = load_on("qwen3-tiny", path)?;
    let mut pool = model.new_pool(2, 4);
    let too_long = SequenceInput { tokens: &r.long[0].prompt, past_len: 0, block_table: &[0, 1], global_spans: &[] };
    assert!(model.forward(&mut pool, &[too_long], LogitsMode::Last).is_err());
    let bad_block = SequenceInput { tokens: &r.short.prompt[..2], past_len: 0, block_table: &[7], global_spans: &[] };
    assert!(model.forward(&mut pool, &[bad_block], LogitsMode::Last).is_err());
    Ok(())
}

/// f16 and bf16 weights and activations stay near the f32 reference: the
/// dtype conversion at load and the f32 RMSNorm statistics work end to end.
#[test]
fn reduced_precision_stays_near_reference() -> anyhow::Result<()> {
    let dir = fixture_dir("qwen3-tiny");
    let reference: Reference = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    // Tolerances from the formats' precision (f16: 11-bit, bf16: 8-bit mantissa)
    // over two layers, against logits of magnitude ~2.
    for (dtype, tolerance) in [(DType::F16, 0.01f32), (DType::BF16, 0.06)] {
        let device = test_device();
        if !device.supports_dtype(dtype) {
            println!("{dtype:?}: not supported by {device:?}, skipped");
            continue;
        }
        let model = CausalLm::from_dir(&dir, &device, dtype)?;
        let got = rows(model.logits(&reference.short.prompt)?)?;
        assert_eq!(got.len(), reference.short.logits.len(), "{dtype:?}: a row per position");
        assert!(
            got.iter().zip(&reference.short.logits).all(|(g, e)| g.len() == e.len()),
            "{dtype:?}: row widths"
        );
        let worst = got
            .iter()
            .flatten()
            .zip(reference.short.logits.iter().flatten())
            .map(|(a, e)| (a - e).abs())
            .fold(0.0f32, |w, d| if d.is_nan() { f32::INFINITY } else { w.max(d) });
        println!("{dtype:?}: max |diff| {worst}");
        assert!(worst < tolerance, "{dtype:?}: max |diff| {worst} >= {tolerance}");
    }
    Ok(())
}

/// A checkpoint split into shards with `model.safetensors.index.json` (as
/// large Hugging Face checkpoints are) loads to the same logits.
#[test]
fn sharded_checkpoint_matches_single_file() -> anyhow::Result<()> {
    use safetensors::SafeTensors;

    let src = fixture_dir("qwen3-yarn-tiny");
    let dir = tempfile::tempdir()?;
    std::fs::copy(src.join("config.json"), dir.path().join("config.json"))?;
    let bytes = std::fs::read(src.join("model.safetensors"))?;
    let tensors = SafeTensors::deserialize(&bytes)?;
    let mut names: Vec<String> = tensors.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in names.chunks(names.len().div_ceil(3)).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", shard + 1);
        let views = chunk
            .iter()
            .map(|n| Ok((n.clone(), tensors.tensor(n)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, &dir.path().join(&file))?;
        for n in chunk {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string())?;

    let (single, reference) = load("qwen3-yarn-tiny")?;
    let sharded = CausalLm::from_dir(dir.path(), &test_device(), DType::F32)?;
    let want = rows(single.logits(&reference.short.prompt)?)?;
    let got = rows(sharded.logits(&reference.short.prompt)?)?;
    assert_eq!(want.len(), reference.short.prompt.len());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_close("sharded", g, w);
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

/// `--rope-scaling` overrides (YaRN, linear, dynamic NTK) on qwen3-tiny,
/// whose checkpoint stops at 256 positions, against transformers under the
/// same override (scripts/make_rope_override_reference.py) on a 400-token
/// prompt. YaRN and linear also match through chunked prefill; dynamic NTK
/// takes each pass's own length, as Hugging Face does, so only its one-pass
/// logits compare.
#[test]
fn rope_scaling_overrides_match_transformers_past_the_window() -> anyhow::Result<()> {
    let dir = fixture_dir("qwen3-tiny");
    let reference: RopeOverrides = serde_json::from_str(&std::fs::read_to_string(dir.join("rope_overrides.json"))?)?;
    assert!(reference.prompt.len() > 256);
    for path in [Path::Fast, Path::Generic] {
        for case in &reference.cases {
            let kind = case.rope_scaling["rope_type"].as_str().unwrap_or_default().to_owned();
            let options = LoadOptions {
                cpu_fast_path: path == Path::Fast,
                rope_scaling: Some(serde_json::from_value(case.rope_scaling.clone())?),
                ..LoadOptions::default()
            };
            let model = CausalLm::from_dir_with(&dir, &test_device(), DType::F32, options)?;
            let window = match kind.as_str() {
                "linear" => 512,
                _ => 1024,
            };
            assert_eq!(model.config().context_window(), window, "{kind}");
            let got = rows(model.logits(&reference.prompt)?)?;
            let last = got.last().ok_or_else(|| anyhow::anyhow!("no rows"))?;
            assert_close(&format!("{kind} override, one pass, {path:?}"), last, &case.last_logits);
            if kind != "dynamic" {
                let mut cache = model.new_cache();
                let mut chunk_rows = Vec::new();
                for chunk in reference.prompt.chunks(64) {
                    chunk_rows = step(&model, &mut cache, chunk, LogitsMode::Last)?;
                }
                assert_close(&format!("{kind} override, chunked, {path:?}"), &chunk_rows[0], &case.last_logits);
            }
        }
    }
    Ok(())
}
