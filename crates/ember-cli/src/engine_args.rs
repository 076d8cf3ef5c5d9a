//! The engine flags shared by every subcommand that runs the scheduler. Unset
//! flags keep the engine's own defaults (`EngineConfig::default`); `ember
//! serve` lays them over its config file's `[engine]` table.

use anyhow::Result;
use ember_engine::{EngineConfig, GenerationDefaults};
use ember_gateway::config::EngineSection;

#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// KV cache size: bytes with an optional K/M/G/KiB/MiB/GiB suffix
    /// (`2GiB`), or a fraction of available memory (`0.2`, the default).
    /// Give bytes on GPU devices.
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// Tokens per KV block [default: 16].
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Tokens one step may compute; long prompts are prefilled in chunks of
    /// this [default: 512].
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Sequences one step may run [default: 128].
    #[arg(long)]
    pub max_num_seqs: Option<usize>,
    /// Requests that may wait before new ones are refused [default: 512].
    #[arg(long)]
    pub max_queue_len: Option<usize>,
    /// Cap on prompt + output tokens [default: the model's window].
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Server-wide sampling defaults laid over the model's
    /// generation_config.json, as JSON: '{"temperature": 0.2, "top_p": 0.9}'
    /// (keys: temperature, top_p, top_k, min_p, repetition_penalty). A
    /// request's own fields always win.
    #[arg(long, value_parser = parse_generation_override)]
    pub override_generation_config: Option<GenerationDefaults>,
    /// Which KV blocks a running sequence keeps: `all`, or `visible`
    /// (sparse attention only: blocks no later query can see go back to the
    /// pool, so memory stops growing with length) [default: all].
    #[arg(long, value_parser = ["all", "visible"])]
    pub kv_retention: Option<String>,
}

fn parse_generation_override(json: &str) -> Result<GenerationDefaults, String> {
    GenerationDefaults::parse_override(json).map_err(|e| e.to_string())
}

impl EngineArgs {
    /// Lays the given flags over `section`.
    pub fn overlay(&self, section: &mut EngineSection) {
        let s = section;
        s.kv_cache_memory = self.kv_cache_memory.clone().or(s.kv_cache_memory.take());
        s.block_size = self.block_size.or(s.block_size);
        s.max_num_batched_tokens = self.max_num_batched_tokens.or(s.max_num_batched_tokens);
        s.max_num_seqs = self.max_num_seqs.or(s.max_num_seqs);
        s.max_queue_len = self.max_queue_len.or(s.max_queue_len);
        s.max_model_len = self.max_model_len.or(s.max_model_len);
        s.kv_retention = self.kv_retention.clone().or(s.kv_retention.take());
        s.override_generation_config = match (s.override_generation_config, self.override_generation_config) {
            (Some(file), Some(flag)) => Some(file.overlay(flag)),
            (file, flag) => flag.or(file),
        };
    }

    pub fn config(&self) -> Result<EngineConfig> {
        let mut section = EngineSection::default();
        self.overlay(&mut section);
        Ok(section.engine_config(None)?)
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
