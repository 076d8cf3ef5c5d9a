//! `--threads`, `--kv-cache-dtype` and `--quantize`: settings of the CPU fast
//! path (flex device, f32), shared by every subcommand that loads a model.

use anyhow::{Result, bail};
use ember_model::cpu::QuantType;
use ember_model::{KvDtype, LoadOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCacheDtypeChoice {
    /// Exact.
    F32,
    /// Half the memory per cached token; keys and values rounded to f16.
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizeChoice {
    /// 8-bit, one f16 scale per 32 weights (8.5 bits per weight).
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit, one f16 scale per 32 weights (4.5 bits per weight).
    #[value(name = "q4_0")]
    Q4_0,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct CpuArgs {
    /// Threads for the CPU kernels [default: the physical cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache element type on the CPU (flex, f32) [default: f32].
    #[arg(long, value_enum)]
    pub kv_cache_dtype: Option<KvCacheDtypeChoice>,
    /// Quantize float weight matrices at load, for the CPU kernels (a Hugging
    /// Face checkpoint or float GGUF; already quantized tensors stay as they are).
    #[arg(long, value_enum)]
    pub quantize: Option<QuantizeChoice>,
}

impl CpuArgs {
    /// Sizes the kernel thread pool (before anything runs on it) and
    /// returns the model's load options.
    pub fn apply(&self) -> Result<LoadOptions> {
        if let Some(threads) = self.threads {
            if threads == 0 {
                bail!("--threads must be at least 1");
            }
            if !ember_model::cpu::pool::set_threads(threads) {
                bail!("--threads {threads}: the CPU kernels' thread pool has already started");
            }
        }
        let kv_cache_dtype = match self.kv_cache_dtype.unwrap_or(KvCacheDtypeChoice::F32) {
            KvCacheDtypeChoice::F32 => KvDtype::F32,
            KvCacheDtypeChoice::F16 => KvDtype::F16,
        };
        let quantize = self.quantize.map(|q| match q {
            QuantizeChoice::Q8_0 => QuantType::Q8_0,
            QuantizeChoice::Q4_0 => QuantType::Q4_0,
        });
        Ok(LoadOptions {
            kv_cache_dtype,
            quantize,
            ..LoadOptions::default()
        })
    }
}
