//! `ember chat`: an interactive terminal chat. Each turn renders the whole
//! history as the server renders a chat request (the model's chat template,
//! `[IMPORTANT]` spans under sparse attention) and streams the answer.
//! `/reset` forgets the history, `/exit` (or end of input) quits.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use ember_engine::{EngineHandle, FinishReason, GenerationEvent, GenerationRequest, SamplingParams};
use ember_gateway::backend::local::prompt::chat_prompt;
use ember_gateway::openai::ChatMessage;

use crate::engine_args::EngineArgs;
use crate::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// A system message starting every conversation.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// 0 is greedy [default: the model's generation defaults].
    #[arg(long)]
    temperature: Option<f32>,
    /// Seed of the first turn (each turn adds one); random when absent.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let engine = EngineHandle::start(loaded, args.engine.single_sequence_config()?)?;
    let model = engine.model();
    let defaults = model.generation_defaults.sampling();
    let (Some(_), Some(_)) = (&model.tokenizer, &model.chat_template) else {
        bail!("{}: chat needs a tokenizer and a chat template", model.path.display());
    };
    let interactive = std::io::stdin().is_terminal();
    let mut seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let fresh_history = || -> Vec<ChatMessage> { args.system.iter().map(|s| ChatMessage::text("system", s.as_str())).collect() };
    let mut history = fresh_history();
    let mut stdout = std::io::stdout().lock();
    eprintln!("{}", engine.info());
    if interactive {
        writeln!(stdout, "ember chat with {} (/reset, /exit)", model.path.display())?;
    }
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            write!(stdout, "\n> ")?;
            stdout.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading input")?;
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh_history();
                writeln!(stdout, "(history cleared)")?;
                continue;
            }
            _ => {}
        }
        history.push(ChatMessage::text("user", line));
        let prompt = chat_prompt(model, &history, usize::MAX, None, true, false)?;
        let request = GenerationRequest {
            max_tokens: Some(args.max_tokens),
            sampling: SamplingParams {
                temperature: args.temperature.unwrap_or(defaults.temperature),
                seed: Some(seed),
                ..defaults.clone()
            },
            stop_token_ids: model.chat_stop_ids(),
            global_spans: prompt.global_spans,
            ..GenerationRequest::new(prompt.ids)
        };
        seed = seed.wrapping_add(1);
        // Earlier turns are in the prefix cache: only the new turn is prefilled.
        let mut stream = engine.submit(request)?;
        let mut answer = String::new();
        while let Some(event) = stream.blocking_next() {
            match event {
                GenerationEvent::Delta { text, .. } => {
                    write!(stdout, "{text}")?;
                    stdout.flush()?;
                    answer.push_str(&text);
                }
                GenerationEvent::Finished {
                    reason: FinishReason::Error(message),
                    ..
                } => bail!("generation failed: {message}"),
                GenerationEvent::Finished { .. } => {}
                GenerationEvent::Embedding { .. } => {}
                GenerationEvent::Done { .. } => break,
            }
        }
        writeln!(stdout)?;
        history.push(ChatMessage::text("assistant", answer.trim()));
    }
    Ok(())
}
