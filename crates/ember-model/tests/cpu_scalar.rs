//! A CPU without AVX2 takes the portable kernels: forced here (the choice is
//! process-wide, hence a test binary of its own), the fast path still
//! matches the generic path.

use std::path::PathBuf;

use ember_model::cpu::kernels::{Isa, active, force};

mod common;

#[test]
fn the_scalar_kernels_match_the_generic_path() -> anyhow::Result<()> {
    assert_eq!(force(Isa::Scalar), Isa::Scalar);
    assert_eq!(active(), Isa::Scalar);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    let prompt: Vec<u32> = (1..40).map(|i| (i * 37 % 500) as u32).collect();
    let worst = common::fast_vs_generic(&root.join("qwen3-tiny.q8_0.gguf"), &prompt)?;
    println!("scalar kernels: fast vs generic max |diff| {worst}");
    assert!(worst <= 1e-4, "max |diff| {worst}");
    Ok(())
}
