//! One JSON object per answered sample in `--out FILE.jsonl`, written as
//! each answer comes in, so that `--resume` after a crash, a timeout or a
//! Ctrl-C asks only for what the file does not hold yet.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::openai_client::Answer;

/// What makes two runs' samples the same samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunKey {
    pub model: String,
    pub suite: String,
    pub seed: u64,
    pub important: bool,
    pub max_tokens: usize,
    /// `--data` of `--suite jsonl`, as given.
    pub data: Option<String>,
}

/// One sample's answer and scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub run: RunKey,
    pub task: String,
    /// The target context length of a synthetic sample; `None` for a line
    /// of `--data`.
    pub length: Option<usize>,
    /// The sample's index, or the line number in `--data`.
    pub index: usize,
    /// Metric name to score in [0, 1].
    pub scores: BTreeMap<String, f64>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub seconds: f64,
    pub answer: String,
}

pub type SampleKey = (String, Option<usize>, usize);

impl Record {
    /// The record of a sample `answer` answered, scored `scores`.
    pub fn new(run: &RunKey, key: SampleKey, scores: BTreeMap<String, f64>, answer: Answer) -> Self {
        let (task, length, index) = key;
        Self {
            run: run.clone(),
            task,
            length,
            index,
            scores,
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.completion_tokens,
            seconds: answer.elapsed.as_secs_f64(),
            answer: answer.text,
        }
    }

    pub fn key(&self) -> SampleKey {
        (self.task.clone(), self.length, self.index)
    }
}

/// The samples already answered (when resuming) and the file new ones go to.
pub struct RecordLog {
    done: HashMap<SampleKey, Record>,
    /// How many of `done` this run has taken.
    reused: AtomicUsize,
    file: Option<(PathBuf, Mutex<File>)>,
}

impl RecordLog {
    /// `out` is truncated, unless `resume`, when its records for `run` are
    /// read back and new ones are appended. A record of another run (other
    /// model, seed, suite, `--important` or `--max-tokens`) is an error: its
    /// scores would not be this run's.
    pub fn open(out: Option<&Path>, resume: bool, run: &RunKey) -> Result<Self> {
        let Some(path) = out else {
            if resume {
                bail!("--resume needs --out FILE.jsonl, the file to resume from");
            }
            return Ok(Self {
                done: HashMap::new(),
                reused: AtomicUsize::new(0),
                file: None,
            });
        };
        let mut done = HashMap::new();
        if resume && path.exists() {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let lines = text.lines().count();
            for (number, line) in text.lines().enumerate() {
                // A run killed mid-write leaves a partial last line: drop it.
                let Ok(record) = serde_json::from_str::<Record>(line) else {
                    if number + 1 == lines {
                        break;
                    }
                    bail!("{}:{}: not a record of `ember eval --out`", path.display(), number + 1);
                };
                if record.run != *run {
                    bail!(
                        "{}:{}: written by another run ({:?}), not {run:?}; --resume continues the same run",
                        path.display(),
                        number + 1,
                        record.run
                    );
                }
                done.insert(record.key(), record);
            }
        }
        if resume {
            // Rewrite what was kept, so a dropped partial line leaves no debris.
            let mut kept: Vec<&Record> = done.values().collect();
            kept.sort_by_key(|r| r.key());
            let mut text = String::new();
            for record in kept {
                text.push_str(&serde_json::to_string(record)?);
                text.push('\n');
            }
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume)
            .truncate(!resume)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            done,
            reused: AtomicUsize::new(0),
            file: Some((path.to_owned(), Mutex::new(file))),
        })
    }

    /// The sample's record: an earlier run's when `--out` holds it, else
    /// the one `ask` makes, written to `--out` at once.
    pub fn get_or_ask(&self, key: &SampleKey, ask: impl FnOnce() -> Result<Record>) -> Result<Record> {
        if let Some(record) = self.done.get(key) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(record.clone());
        }
        let record = ask()?;
        self.write(&record)?;
        Ok(record)
    }

    /// Records read back from `--out`.
    pub fn resumed(&self) -> usize {
        self.done.len()
    }

    /// Records of this run taken from `--out` instead of asked for.
    pub fn reused(&self) -> usize {
        self.reused.load(Ordering::Relaxed)
    }

    /// Appends `record` and flushes it to the file.
    fn write(&self, record: &Record) -> Result<()> {
        let Some((path, file)) = &self.file else { return Ok(()) };
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        let mut file = file.lock().map_err(|_| anyhow::anyhow!("a writer of {} panicked", path.display()))?;
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
