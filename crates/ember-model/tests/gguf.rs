//! GGUF: dequantization block by block against the `gguf` Python package
//! (tests/fixtures/gguf/dequant.json, made by scripts/make_gguf_reference.py),
//! and the container parser against broken files: clear errors, no panics.

use std::collections::HashMap;
use std::path::PathBuf;

use ember_model::gguf::dequant::dequantize;
use ember_model::gguf::reader::{GgufFormatError, parse};
use ember_model::gguf::{GgmlType, GgufFile};
use ember_model::{ModelError, weights::WeightSource};
use serde::Deserialize;

mod common;

#[derive(Deserialize)]
struct Case {
    bytes: String,
    values: Vec<f32>,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length {}", s.len());
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or_else(|e| panic!("bad hex at {}: {e}", 2 * i)))
        .collect()
}

#[test]
fn dequantization_matches_the_gguf_package_block_by_block() -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/dequant.json");
    let cases: HashMap<String, Case> = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let types = [
        ("F32", GgmlType::F32),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
    ];
    for (name, ggml_type) in types {
        let case = cases.get(name).ok_or_else(|| anyhow::anyhow!("no {name} case"))?;
        assert!(!case.values.is_empty(), "{name}: empty case");
        let mut got = Vec::new();
        dequantize(ggml_type, &hex(&case.bytes), &mut got);
        assert_eq!(got.len(), case.values.len(), "{name}");
        let (block_elems, _) = ggml_type.block();
        for (i, (g, e)) in got.iter().zip(&case.values).enumerate() {
            assert!(
                (g - e).abs() <= 1e-6 * e.abs().max(1e-3),
                "{name}: element {i} (block {}) got {g}, want {e}",
                i / block_elems
            );
        }
    }
    Ok(())
}

/// A minimal GGUF v3 writer for building (broken) files.
struct Writer(Vec<u8>);

impl Writer {
    fn new(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut w = Self(Vec::new());
        w.0.extend(b"GGUF");
        w.0.extend(version.to_le_bytes());
        w.0.extend(tensors.to_le_bytes());
        w.0.extend(kvs.to_le_bytes());
        w
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.0.extend((s.len() as u64).to_le_bytes());
        self.0.extend(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.string(key);
        self.0.extend(4u32.to_le_bytes());
        self.0.extend(v.to_le_bytes());
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.string(name);
        self.0.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.0.extend(d.to_le_bytes());
        }
        self.0.extend(ggml_type.to_le_bytes());
        self.0.extend(offset.to_le_bytes());
        self
    }
    fn align_and_data(&mut self, data: &[u8]) -> Vec<u8> {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(data);
        self.0.clone()
    }
}

fn valid() -> Vec<u8> {
    Writer::new(3, 1, 1)
        .kv_u32("general.alignment", 32)
        .tensor("token_embd.weight", &[4, 2], 0, 0)
        .align_and_data(&[0u8; 32])
}

#[test]
fn a_valid_file_parses() -> Result<(), GgufFormatError> {
    let header = parse(&valid())?;
    let t = &header.tensors["token_embd.weight"];
    assert_eq!((t.shape(), t.ggml_type, t.len), (vec![2, 4], GgmlType::F32, 32));
    Ok(())
}

#[test]
fn wrong_magic_is_named() {
    let mut bytes = valid();
    bytes[0] = b'X';
    assert!(matches!(parse(&bytes), Err(GgufFormatError::Magic(_))));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid();
    let data_start = bytes.len() - 32;
    for len in 0..bytes.len() {
        let result = parse(&bytes[..len]);
        // The header alone may parse up to the data; the data must then be missing.
        if len < data_start {
            assert!(result.is_err(), "prefix of {len} bytes parsed");
        } else {
            assert!(
                matches!(result, Err(GgufFormatError::TensorLayout { .. })),
                "prefix of {len} bytes: {result:?}"
            );
        }
    }
}

#[test]
fn unknown_tensor_type_is_named() {
    let bytes = Writer::new(3, 1, 0).tensor("blk.0.attn_q.weight", &[32], 99, 0).align_and_data(&[0; 64]);
    let err = parse(&bytes);
    assert!(
        matches!(&err, Err(GgufFormatError::TensorType { tensor, ggml_type: 99 }) if tensor == "blk.0.attn_q.weight"),
        "{err:?}"
    );
}

#[test]
fn shapes_that_lie_about_the_data_are_errors() {
    // Claims 1M floats with 32 bytes of data.
    let bytes = Writer::new(3, 1, 0).tensor("t", &[1024, 1024], 0, 0).align_and_data(&[0; 32]);
    assert!(matches!(parse(&bytes), Err(GgufFormatError::TensorLayout { .. })));
    // Dimension product overflows.
    let bytes = Writer::new(3, 1, 0).tensor("t", &[u64::MAX, 4], 0, 0).align_and_data(&[0; 32]);
    assert!(matches!(parse(&bytes), Err(GgufFormatError::TensorLayout { .. })));
    // A quantized row that is not a whole number of blocks.
    let bytes = Writer::new(3, 1, 0).tensor("t", &[33], 8, 0).align_and_data(&[0; 64]);
    assert!(matches!(parse(&bytes), Err(GgufFormatError::TensorLayout { .. })));
}

