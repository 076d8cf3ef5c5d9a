//! `ember summarize`: map-reduce over a long document against any
//! OpenAI-compatible server. The document is cut into chunks under a token
//! budget (`split`), each chunk is summarized (or searched for what answers
//! `--question`) with several requests in flight, and the partial results
//! are merged in groups that fit the same budget, level by level, until one
//! is left. Spans marked `[IMPORTANT]` ... `[/IMPORTANT]` are copied into
//! every prompt (`prompts`), so no step loses them.

mod prompts;
mod split;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ember_engine::important::{CLOSE_MARKER, OPEN_MARKER};

use crate::openai_client::{Client, TokenCounter};
use crate::parallel::parallel_map;
use crate::progress::Progress;
use prompts::{Goal, NOTHING_RELEVANT};

#[derive(Debug, clap::Args)]
pub struct SummarizeArgs {
    /// The document: plain text or Markdown.
    file: PathBuf,
    /// Answer this question from the document instead of summarizing it.
    #[arg(long)]
    question: Option<String>,
    /// The server's OpenAI base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    base_url: String,
    /// The served model name.
    #[arg(long)]
    model: String,
    /// Most tokens of one chunk of the document, the `[IMPORTANT]` spans
    /// copied into its prompt included (so also of one merge's inputs).
    /// The instructions around them add about 100 more.
    #[arg(long, default_value_t = 2048)]
    chunk_tokens: usize,
    /// Most tokens of one partial summary or of the final one.
    #[arg(long, default_value_t = 384)]
    summary_tokens: usize,
    /// Sampling temperature of every request (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// OpenAI's `frequency_penalty` on every request: small models loop
    /// when they summarize, and 0.5 keeps most of them out of it.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Write the Markdown here instead of to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Count tokens with this local tokenizer (`tokenizer.json`, a model
    /// directory or a GGUF file) instead of the server's `/tokenize`.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

/// Room for the `--- PART n ---` line of each merged part.
const PART_HEADER_TOKENS: usize = 16;

/// What the requests of a run cost.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    prompt_tokens: usize,
    completion_tokens: usize,
}

struct Summarizer<'a> {
    client: &'a Client,
    goal: Goal<'a>,
    important: String,
    summary_tokens: usize,
    tally: Mutex<Tally>,
}

impl Summarizer<'_> {
    /// One request; its reply, and a line for the log.
    fn ask(&self, prompt: &str, what: &str, progress: &Progress) -> Result<String> {
        let answer = self.client.chat(prompt, self.summary_tokens)?;
        if let Ok(mut tally) = self.tally.lock() {
            tally.requests += 1;
            tally.prompt_tokens += answer.prompt_tokens;
            tally.completion_tokens += answer.completion_tokens;
        }
        let cut = if answer.finish_reason == "length" { " (cut at --summary-tokens)" } else { "" };
        progress.line(&format!(
            "{what}: {} prompt tokens, {} out in {:.1} s{cut}",
            answer.prompt_tokens,
            answer.completion_tokens,
            answer.elapsed.as_secs_f64()
        ));
        progress.advance(1);
        Ok(answer.text.trim().to_owned())
    }
}

