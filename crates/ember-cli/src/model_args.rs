//! The model-selection flags shared by every subcommand that loads a model,
//! and where the default model lives.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ember_engine::LoadedModel;
use ember_engine::default_model::default_model_path;
use ember_model::rope::RopeScalingOverride;

use crate::attention_args::AttentionArgs;
use crate::cpu_args::CpuArgs;
use crate::device::{DeviceChoice, DtypeChoice};

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Hugging Face model directory or `.gguf` file [default: SmolLM2-135M-Instruct
    /// in $EMBER_CACHE_DIR, fetched by scripts/fetch-default-model.sh].
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
    /// Weight and activation dtype (f32 on CPU: flex's bf16 matmul is slow).
    #[arg(long, value_enum, default_value_t = DtypeChoice::F32)]
    pub dtype: DtypeChoice,
    #[command(flatten)]
    pub cpu: CpuArgs,
    #[command(flatten)]
    pub attention: AttentionArgs,
    /// Replaces the model's RoPE scaling, in vLLM's spelling, e.g.
    /// '{"rope_type":"yarn","factor":4,"original_max_position_embeddings":32768}'
    /// (also linear, dynamic, llama3); the window becomes factor x original.
    #[arg(long, value_name = "JSON")]
    pub rope_scaling: Option<RopeScalingOverride>,
}

impl ModelArgs {
    pub fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(path) => Ok(path.clone()),
            None => default_model(),
        }
    }

    pub fn load(&self) -> Result<LoadedModel> {
        let path = self.path()?;
        let device = self.device.device()?;
        let mut options = self.cpu.apply()?;
        options.sparse = self.attention.layout()?;
        options.rope_scaling = self.rope_scaling.clone();
        let mut loaded = LoadedModel::open_with(&path, &device, self.dtype.dtype(), options)
            .with_context(|| format!("loading model from {}", path.display()))?;
        loaded.info.markers = self.attention.markers()?;
        Ok(loaded)
    }
}

/// The default model's path, or an error saying how to fetch it.
pub fn default_model() -> Result<PathBuf> {
    let default = default_model_path();
    if !default.is_file() {
        bail!(
            "no --model given and the default model is not at {}; fetch it with scripts/fetch-default-model.sh",
            default.display()
        );
    }
    Ok(default)
}
