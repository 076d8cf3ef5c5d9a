//! The engine flags shared by every subcommand that runs the scheduler.

use anyhow::{Result, bail};
use ember_engine::{EngineConfig, KvCacheMemory};

#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// KV cache size: bytes with an optional K/M/G/KiB/MiB/GiB suffix
    /// (`2GiB`), or a fraction of available memory (`0.2`). Give bytes on GPU devices.
    #[arg(long, default_value = "0.2")]
    pub kv_cache_memory: String,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Tokens one step may compute; long prompts are prefilled in chunks of this.
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Sequences one step may run.
    #[arg(long, default_value_t = 128)]
    pub max_num_seqs: usize,
    /// Requests that may wait before new ones are refused.
    #[arg(long, default_value_t = 512)]
    pub max_queue_len: usize,
    /// Cap on prompt + output tokens (default: the model's window).
    #[arg(long)]
    pub max_model_len: Option<usize>,
}

impl EngineArgs {
    pub fn config(&self) -> Result<EngineConfig> {
        Ok(EngineConfig {
            block_size: self.block_size,
            kv_cache_memory: parse_memory(&self.kv_cache_memory)?,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            max_queue_len: self.max_queue_len,
            max_model_len: self.max_model_len,
            observer: None,
        })
    }

    /// For commands that run one sequence at a time: the pool then holds at
    /// most one full window instead of a fraction of memory.
    pub fn single_sequence_config(&self) -> Result<EngineConfig> {
        Ok(EngineConfig {
            max_num_seqs: 1,
            ..self.config()?
        })
    }
}

/// `0.2` is a fraction of available memory; `512MiB`, `2G`, `1000000` are bytes.
fn parse_memory(text: &str) -> Result<KvCacheMemory> {
    let t = text.trim();
    if let Ok(f) = t.parse::<f64>()
        && t.contains('.')
    {
        if !(f > 0.0 && f <= 1.0) {
            bail!("--kv-cache-memory fraction {f} is not in (0, 1]");
        }
        return Ok(KvCacheMemory::FractionOfAvailable(f));
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let Ok(number) = number.parse::<u64>() else {
        bail!("--kv-cache-memory {text:?} is neither a fraction like 0.2 nor a size like 2GiB");
    };
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => bail!("--kv-cache-memory: unknown unit {other:?}"),
    };
    Ok(KvCacheMemory::Bytes(number.saturating_mul(scale)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_fractions_parse() -> Result<()> {
        assert_eq!(parse_memory("0.25")?, KvCacheMemory::FractionOfAvailable(0.25));
        assert_eq!(parse_memory("2GiB")?, KvCacheMemory::Bytes(2 << 30));
        assert_eq!(parse_memory("512M")?, KvCacheMemory::Bytes(512_000_000));
        assert_eq!(parse_memory("4096")?, KvCacheMemory::Bytes(4096));
        for bad in ["1.5", "x", "3 parsecs", "0.0"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
        Ok(())
    }
}
