//! Progress of a long client run (`ember eval`, `ember summarize`): a bar on
//! stderr when stderr is a terminal, with per-item lines printed above it;
//! the lines alone when it is a pipe or a log file.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total` items, the bar labelled `label`.
    pub fn new(total: usize, label: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(500));
        Self { bar: Some(bar) }
    }

    /// One line of log, above the bar.
    pub fn line(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Items done since the bar was made (resumed ones, say).
    pub fn advance(&self, items: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(items as u64);
        }
    }

    pub fn set_label(&self, label: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(label.to_owned());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
