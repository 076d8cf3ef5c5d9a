//! `ember generate`: one prompt, one answer.
//!
//! With `--json` the last stdout line is exactly one JSON object,
//! `{"prompt_ids": [...], "token_ids": [...], "text": ...|null}`; outside
//! checks rely on this contract, so keep it stable.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ember_engine::{EncodedPrompt, EngineHandle, FinishReason, GenerationEvent, GenerationRequest, ModelInfo, SamplingParams};
use ember_gateway::backend::local::prompt::chat_prompt;
use ember_gateway::openai::ChatMessage;
use serde_json::json;

use crate::engine_args::EngineArgs;
use crate::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
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

/// The prompt as token ids, from ids, plain text, or text in a chat turn;
/// text keeps its `[IMPORTANT]` spans under sparse attention.
fn prompt(args: &GenerateArgs, model: &ModelInfo) -> Result<EncodedPrompt> {
    if let Some(ids) = &args.prompt_ids {
        return Ok(EncodedPrompt {
            ids: ids.clone(),
            global_spans: Vec::new(),
        });
    }
    let Some(text) = &args.prompt else {
        bail!("give --prompt or --prompt-ids");
    };
    if model.tokenizer.is_none() {
        bail!(
            "{}: no tokenizer.json, so --prompt cannot be used; pass --prompt-ids",
            model.path.display()
        );
    }
    if !args.chat {
        return Ok(model.encode_prompt(&model.mark_important(text), true)?);
    }
    if model.chat_template.is_none() {
        bail!("{}: the model has no chat template, so --chat cannot be used", model.path.display());
    }
    // One user turn, rendered as the server renders a chat request.
    Ok(chat_prompt(model, &[ChatMessage::text("user", text.as_str())], 1, None, true, false)?)
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let load_start = Instant::now();
    let loaded = args.model.load()?;
    let load_time = load_start.elapsed();
    let prompt = prompt(&args, &loaded.info)?;
    let prompt_ids = prompt.ids.clone();
    let stop_token_ids = if args.chat && !args.ignore_eos {
        loaded.info.chat_stop_ids()
    } else {
        Vec::new()
    };
    let has_tokenizer = loaded.info.tokenizer.is_some();
    let engine = EngineHandle::start(loaded, args.engine.single_sequence_config()?)?;
    eprintln!("{}", engine.info());
    let request = GenerationRequest {
        max_tokens: Some(args.max_tokens),
        sampling: SamplingParams {
            temperature: args.temperature,
            seed: Some(args.seed),
            ..SamplingParams::default()
        },
        stop_token_ids,
        ignore_eos: args.ignore_eos,
        global_spans: prompt.global_spans,
        ..GenerationRequest::new(prompt.ids)
    };

    let start = Instant::now();
    let mut stream = engine.submit(request)?;
    let mut stdout = std::io::stdout().lock();
    let mut token_ids = Vec::new();
    let mut text = String::new();
    let mut first_token = None;
    let mut finish = None;
    while let Some(event) = stream.blocking_next() {
        match event {
            GenerationEvent::Delta { text: piece, token_ids: ids, .. } => {
                first_token.get_or_insert_with(|| start.elapsed());
                token_ids.extend(ids);
                text.push_str(&piece);
                if !args.json && has_tokenizer {
                    write!(stdout, "{piece}")?;
                    stdout.flush()?;
                }
            }
            GenerationEvent::Finished { reason, .. } => finish = Some(reason),
            GenerationEvent::Embedding { .. } => {}
            GenerationEvent::Done { .. } => break,
        }
    }
    let total = start.elapsed();
    match &finish {
        Some(FinishReason::Error(message)) => bail!("generation failed: {message}"),
        None => bail!("the engine stopped before the answer was complete"),
        Some(_) => {}
    }
    if args.json {
        let line = json!({
            "prompt_ids": prompt_ids,
            "token_ids": token_ids,
            "text": has_tokenizer.then_some(text),
        });
        writeln!(stdout, "{line}")?;
    } else if has_tokenizer {
        writeln!(stdout)?;
    } else {
        let ids: Vec<String> = token_ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", ids.join(","))?;
    }
    stdout.flush()?;
    let prefill = first_token.unwrap_or(total);
    report_timings(load_time, prompt_ids.len(), token_ids.len(), prefill, total - prefill, finish);
    Ok(())
}

/// Timings go to stderr so stdout keeps the JSON contract.
fn report_timings(
    load: Duration,
    prompt_len: usize,
    generated: usize,
    prefill: Duration,
    decode: Duration,
    finish: Option<FinishReason>,
) {
    let decoded = generated.saturating_sub(1);
    let (prefill, decode) = (prefill.as_secs_f64(), decode.as_secs_f64());
    eprintln!(
        "load {:.2}s | prefill {prompt_len} tokens {prefill:.3}s ({:.1} tok/s) | decode {decoded} tokens {decode:.3}s ({:.2} tok/s) | finish {}",
        load.as_secs_f64(),
        prompt_len as f64 / prefill.max(1e-9),
        decoded as f64 / decode.max(1e-9),
        finish.as_ref().map_or("none", FinishReason::as_str),
    );
}