pub fn run(args: SummarizeArgs) -> Result<()> {
    if args.concurrency == 0 || args.summary_tokens == 0 {
        bail!("--concurrency and --summary-tokens must be at least 1");
    }
    let started = Instant::now();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    if text.trim().is_empty() {
        bail!("{} is empty", args.file.display());
    }
    let client = Client::new(&args.base_url, &args.model, args.api_key.clone(), Duration::from_secs(args.timeout))
        .with_sampling(args.temperature, args.frequency_penalty);
    let counter = TokenCounter::new(&client, args.tokenizer.as_deref())?;
    let count = |text: &str| counter.text(text);

    let spans = important_spans(&text);
    let important = prompts::important_block(&spans);
    let important_tokens = if important.is_empty() { 0 } else { count(&important)? };
    let budget = args.chunk_tokens.saturating_sub(important_tokens);
    if budget < 2 * (args.summary_tokens + PART_HEADER_TOKENS) {
        bail!(
            "--chunk-tokens {} leaves {budget} tokens beside the {} of the [IMPORTANT] spans, too few to merge two \
             summaries of --summary-tokens {}; raise --chunk-tokens or lower --summary-tokens",
            args.chunk_tokens,
            important_tokens,
            args.summary_tokens
        );
    }
    eprintln!("summarize: splitting {} into chunks of at most {budget} tokens", args.file.display());
    let chunks = split::chunks(&text, budget, &count)?;
    let document_tokens: usize = chunks.iter().map(|c| count(c)).sum::<Result<usize>>()?;
    eprintln!(
        "summarize: {document_tokens} tokens in {} chunks, {} [IMPORTANT] spans ({important_tokens} tokens) in every prompt",
        chunks.len(),
        spans.len()
    );

    let goal = args.question.as_deref().map_or(Goal::Summary, Goal::Answer);
    let summarizer = Summarizer {
        client: &client,
        goal,
        important,
        summary_tokens: args.summary_tokens,
        tally: Mutex::new(Tally::default()),
    };
    let total = chunks.len();
    let progress = Progress::new(total, "chunks");
    let indexed: Vec<(usize, &String)> = chunks.iter().enumerate().collect();
    let mut parts = parallel_map(&indexed, args.concurrency, |&(index, chunk)| {
        let prompt = prompts::chunk(goal, &summarizer.important, chunk, index, total);
        summarizer.ask(&prompt, &format!("chunk {}/{total}", index + 1), &progress)
    })?;
    drop(progress);
    let (result, levels) = if total == 1 {
        (parts.remove(0), 0)
    } else {
        if matches!(goal, Goal::Answer(_)) {
            parts.retain(|p| !p.trim_end_matches('.').eq_ignore_ascii_case(NOTHING_RELEVANT));
        }
        if parts.is_empty() {
            ("No part of the document holds anything that answers the question.".to_owned(), 0)
        } else {
            merge(&summarizer, parts, budget, args.concurrency, &count)?
        }
    };

    let title = match goal {
        Goal::Summary => format!(
            "# Summary of {}",
            args.file.file_name().map_or_else(|| args.file.display().to_string(), |n| n.to_string_lossy().into_owned())
        ),
        Goal::Answer(question) => format!("# {question}"),
    };
    let markdown = format!("{title}\n\n{result}\n");
    match &args.out {
        Some(path) => std::fs::write(path, &markdown).with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{markdown}"),
    }
    let tally = summarizer.tally.lock().map_err(|_| anyhow!("a summarize worker panicked"))?;
    eprintln!(
        "summarize: {document_tokens} document tokens, {total} chunks, {levels} merge levels, {} requests, {} prompt \
         and {} completion tokens, {:.1} s",
        tally.requests,
        tally.prompt_tokens,
        tally.completion_tokens,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Merges `parts` in groups that fit `budget`, level by level, until one
/// group is left, whose merge is the final reply; with the number of levels.
fn merge(
    summarizer: &Summarizer,
    mut parts: Vec<String>,
    budget: usize,
    concurrency: usize,
    count: &impl Fn(&str) -> Result<usize>,
) -> Result<(String, usize)> {
    let mut levels = 0;
    loop {
        levels += 1;
        let sizes = parts.iter().map(|p| count(p)).collect::<Result<Vec<usize>>>()?;
        let groups = group(&sizes, budget);
        if groups.len() == 1 {
            let progress = Progress::new(1, "final merge");
            let prompt = prompts::merge(summarizer.goal, &summarizer.important, &parts, true);
            let text = summarizer.ask(&prompt, &format!("level {levels} final merge of {}", parts.len()), &progress)?;
            return Ok((text, levels));
        }
        if groups.len() == parts.len() {
            bail!("no two partial summaries fit in one merge of {budget} tokens; raise --chunk-tokens or lower --summary-tokens");
        }
        let progress = Progress::new(groups.len(), &format!("merge level {levels}"));
        let total = groups.len();
        let indexed: Vec<(usize, &std::ops::Range<usize>)> = groups.iter().enumerate().collect();
        parts = parallel_map(&indexed, concurrency, |&(index, range)| {
            let group = &parts[range.clone()];
            if group.len() == 1 {
                return Ok(group[0].clone());
            }
            let prompt = prompts::merge(summarizer.goal, &summarizer.important, group, false);
            summarizer.ask(&prompt, &format!("level {levels} merge {}/{total} of {}", index + 1, group.len()), &progress)
        })?;
    }
}

/// Consecutive runs of parts of `sizes` tokens whose sum, with a part
/// header each, fits `budget`, greedily (a part over it stands alone).
fn group(sizes: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let mut end = start + 1;
        let mut body = sizes[start] + PART_HEADER_TOKENS;
        while end < sizes.len() && body + sizes[end] + PART_HEADER_TOKENS <= budget {
            body += sizes[end] + PART_HEADER_TOKENS;
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

/// The text of every paired `[IMPORTANT]` ... `[/IMPORTANT]` span, in order,
/// without repeats (pairing as the engine pairs them: an opener and the next
/// closer).
fn important_spans(text: &str) -> Vec<String> {
    let mut spans: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(OPEN_MARKER) {
        let inner = &rest[open + OPEN_MARKER.len()..];
        let Some(close) = inner.find(CLOSE_MARKER) else { break };
        let span = inner[..close].split_whitespace().collect::<Vec<_>>().join(" ");
        if !span.is_empty() && !spans.contains(&span) {
            spans.push(span);
        }
        rest = &inner[close + CLOSE_MARKER.len()..];
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn important_spans_pair_like_the_engine() {
        let text = "a [IMPORTANT]key 42[/IMPORTANT] b [IMPORTANT] two\n lines [/IMPORTANT] [IMPORTANT]key 42[/IMPORTANT] [/IMPORTANT] c [IMPORTANT] open";
        assert_eq!(important_spans(text), ["key 42", "two lines"]);
        assert!(important_spans("no markers").is_empty());
    }

    #[test]
    fn groups_fit_the_budget_and_keep_order() {
        // Each part is 10 tokens plus 16 for its header: two fit in 60, three do not.
        assert_eq!(group(&[10; 5], 60), [0..2, 2..4, 4..5]);
        assert_eq!(group(&[10; 5], 1000), [0..5]);
        // A part over the budget stands alone, and the rest still group.
        assert_eq!(group(&[10, 100, 10, 10], 60), [0..1, 1..2, 2..4]);
    }
}
