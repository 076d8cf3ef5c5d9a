//! The engine flags shared by every subcommand that runs the scheduler.

use anyhow::Result;
use ember_engine::EngineConfig;

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
            kv_cache_memory: self.kv_cache_memory.parse()?,
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
