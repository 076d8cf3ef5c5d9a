//! `ember generate`: one prompt, one answer.
//!
//! With `--json` the last stdout line is exactly one JSON object,
//! `{"prompt_ids": [...], "token_ids": [...], "text": ...|null}`; outside
//! checks rely on this contract, so keep it stable.

use std::io::Write;

use anyhow::{Context, Result, bail};
use ember_engine::tokenizer::IncrementalDecoder;
use ember_engine::{GenerationParams, LoadedModel, RenderOptions, generate};
use serde_json::json;

use crate::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (needs a tokenizer: tokenizer.json or a GGUF).
    #[arg(long, conflicts_with = "prompt_ids")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// Wrap --prompt as one user turn of the model's chat template.
    #[arg(long, requires = "prompt")]
    chat: bool,
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
}

/// The prompt as token ids, from ids, plain text, or text in a chat turn.
fn prompt_ids(args: &GenerateArgs, loaded: &LoadedModel) -> Result<Vec<u32>> {
    if let Some(ids) = &args.prompt_ids {
        return Ok(ids.clone());
    }
    let Some(text) = &args.prompt else {
        bail!("give --prompt or --prompt-ids");
    };
    let Some(tokenizer) = &loaded.tokenizer else {
        bail!(
            "{}: no tokenizer.json, so --prompt cannot be used; pass --prompt-ids",
            loaded.path.display()
        );
    };
    if !args.chat {
        return Ok(tokenizer.encode(text, true)?);
    }
    let Some(template) = &loaded.chat_template else {
        bail!("{}: the model has no chat template, so --chat cannot be used", loaded.path.display());
    };
    let rendered = template.render(RenderOptions {
        messages: &[json!({"role": "user", "content": text})],
        tools: None::<&[serde_json::Value]>,
        add_generation_prompt: true,
    })?;
    // The rendered template already holds its special tokens.
    Ok(tokenizer.encode(&rendered, false)?)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let load_start = std::time::Instant::now();
    let loaded = args.model.load()?;
    let load_time = load_start.elapsed();
    let prompt_ids = prompt_ids(&args, &loaded)?;
    let stop_token_ids = match (args.ignore_eos, args.chat) {
        (true, _) => Vec::new(),
        (false, true) => loaded.chat_stop_ids(),
        (false, false) => loaded.eos_token_ids.clone(),
    };
    let params = GenerationParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        stop_token_ids,
    };

    let mut stdout = std::io::stdout().lock();
    let mut decoder = loaded.tokenizer.as_ref().filter(|_| !args.json).map(IncrementalDecoder::new);
    let mut stream_error = None;
    let output = generate(&loaded.model, &prompt_ids, &params, |id| {
        if let Some(d) = decoder.as_mut() {
            match d.push(id) {
                Ok(piece) => {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                }
                Err(e) => stream_error = Some(e),
            }
        }
    })?;
    if let Some(e) = stream_error {
        return Err(e).context("decoding the answer");
    }
    if args.json {
        let text = match &loaded.tokenizer {
            Some(t) => Some(t.decode(&output.token_ids)?),
            None => None,
        };
        let line = json!({
            "prompt_ids": prompt_ids,
            "token_ids": output.token_ids,
            "text": text,
        });
        writeln!(stdout, "{line}")?;
    } else if let Some(d) = &decoder {
        writeln!(stdout, "{}", d.finish()?)?;
    } else {
        let ids: Vec<String> = output.token_ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    }
    stdout.flush()?;
    report_timings(load_time, prompt_ids.len(), &output);
    Ok(())
}

/// Timings go to stderr so stdout keeps the JSON contract.
fn report_timings(load: std::time::Duration, prompt_len: usize, output: &ember_engine::GenerationOutput) {
    let decoded = output.token_ids.len().saturating_sub(1);
    let prefill = output.prefill_time.as_secs_f64();
    let decode = output.decode_time.as_secs_f64();
    eprintln!(
        "load {:.2}s | prefill {prompt_len} tokens {prefill:.3}s ({:.1} tok/s) | decode {decoded} tokens {decode:.3}s ({:.2} tok/s) | finish {:?}",
        load.as_secs_f64(),
        prompt_len as f64 / prefill.max(1e-9),
        decoded as f64 / decode.max(1e-9),
        output.finish_reason,
    );
}
