//! `ember generate`: one prompt, one answer, from a model directory.
//!
//! With `--json` the last stdout line is exactly one JSON object,
//! `{"prompt_ids": [...], "token_ids": [...], "text": ...|null}`; outside
//! checks rely on this contract, so keep it stable.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ember_engine::{GenerationParams, LoadedModel, generate};

use crate::device::{DeviceChoice, DtypeChoice};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Hugging Face model directory (config.json + safetensors [+ tokenizer.json]).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text (needs tokenizer.json in the model directory).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep going past end-of-sequence ids until --max-tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object as the last line instead of streaming text.
    #[arg(long)]
    json: bool,
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    device: DeviceChoice,
    /// Weight and activation dtype (f32 on CPU: flex's bf16 matmul is slow).
    #[arg(long, value_enum, default_value_t = DtypeChoice::F32)]
    dtype: DtypeChoice,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let device = args.device.device()?;
    let load_start = std::time::Instant::now();
    let loaded = LoadedModel::from_dir(&args.model, &device, args.dtype.dtype())
        .with_context(|| format!("loading model from {}", args.model.display()))?;

    let load_time = load_start.elapsed();

    let prompt_ids = match (&args.prompt_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => match &loaded.tokenizer {
            Some(t) => t.encode(text)?,
            None => bail!(
                "{}: no tokenizer.json, so --prompt cannot be used; pass --prompt-ids",
                args.model.display()
            ),
        },
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let params = GenerationParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        stop_token_ids: if args.ignore_eos { Vec::new() } else { loaded.eos_token_ids.clone() },
    };

    let stream_text = !args.json && loaded.tokenizer.is_some();
    let mut stdout = std::io::stdout().lock();
    let mut shown = String::new();
    let mut so_far = Vec::new();
    let output = generate(&loaded.model, &prompt_ids, &params, |id| {
        // Streams by re-decoding the whole answer and printing what is new,
        // which never splits a multi-byte character across two prints.
        if let (true, Some(t)) = (stream_text, &loaded.tokenizer) {
            so_far.push(id);
            if let Ok(text) = t.decode(&so_far)
                && let Some(new) = text.strip_prefix(shown.as_str())
                && !new.ends_with('\u{FFFD}')
            {
                let _ = write!(stdout, "{new}");
                let _ = stdout.flush();
                shown = text;
            }
        }
    })?;

    // Timings go to stderr so stdout keeps the JSON contract.
    let decoded = output.token_ids.len().saturating_sub(1);
    eprintln!(
        "load {:.2}s | prefill {} tokens {:.3}s ({:.1} tok/s) | decode {} tokens {:.3}s ({:.2} tok/s) | finish {:?}",
        load_time.as_secs_f64(),
        prompt_ids.len(),
        output.prefill_time.as_secs_f64(),
        prompt_ids.len() as f64 / output.prefill_time.as_secs_f64().max(1e-9),
        decoded,
        output.decode_time.as_secs_f64(),
        decoded as f64 / output.decode_time.as_secs_f64().max(1e-9),
        output.finish_reason,
    );

    let text = match &loaded.tokenizer {
        Some(t) => Some(t.decode(&output.token_ids)?),
        None => None,
    };
    if args.json {
        let line = serde_json::json!({
            "prompt_ids": prompt_ids,
            "token_ids": output.token_ids,
            "text": text,
        });
        writeln!(stdout, "{line}")?;
    } else if let Some(text) = text {
        if let Some(rest) = text.strip_prefix(shown.as_str()) {
            write!(stdout, "{rest}")?;
        }
        writeln!(stdout)?;
    } else {
        let ids: Vec<String> = output.token_ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    }
    Ok(())
}