#[test]
fn huge_counts_do_not_allocate() {
    let bytes = Writer::new(3, u64::MAX, u64::MAX).align_and_data(&[]);
    assert!(matches!(parse(&bytes), Err(GgufFormatError::Truncated { .. })));
    let mut w = Writer::new(3, 0, 1);
    w.string("k");
    w.0.extend(9u32.to_le_bytes()); // array
    w.0.extend(0u32.to_le_bytes()); // of u8
    w.0.extend(u64::MAX.to_le_bytes());
    assert!(parse(&w.0).is_err());
}

#[test]
fn file_errors_name_the_file_and_tensor() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, &valid()[..20])?;
    let err = GgufFile::open(&path).err().map(|e| format!("{e}: {:?}", std::error::Error::source(&e)));
    let err = err.unwrap_or_default();
    assert!(err.contains("broken.gguf") && err.contains("Truncated"), "{err}");

    std::fs::write(&path, valid())?;
    let file = GgufFile::open(&path)?;
    let err = file.read("model.embed_tokens.weight", &[3, 4]).err();
    assert!(
        matches!(&err, Some(ModelError::ShapeMismatch { tensor, .. }) if tensor == "token_embd.weight"),
        "{err:?}"
    );
    let err = file.read("model.norm.weight", &[4]).err();
    assert!(matches!(&err, Some(ModelError::MissingTensor { tensor, .. }) if tensor == "output_norm.weight"), "{err:?}");
    // No general.architecture: the config cannot be built, and says why.
    let err = file.model_config().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("general.architecture"), "{err}");
    Ok(())
}

/// Loads a tiny fixture both ways, as safetensors and as the GGUF that
/// scripts/make_gguf_reference.py wrote from it with llama.cpp's layout, and
/// compares configs and logits. For the llama fixture this pins the q/k
/// un-permutation; the GGUF carries no Llama 3 RoPE scaling (llama.cpp would
/// store it as a `rope_freqs` tensor, which Ember refuses), so that
/// comparison uses default RoPE on both sides.
fn gguf_matches_safetensors(fixture: &str, gguf: &str, tolerance: f32) -> anyhow::Result<f32> {
    use ember_model::safetensors_source::SafetensorsSource;
    use ember_model::{CausalLm, DType, Device, ModelConfig, rope::RopeScaling};

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let device = Device::flex();
    let mut config = ModelConfig::from_file(&root.join(fixture).join("config.json"))?;
    config.rope.scaling = RopeScaling::Default;
    let file = GgufFile::open(&root.join("gguf").join(gguf))?;
    let from_gguf = file.model_config()?;
    assert!((from_gguf.rms_norm_eps - config.rms_norm_eps).abs() < 1e-12, "{gguf}: eps");
    assert_eq!(
        ModelConfig { rms_norm_eps: config.rms_norm_eps, ..from_gguf },
        config,
        "{gguf}: config from metadata"
    );

    let reference = CausalLm::load(config, &SafetensorsSource::open_dir(&root.join(fixture))?, &device, DType::F32)?;
    let model = CausalLm::from_gguf(&file, &device, DType::F32)?;
    let prompt: Vec<u32> = (1..40).map(|i| (i * 37 % 500) as u32).collect();
    let want: Vec<f32> = reference.logits(&prompt)?.into_data().try_to_vec()?;
    let got: Vec<f32> = model.logits(&prompt)?.into_data().try_to_vec()?;
    assert_eq!(got.len(), want.len(), "{gguf}: logits shape");
    assert_eq!(want.len(), prompt.len() * config_vocab(&root, fixture)?, "{gguf}: a row per position");
    // NaN counts as infinitely wrong (`f32::max` would skip it).
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, |worst, d| if d.is_nan() { f32::INFINITY } else { worst.max(d) });
    assert!(worst <= tolerance, "{gguf}: max |diff| {worst} > {tolerance}");
    Ok(worst)
}

fn config_vocab(root: &std::path::Path, fixture: &str) -> anyhow::Result<usize> {
    Ok(ember_model::ModelConfig::from_file(&root.join(fixture).join("config.json"))?.vocab_size)
}

#[test]
fn qwen3_gguf_matches_safetensors() -> anyhow::Result<()> {
    gguf_matches_safetensors("qwen3-tiny", "qwen3-tiny.f32.gguf", 1e-5)?;
    // Q8_0 rounds every weight (dequantization itself is checked exactly
    // above); on random weights that moves logits of magnitude ~3 by ~0.08.
    let q8 = gguf_matches_safetensors("qwen3-tiny", "qwen3-tiny.q8_0.gguf", 0.15)?;
    println!("Q8_0 max |diff| {q8}");
    Ok(())
}

