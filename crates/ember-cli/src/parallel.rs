//! A fixed number of worker threads over a list, for the client commands
//! that keep several requests in flight (`ember eval`, `ember summarize`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, anyhow};

/// `work` on every item, `workers` at a time; the results in item order,
/// or the first error among them.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], workers: usize, work: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
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
    let all = results.into_inner().map_err(|_| anyhow!("a worker panicked"))?;
    all.into_iter().map(|r| r.unwrap_or_else(|| Err(anyhow!("a worker stopped early")))).collect()
}

