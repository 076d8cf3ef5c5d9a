//! `--suite jsonl`: the user's long-document data, one
//! `{"context", "question", "answers": [...], "task": "qa" | "summarization"}`
//! per line. QA is scored by exact match and token F1, summarization by
//! Rouge-L (`metrics`); one row per task and metric, its length the mean
//! prompt tokens the server counted.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::client::Client;
use super::{Row, parallel_map};
use super::metrics::{exact_match, rouge_l, token_f1};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    context: String,
    #[serde(default)]
    question: String,
    answers: Vec<String>,
    #[serde(default)]
    task: Kind,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Qa,
    Summarization,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Qa => "qa",
            Self::Summarization => "summarization",
        }
    }

    fn metrics(self) -> &'static [(&'static str, fn(&str, &[String]) -> f64)] {
        match self {
            Self::Qa => &[("exact_match", exact_match), ("f1", token_f1)],
            Self::Summarization => &[("rouge_l", rouge_l)],
        }
    }

    /// The prompt: the document, then what to do with it.
    fn prompt(self, line: &Line) -> String {
        match self {
            Self::Qa => format!(
                "{}\n\nAnswer the question using the text above. Give only the answer, no explanation.\n\nQuestion: {}\nAnswer:",
                line.context, line.question
            ),
            Self::Summarization if line.question.is_empty() => format!("{}\n\nSummarize the text above.", line.context),
            Self::Summarization => format!("{}\n\n{}", line.context, line.question),
        }
    }
}

/// Per task: the summed scores of each metric and the request figures.
#[derive(Default)]
struct Totals {
    scores: Vec<f64>,
    n: usize,
    prompt_tokens: usize,
    tokens: usize,
    answer_tokens: usize,
    seconds: f64,
}

pub fn run(client: &Client, data: &Path, max_tokens: usize, concurrency: usize) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut lines = Vec::new();
    for (number, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line: Line = serde_json::from_str(raw).with_context(|| format!("{}:{}", data.display(), number + 1))?;
        if line.answers.is_empty() {
            bail!("{}:{}: `answers` is empty", data.display(), number + 1);
        }
        lines.push((number + 1, line));
    }
    let answered = parallel_map(&lines, concurrency, |(number, line)| {
        let answer = client.chat(&line.task.prompt(line), max_tokens)?;
        let scores: Vec<f64> = line.task.metrics().iter().map(|(_, score)| score(&answer.text, &line.answers)).collect();
        eprintln!(
            "{} line {number}: {scores:.2?} in {:.1} s: {:?}",
            line.task.name(),
            answer.elapsed.as_secs_f64(),
            answer.text.chars().take(80).collect::<String>()
        );
        Ok((line.task, scores, answer))
    })?;
    let mut totals: Vec<(Kind, Totals)> = Vec::new();
    for (task, scores, answer) in answered {
        let position = match totals.iter().position(|(k, _)| *k == task) {
            Some(p) => p,
            None => {
                totals.push((task, Totals::default()));
                totals.len() - 1
            }
        };
        let t = &mut totals[position].1;
        t.scores.resize(scores.len(), 0.0);
        t.scores.iter_mut().zip(&scores).for_each(|(sum, s)| *sum += s);
        t.n += 1;
        t.prompt_tokens += answer.prompt_tokens;
        t.tokens += answer.prompt_tokens + answer.completion_tokens;
        t.answer_tokens += answer.completion_tokens;
        t.seconds += answer.elapsed.as_secs_f64();
    }
    if totals.is_empty() {
        bail!("{} holds no samples", data.display());
    }
    let mut rows = Vec::new();
    for (kind, t) in totals {
        for ((metric, _), sum) in kind.metrics().iter().zip(&t.scores) {
            rows.push(Row {
                task: kind.name().to_owned(),
                length: t.prompt_tokens / t.n,
                metric,
                score: sum / t.n as f64,
                n: t.n,
                ms_per_token: 1000.0 * t.seconds / t.tokens.max(1) as f64,
                tokens_per_s: t.answer_tokens as f64 / t.seconds.max(f64::EPSILON),
            });
        }
    }
    Ok(rows)
}
