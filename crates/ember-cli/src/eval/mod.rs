//! `ember eval`: long-context quality and latency against any
//! OpenAI-compatible server (Ember, vLLM, llama.cpp's server), with
//! RULER-style synthetic tasks sized by the served model's tokenizer.
//! Prints a Markdown table (task, length, metric, score, n, ms/token,
//! output tok/s) and writes one JSON object per row with `--json`.
//! `--suite jsonl` scores the user's own long-document QA and summarization
//! data instead (`metrics`).

mod client;
mod jsonl;
pub mod metrics;
pub mod ruler;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, anyhow, bail};
use serde_json::json;

use client::Client;
use ruler::{Plan, Task, string_match_all};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Needles in a haystack: single (depths spread), multi-key, multi-value.
    Niah,
    /// Variable tracking: `VAR X = VAR Y` chains.
    Vt,
    /// Common-word extraction.
    Cwe,
    /// All of the above.
    Ruler,
    /// The user's data (`--data FILE`): one `{"context", "question",
    /// "answers", "task": "qa" | "summarization"}` per line.
    Jsonl,
}

impl Suite {
    fn tasks(self) -> &'static [Task] {
        match self {
            Self::Niah => &[Task::NiahSingle, Task::NiahMultiKey, Task::NiahMultiValue],
            Self::Vt => &[Task::VariableTracking],
            Self::Cwe => &[Task::CommonWords],
            Self::Ruler => {
                &[Task::NiahSingle, Task::NiahMultiKey, Task::NiahMultiValue, Task::VariableTracking, Task::CommonWords]
            }
            Self::Jsonl => &[],
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The server's OpenAI base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    base_url: String,
    /// The served model name.
    #[arg(long)]
    model: String,
    #[arg(long, value_enum, default_value_t = Suite::Ruler)]
    suite: Suite,
    /// Context lengths in tokens (prompt plus answer), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 2048, 4096, 8192])]
    lengths: Vec<usize>,
    /// Samples per task and length.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// Requests in flight at once (samples of one task and length, or
    /// lines of `--data`).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap every needle in `[IMPORTANT]` ... `[/IMPORTANT]` (global spans
    /// under sparse attention).
    #[arg(long)]
    important: bool,
    /// Most tokens in an answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Write one JSON object per row here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The data of `--suite jsonl`.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// One (task, length) row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    task: String,
    length: usize,
    metric: &'static str,
    score: f64,
    n: usize,
    /// End-to-end milliseconds per token processed (prompt and answer).
    ms_per_token: f64,
    /// Answer tokens per second of request time.
    tokens_per_s: f64,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.samples == 0 || args.lengths.is_empty() || args.concurrency == 0 {
        bail!("--samples, --lengths and --concurrency must not be empty or 0");
    }
    let started = std::time::Instant::now();
    let client = Client::new(&args.base_url, &args.model, args.api_key.clone(), Duration::from_secs(args.timeout));
    let rows = match (args.suite, &args.data) {
        (Suite::Jsonl, Some(data)) => jsonl::run(&client, data, args.max_tokens, args.concurrency)?,
        (Suite::Jsonl, None) => bail!("--suite jsonl needs --data FILE"),
        (_, Some(_)) => bail!("--data goes with --suite jsonl"),
        _ => synthetic(&args, &client)?,
    };
    print!("{}", table(&rows));
    if let Some(path) = &args.json {
        let mut file = std::fs::File::create(path)?;
        for r in &rows {
            let line = json!({
                "task": r.task, "length": r.length, "metric": r.metric, "score": r.score,
                "n": r.n, "ms_per_token": r.ms_per_token, "tokens_per_s": r.tokens_per_s,
            });
            writeln!(file, "{line}")?;
        }
    }
    // A task's metrics share its requests: count each task and length once.
    let mut seen = std::collections::HashSet::new();
    let requests: usize = rows.iter().filter(|r| seen.insert((r.task.clone(), r.length))).map(|r| r.n).sum();
    let mean = rows.iter().map(|r| r.score).sum::<f64>() / rows.len().max(1) as f64;
    eprintln!("eval: {} rows, {requests} requests, mean score {mean:.2}, {:.1} s", rows.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// `work` on every item, `workers` at a time; the results in item order,
/// or the first error among them.
fn parallel_map<T: Sync, R: Send>(items: &[T], workers: usize, work: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<R>>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = work(item);
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(result);
                    }
                }
            });
        }
    });
    let all = results.into_inner().map_err(|_| anyhow!("an eval worker panicked"))?;
    all.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow!("an eval worker stopped early")))).collect()
}

/// The RULER-style suites: every task at every length.
fn synthetic(args: &EvalArgs, client: &Client) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &length in &args.lengths {
        let Some(budget) = length.checked_sub(args.max_tokens).filter(|b| *b > 0) else {
            bail!("length {length} leaves no room for a prompt next to --max-tokens {}", args.max_tokens);
        };
        for &task in args.suite.tasks() {
            let indices: Vec<usize> = (0..args.samples).collect();
            let outcomes = parallel_map(&indices, args.concurrency, |&index| {
                let plan = Plan::new(task, args.seed, index, args.important);
                let sample = plan.fit(budget, |prompt| client.count_tokens(prompt))?;
                let answer = client.chat(&sample.prompt, args.max_tokens)?;
                let got = string_match_all(&answer.text, &sample.answers);
                eprintln!(
                    "{} {length} #{index} depth {:.2}: {got:.2} in {:.1} s ({} prompt tokens): {:?}",
                    task.name(),
                    sample.depth,
                    answer.elapsed.as_secs_f64(),
                    answer.prompt_tokens,
                    answer.text.chars().take(80).collect::<String>()
                );
                Ok((got, answer))
            })?;
            let (mut score, mut elapsed, mut tokens, mut answer_tokens) = (0.0, 0.0, 0usize, 0usize);
            for (got, answer) in outcomes {
                score += got;
                elapsed += answer.elapsed.as_secs_f64();
                tokens += answer.prompt_tokens + answer.completion_tokens;
                answer_tokens += answer.completion_tokens;
            }
            rows.push(Row {
                task: task.name().to_owned(),
                length,
                metric: "string_match_all",
                score: score / args.samples as f64,
                n: args.samples,
                ms_per_token: 1000.0 * elapsed / tokens.max(1) as f64,
                tokens_per_s: answer_tokens as f64 / elapsed.max(f64::EPSILON),
            });
        }
    }
    Ok(rows)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| task | length | metric | score | n | ms/token | output tok/s |\n|---|---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {:.2} | {:.1} |\n",
            r.task, r.length, r.metric, r.score, r.n, r.ms_per_token, r.tokens_per_s
        ));
    }
    out
}
