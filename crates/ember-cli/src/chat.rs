//! `ember chat`: an interactive terminal chat. Each turn renders the whole
//! history through the model's chat template and streams the answer.
//! `/reset` forgets the history, `/exit` (or end of input) quits.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use ember_engine::tokenizer::IncrementalDecoder;
use ember_engine::{GenerationParams, RenderOptions, generate};
use serde_json::{Value, json};

use crate::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message starting every conversation.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.2)]
    temperature: f32,
    /// Seed of the first turn (each turn adds one); random when absent.
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let (Some(tokenizer), Some(template)) = (&loaded.tokenizer, &loaded.chat_template) else {
        bail!("{}: chat needs a tokenizer and a chat template", loaded.path.display());
    };
    let interactive = std::io::stdin().is_terminal();
    let mut seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let fresh_history = || -> Vec<Value> {
        args.system
            .iter()
            .map(|s| json!({"role": "system", "content": s}))
            .collect()
    };
    let mut history = fresh_history();
    let mut stdout = std::io::stdout().lock();
    if interactive {
        writeln!(stdout, "ember chat with {} (/reset, /exit)", loaded.path.display())?;
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
        history.push(json!({"role": "user", "content": line}));
        let rendered = template.render(RenderOptions {
            messages: &history,
            tools: None::<&[Value]>,
            add_generation_prompt: true,
        })?;
        let prompt = tokenizer.encode(&rendered, false)?;
        let params = GenerationParams {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            seed,
            stop_token_ids: loaded.chat_stop_ids(),
        };
        seed = seed.wrapping_add(1);
        let mut decoder = IncrementalDecoder::new(tokenizer);
        let mut stream_error = None;
        let output = generate(&loaded.model, &prompt, &params, |id| match decoder.push(id) {
            Ok(piece) => {
                let _ = write!(stdout, "{piece}");
                let _ = stdout.flush();
            }
            Err(e) => stream_error = Some(e),
        })?;
        if let Some(e) = stream_error {
            return Err(e).context("decoding the answer");
        }
        writeln!(stdout, "{}", decoder.finish()?)?;
        // The history keeps the full decode, not the streamed pieces.
        let answer = tokenizer.decode(&output.token_ids)?;
        history.push(json!({"role": "assistant", "content": answer.trim()}));
    }
    Ok(())
}
