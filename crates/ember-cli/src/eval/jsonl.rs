//! `--suite jsonl`: the user's long-document data, one
//! `{"context", "question", "answers": [...], "task": "qa" | "summarization"}`
//! per line. QA is scored by exact match and token F1, summarization by
//! Rouge-L (`metrics`); one record per line, in line order.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::metrics::{exact_match, rouge_l, token_f1};
use super::record::{Record, RecordLog, RunKey};
use crate::openai_client::Client;
use crate::parallel::parallel_map;
use crate::progress::Progress;

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

pub fn run(client: &Client, data: &Path, run: &RunKey, log: &RecordLog, concurrency: usize) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(data).with_context(|| format!("cannot read {}", data.display()))?;
    let mut lines = Vec::new();
    for (number, raw) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line: Line = serde_json::from_str(raw).with_context(|| format!("{}:{}", data.display(), number + 1))?;
        if line.answers.is_empty() {
            bail!("{}:{}: `answers` is empty", data.display(), number + 1);
        }
        lines.push((number + 1, line));
    }
    if lines.is_empty() {
        bail!("{} holds no samples", data.display());
    }
    let progress = Progress::new(lines.len(), "eval");
    parallel_map(&lines, concurrency, |(number, line)| {
        let key = (line.task.name().to_owned(), None, *number);
        let record = log.get_or_ask(&key, || {
            let answer = client.chat(&line.task.prompt(line), run.max_tokens)?;
            let scores: BTreeMap<String, f64> = line
                .task
                .metrics()
                .iter()
                .map(|(name, score)| ((*name).to_owned(), score(&answer.text, &line.answers)))
                .collect();
            progress.line(&format!(
                "{} line {number}: {scores:.2?} in {:.1} s: {:?}",
                line.task.name(),
                answer.elapsed.as_secs_f64(),
                answer.text.chars().take(80).collect::<String>()
            ));
            Ok(Record::new(run, key.clone(), scores, answer))
        })?;
        progress.advance(1);
        Ok(record)
    })
}
