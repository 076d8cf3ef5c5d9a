//! Helpers shared by the test binaries of this crate.

use ember_model::gguf::GgufFile;

/// Logits of one prompt on the CPU fast path (quantized blocks multiplied
/// by the SIMD kernels, host KV pool) and on the generic path (the same file
/// dequantized at load, Burn matmuls), and their largest difference.
pub fn fast_vs_generic(gguf: &std::path::Path, prompt: &[u32]) -> anyhow::Result<f32> {
    use ember_model::{CausalLm, DType, Device, LoadOptions};

    let file = GgufFile::open(gguf)?;
    let fast = CausalLm::from_gguf(&file, &Device::flex(), DType::F32)?;
    assert!(fast.options().cpu_fast_path, "flex f32 takes the fast path");
    let generic_options = LoadOptions {
        cpu_fast_path: false,
        ..LoadOptions::default()
    };
    let generic = CausalLm::from_gguf_with(&file, &Device::flex(), DType::F32, generic_options)?;
    let want: Vec<f32> = generic.logits(prompt)?.into_data().try_to_vec()?;
    let got: Vec<f32> = fast.logits(prompt)?.into_data().try_to_vec()?;
    assert_eq!(got.len(), want.len());
    Ok(got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, |worst, d| if d.is_nan() { f32::INFINITY } else { worst.max(d) }))
}
