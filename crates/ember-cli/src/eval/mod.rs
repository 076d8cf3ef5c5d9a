//! `ember eval`: long-context quality and latency against any
//! OpenAI-compatible server (Ember, vLLM, llama.cpp's server), with
//! RULER-style synthetic tasks sized by the served model's tokenizer.
//! Prints a Markdown table (task, length, metric, score, n, ms/token,
//! output tok/s) and writes one JSON object per row with `--json`.
//! `--suite jsonl` scores the user's own long-document QA and summarization
//! data instead (`metrics`). Every answered sample goes to `--out` at once,
//! and `--resume` continues from there (`record`).

mod jsonl;
pub mod metrics;
mod record;
pub mod ruler;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;

use crate::openai_client::{Client, TokenCounter};
use crate::parallel::parallel_map;
use crate::progress::Progress;
use record::{Record, RecordLog, RunKey};
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
    /// Write one JSON object per answered sample here, as it comes in.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Keep the samples `--out` already holds and ask only for the rest.
    #[arg(long)]
    resume: bool,
    /// Count tokens with this local tokenizer (`tokenizer.json`, a model
    /// directory or a GGUF file) instead of the server's `/tokenize`, for
    /// servers without that route.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The data of `--suite jsonl`.
    #[arg(long)]
    data: Option<PathBuf>,
}

/// One (task, length) row.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    task: String,
    length: usize,
    metric: String,
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
    let run = RunKey {
        model: args.model.clone(),
        suite: format!("{:?}", args.suite).to_lowercase(),
        seed: args.seed,
        important: args.important,
        max_tokens: args.max_tokens,
        data: args.data.as_ref().map(|d| d.display().to_string()),
    };
    let log = RecordLog::open(args.out.as_deref(), args.resume, &run)?;
    if log.resumed() > 0 {
        eprintln!("eval: {} samples of this run read back from --out", log.resumed());
    }
    let records = match (args.suite, &args.data) {
        (Suite::Jsonl, None) => bail!("--suite jsonl needs --data FILE"),
        (Suite::Jsonl, _) if args.tokenizer.is_some() || args.important => {
            bail!("--tokenizer and --important shape synthetic prompts; --suite jsonl sends its data as it is")
        }
        (Suite::Jsonl, Some(data)) => jsonl::run(&client, data, &run, &log, args.concurrency)?,
        (_, Some(_)) => bail!("--data goes with --suite jsonl"),
        _ => synthetic(&args, &client, &run, &log)?,
    };
    let rows = rows(&records);
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
    let mean = rows.iter().map(|r| r.score).sum::<f64>() / rows.len().max(1) as f64;
    let reused = log.reused();
    eprintln!(
        "eval: {} rows, {} requests ({} now, {reused} resumed), mean score {mean:.2}, {:.1} s",
        rows.len(),
        records.len(),
        records.len() - reused,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The RULER-style suites: every task at every length, the records in
/// that order.
fn synthetic(args: &EvalArgs, client: &Client, run: &RunKey, log: &RecordLog) -> Result<Vec<Record>> {
    let counter = TokenCounter::new(client, args.tokenizer.as_deref())?;
    let tasks = args.suite.tasks();
    let progress = Progress::new(args.lengths.len() * tasks.len() * args.samples, "eval");
    let mut records = Vec::new();
    for &length in &args.lengths {
        let Some(budget) = length.checked_sub(args.max_tokens).filter(|b| *b > 0) else {
            bail!("length {length} leaves no room for a prompt next to --max-tokens {}", args.max_tokens);
        };
        for &task in tasks {
            progress.set_label(&format!("{} {length}", task.name()));
            let indices: Vec<usize> = (0..args.samples).collect();
            let cell = parallel_map(&indices, args.concurrency, |&index| {
                let key = (task.name().to_owned(), Some(length), index);
                let record = log.get_or_ask(&key, || {
                    let plan = Plan::new(task, args.seed, index, args.important);
                    let sample = plan.fit(budget, |prompt| counter.user_message(prompt))?;
                    let answer = client.chat(&sample.prompt, args.max_tokens)?;
                    let got = string_match_all(&answer.text, &sample.answers);
                    progress.line(&format!(
                        "{} {length} #{index}{}: {got:.2} in {:.1} s ({} prompt tokens): {:?}",
                        task.name(),
                        if task == Task::CommonWords { String::new() } else { format!(" depth {:.2}", sample.depth) },
                        answer.elapsed.as_secs_f64(),
                        answer.prompt_tokens,
                        answer.text.chars().take(80).collect::<String>()
                    ));
                    let scores = BTreeMap::from([("string_match_all".to_owned(), got)]);
                    Ok(Record::new(run, key.clone(), scores, answer))
                })?;
                progress.advance(1);
                Ok(record)
            })?;
            records.extend(cell);
        }
    }
    Ok(records)
}

/// One row per task, length and metric, in the order each task and length
/// first appears. A row's length is the target length of synthetic
/// samples, or the mean prompt tokens of `--data` lines.
fn rows(records: &[Record]) -> Vec<Row> {
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for record in records {
        match groups.iter_mut().find(|g| g[0].task == record.task && g[0].length == record.length) {
            Some(group) => group.push(record),
            None => groups.push(vec![record]),
        }
    }
    let mut rows = Vec::new();
    for group in groups {
        let n = group.len();
        let seconds: f64 = group.iter().map(|r| r.seconds).sum();
        let prompt_tokens: usize = group.iter().map(|r| r.prompt_tokens).sum();
        let answer_tokens: usize = group.iter().map(|r| r.completion_tokens).sum();
        for metric in group[0].scores.keys() {
            let score: f64 = group.iter().map(|r| r.scores.get(metric).copied().unwrap_or(0.0)).sum();
            rows.push(Row {
                task: group[0].task.clone(),
                length: group[0].length.unwrap_or(prompt_tokens / n),
                metric: metric.clone(),
                score: score / n as f64,
                n,
                ms_per_token: 1000.0 * seconds / (prompt_tokens + answer_tokens).max(1) as f64,
                tokens_per_s: answer_tokens as f64 / seconds.max(f64::EPSILON),
            });
        }
    }
    rows
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
