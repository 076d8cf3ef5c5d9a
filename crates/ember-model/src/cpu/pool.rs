//! One persistent pool of compute threads for the CPU kernels.
//!
//! A decode step of a small model runs a few hundred parallel regions of a
//! few microseconds each, so neither spawning threads per call nor waking
//! parked threads through the kernel for every region is affordable. Workers
//! spin briefly on a generation counter after each region (as ggml's thread
//! pool does) and only then park on a condition variable; the calling thread
//! takes a share of every region itself.
//!
//! Why not rayon: its work-stealing deque and wake-up path cost more than the
//! regions themselves at this size, and the engine already owns the one
//! thread that calls in.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Between two regions of one
/// step the engine thread does a few microseconds of other work; a token step
/// of a small model is a few milliseconds.
const SPIN: Duration = Duration::from_micros(2000);

/// The task function of the current region, lifetime erased. Valid only
/// while `ThreadPool::run` is inside the region that published it.
#[derive(Clone, Copy)]
struct TaskRef(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and `run` keeps it alive until every worker
// has finished with it.
unsafe impl Send for TaskRef {}
unsafe impl Sync for TaskRef {}

struct Region {
    task: TaskRef,
    tasks: usize,
}

struct Shared {
    /// Bumped once per region; workers compare it with the last one they ran.
    generation: AtomicUsize,
    region: Mutex<Option<Region>>,
    wake: Condvar,
    /// Next task index to claim in the current region.
    next: AtomicUsize,
    /// Workers still inside the current region.
    busy: AtomicUsize,
    /// Workers waiting on `wake` (changed under `region`'s lock): a region
    /// with none parked skips the wake-up system call.
    parked: AtomicUsize,
    /// Set by a task that panicked; the payload is re-raised on the caller.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    shutdown: AtomicBool,
}

/// A fixed set of worker threads plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises regions: one caller at a time owns the workers.
    caller: Mutex<()>,
}

std::thread_local! {
    static IS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl ThreadPool {
    /// A pool running regions on `threads` threads in all (the caller and
    /// `threads - 1` workers).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            region: Mutex::new(None),
            wake: Condvar::new(),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            panic: Mutex::new(None),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("ember-cpu-{i}"))
                    .spawn(move || worker(&shared))
                    .ok()
            })
            .collect();
        Self {
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    /// Threads a region runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `task(i)` for every `i` in `0..tasks`, spread over the pool, and
    /// returns when all have finished. A panic in a task is re-raised here
    /// after the region has drained. Called from inside a task, it runs
    /// serially on that thread.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if tasks == 1 || self.workers.is_empty() || IS_WORKER.with(std::cell::Cell::get) {
            (0..tasks).for_each(task);
            return;
        }
        let _owner = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: only the lifetime is erased; this function does not return
        // before `busy` is back to zero, i.e. before every worker that could
        // have read the pointer is done with it.
        let erased: TaskRef = TaskRef(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(task)
        });
        {
            let mut region = shared.region.lock().unwrap_or_else(|e| e.into_inner());
            shared.next.store(0, Ordering::Relaxed);
            shared.busy.store(self.workers.len(), Ordering::Relaxed);
            *region = Some(Region { task: erased, tasks });
            shared.generation.fetch_add(1, Ordering::Release);
        }
        // A worker parks only under the lock taken above, so one that parked
        // before the new generation is counted here.
        if shared.parked.load(Ordering::Acquire) > 0 {
            shared.wake.notify_all();
        }

        IS_WORKER.with(|w| w.set(true));
        let own = catch_unwind(AssertUnwindSafe(|| claim_tasks(shared, task, tasks)));
        IS_WORKER.with(|w| w.set(false));

        while shared.busy.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *shared.region.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if let Some(payload) = shared.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(payload);
        }
    }
}

fn claim_tasks(shared: &Shared, task: &(dyn Fn(usize) + Sync), tasks: usize) {
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= tasks {
            return;
        }
        task(i);
    }
}

fn worker(shared: &Shared) {
    IS_WORKER.with(|w| w.set(true));
    let mut seen = 0usize;
    loop {
        // Spin for the next region, then park. The clock is read once per
        // 256 spins: reading it costs more than a spin.
        let started = Instant::now();
        let mut spins = 0u32;
        while shared.generation.load(Ordering::Acquire) == seen {
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && (started.elapsed() >= SPIN || shared.shutdown.load(Ordering::Relaxed)) {
                break;
            }
            std::hint::spin_loop();
        }
        let region = {
            let mut guard = shared.region.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if shared.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                let generation = shared.generation.load(Ordering::Acquire);
                if generation != seen {
                    seen = generation;
                    break guard.as_ref().map(|r| (r.task, r.tasks));
                }
                shared.parked.fetch_add(1, Ordering::AcqRel);
                guard = shared.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                shared.parked.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let Some((task, tasks)) = region else { continue };
        // SAFETY: the caller of `run` waits for `busy` to reach zero before
        // the task it points to goes away.
        let task = unsafe { &*task.0 };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| claim_tasks(shared, task, tasks))) {
            shared.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(payload);
        }
        shared.busy.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        {
            let _guard = self.shared.region.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

static POOL: OnceLock<ThreadPool> = OnceLock::new();
static REQUESTED_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the thread count of the process-wide pool (`--threads`). Takes
/// effect only before the first kernel runs; returns whether it did.
pub fn set_threads(threads: usize) -> bool {
    REQUESTED_THREADS.store(threads, Ordering::Relaxed);
    POOL.get().is_none_or(|pool| pool.threads() == threads.max(1))
}

/// The default thread count: the physical cores (a second hyper-thread on
/// a core adds no memory bandwidth, which is what decode is bound by).
pub fn default_threads() -> usize {
    num_cpus::get_physical().max(1)
}

/// The process-wide pool, started on first use.
pub fn global() -> &'static ThreadPool {
    POOL.get_or_init(|| {
        let requested = REQUESTED_THREADS.load(Ordering::Relaxed);
        ThreadPool::new(if requested == 0 { default_threads() } else { requested })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for tasks in [1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{tasks} tasks");
        }
    }

    #[test]
    fn regions_after_parking_still_run() {
        let pool = ThreadPool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 5);
        pool.run(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "task 5 fails"));
        }));
        assert!(result.is_err());
        let ran = AtomicUsize::new(0);
        pool.run(8, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn nested_regions_run_inline() {
        let pool = ThreadPool::new(2);
        let ran = AtomicUsize::new(0);
        pool.run(2, &|_| {
            pool.run(3, &|_| {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(ran.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn concurrent_callers_take_turns() {
        let pool = Arc::new(ThreadPool::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        pool.run(5, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for c in callers {
            c.join().expect("caller thread");
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 50 * 5);
    }
}