#[test]
fn llama_gguf_is_unpermuted() -> anyhow::Result<()> {
    gguf_matches_safetensors("llama-tiny", "llama-tiny.f32.gguf", 1e-5).map(|_| ())
}

#[test]
fn qwen2_gguf_keeps_its_biases() -> anyhow::Result<()> {
    gguf_matches_safetensors("qwen2-tiny", "qwen2-tiny.f32.gguf", 1e-5).map(|_| ())
}

/// The paths differ in summation order and, on the SIMD kernels, in
/// activations rounded to i16 per 32 values (at most 1/65534 of each
/// chunk's largest magnitude): measured 3.3e-4 on logits of magnitude ~3
/// (1e-5 with f32 activations).
#[test]
fn quantized_fast_path_matches_the_generic_path() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    let prompt: Vec<u32> = (1..40).map(|i| (i * 37 % 500) as u32).collect();
    let worst = common::fast_vs_generic(&root.join("qwen3-tiny.q8_0.gguf"), &prompt)?;
    println!("qwen3-tiny Q8_0: fast vs generic max |diff| {worst}");
    assert!(worst <= 1e-3, "max |diff| {worst}");
    Ok(())
}

/// In-situ quantization of a float checkpoint to Q8_0 gives the model that
/// llama.cpp's quantizer (via the `gguf` package) wrote to a Q8_0 GGUF.
#[test]
fn in_situ_q8_0_matches_the_q8_0_gguf() -> anyhow::Result<()> {
    use ember_model::cpu::QuantType;
    use ember_model::{CausalLm, DType, Device, LoadOptions, ModelConfig, rope::RopeScaling};

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut config = ModelConfig::from_file(&root.join("qwen3-tiny/config.json"))?;
    config.rope.scaling = RopeScaling::Default;
    let source = ember_model::safetensors_source::SafetensorsSource::open_dir(&root.join("qwen3-tiny"))?;
    let options = LoadOptions {
        quantize: Some(QuantType::Q8_0),
        ..LoadOptions::default()
    };
    let isq = CausalLm::load_with(config, &source, &Device::flex(), DType::F32, options.clone())?;
    let gguf = CausalLm::from_gguf(&GgufFile::open(&root.join("gguf/qwen3-tiny.q8_0.gguf"))?, &Device::flex(), DType::F32)?;
    let prompt: Vec<u32> = (1..40).map(|i| (i * 37 % 500) as u32).collect();
    let a: Vec<f32> = isq.logits(&prompt)?.into_data().try_to_vec()?;
    let b: Vec<f32> = gguf.logits(&prompt)?.into_data().try_to_vec()?;
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-3, "max |diff| {worst}");

    let unsupported = LoadOptions {
        quantize: Some(QuantType::Q6K),
        ..LoadOptions::default()
    };
    let config = ModelConfig::from_file(&root.join("qwen3-tiny/config.json"))?;
    assert!(CausalLm::load_with(config.clone(), &source, &Device::flex(), DType::F32, unsupported).is_err());

    // Off the fast path, quantization is refused rather than ignored.
    let generic = LoadOptions {
        cpu_fast_path: false,
        ..options
    };
    let refused = CausalLm::load_with(config, &source, &Device::flex(), DType::F32, generic);
    assert!(matches!(refused, Err(ember_model::ModelError::NeedsCpuFastPath { .. })), "quantize without the fast path");
    Ok(())
}

/// Qwen2's q/k/v biases on the fast path's host layer loop: the tiny Qwen2
/// checkpoint quantized to Q8_0 at load stays within Q8_0's rounding of
/// the float model (measured 0.053; with the biases dropped, 1.6).
#[test]
fn in_situ_q8_0_keeps_qwen2_biases() -> anyhow::Result<()> {
    use ember_model::cpu::QuantType;
    use ember_model::{CausalLm, DType, Device, LoadOptions};

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2-tiny");
    let isq_options = LoadOptions {
        quantize: Some(QuantType::Q8_0),
        ..LoadOptions::default()
    };
    let isq = CausalLm::from_dir_with(&dir, &Device::flex(), DType::F32, isq_options)?;
    let float = CausalLm::from_dir(&dir, &Device::flex(), DType::F32)?;
    let prompt: Vec<u32> = (1..40).map(|i| (i * 37 % 500) as u32).collect();
    let a: Vec<f32> = isq.logits(&prompt)?.into_data().try_to_vec()?;
    let b: Vec<f32> = float.logits(&prompt)?.into_data().try_to_vec()?;
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    println!("qwen2-tiny Q8_0 at load vs f32: max |diff| {worst}");
    assert!(worst <= 0.15, "max |diff| {worst}");
    Ok(())
}
