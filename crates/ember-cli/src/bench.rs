//! `ember bench`: offered load against the engine. At each concurrency `c`,
//! `c` clients submit fixed-length requests back to back (a closed loop)
//! until the level's request count is done; we time each stream from the
//! client's side and print requests/s, output tokens/s, TTFT and
//! inter-token latency percentiles, and peak memory per level: a table,
//! then the same as one JSON object on the last stdout line. With
//! `--json-schema`, each level also runs constrained to that schema, beside
//! the free run, with the per-token grammar-mask time.

use std::sync::{Arc, Mutex, PoisonError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ember_engine::{
    EngineConfig, EngineHandle, EngineObserver, FinishReason, GenerationEvent, GenerationRequest, Grammar,
    LogitsProcessorFactory, SamplingParams,
};
use serde::Serialize;

use crate::bench_engine::{self, EngineBench};
use crate::engine_args::EngineArgs;
use crate::model_args::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Concurrency levels, run in order.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Prompt tokens per request.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Output tokens per request (end-of-sequence ids are ignored).
    #[arg(long, default_value_t = 64)]
    output_len: usize,
    /// Requests per level [default: twice the concurrency, at least 8].
    #[arg(long)]
    requests: Option<usize>,
    /// A JSON Schema file: every level also runs constrained to it.
    #[arg(long)]
    json_schema: Option<std::path::PathBuf>,
    /// Measure the model alone, as llama.cpp's llama-bench does: prefill
    /// (`pp`) and decode (`tg`) forward passes of one sequence, no
    /// scheduler or sampler. The flags below apply to this mode only.
    #[arg(long)]
    engine_only: bool,
    /// Engine-only: prompt tokens of the prefill test (0 skips it).
    #[arg(long, default_value_t = 512)]
    n_prompt: usize,
    /// Engine-only: tokens of the decode test (0 skips it).
    #[arg(long, default_value_t = 128)]
    n_gen: usize,
    /// Engine-only: tokens already cached before each test.
    #[arg(long, value_delimiter = ',', default_value = "0,512")]
    depth: Vec<usize>,
    /// Engine-only: timed runs per test (after one warm-up).
    #[arg(long, default_value_t = 5)]
    repetitions: usize,
}

/// One request as the client saw it.
struct Timing {
    ttft: Duration,
    gaps: Vec<Duration>,
    tokens: usize,
}

#[derive(Debug, Serialize)]
struct Level {
    concurrency: usize,
    /// Run under the `--json-schema` grammar.
    constrained: bool,
    requests: usize,
    duration_s: f64,
    requests_per_s: f64,
    output_tokens_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p99_ms: f64,
    itl_p50_ms: f64,
    itl_p99_ms: f64,
    peak_rss_mib: Option<f64>,
    mean_batch_size: f64,
    preemptions: u64,
    /// Time to compute one sequence's next-token mask (constrained runs).
    mask_p50_us: Option<f64>,
    mask_p99_us: Option<f64>,
}

/// Collects grammar-mask times from the engine.
#[derive(Default)]
struct MaskTimes(Mutex<Vec<Duration>>);

impl EngineObserver for MaskTimes {
    fn on_grammar_mask(&self, elapsed: Duration) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(elapsed);
    }
}

impl MaskTimes {
    fn take_us(&self) -> Vec<f64> {
        let mut times = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        times.drain(..).map(|d| d.as_secs_f64() * 1e6).collect()
    }
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    device: String,
    prompt_len: usize,
    output_len: usize,
    levels: Vec<Level>,
    /// Output tokens/s at concurrency 16 over concurrency 1, when both ran.
    throughput_ratio_16_to_1: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.prompt_len == 0 || args.output_len == 0 || args.concurrency.contains(&0) {
        bail!("--prompt-len, --output-len and every --concurrency must be positive");
    }
    let loaded = args.model.load()?;
    let model_name = loaded.info.path.display().to_string();
    if args.engine_only {
        let tests = EngineBench {
            n_prompt: args.n_prompt,
            n_gen: args.n_gen,
            depths: args.depth.clone(),
            repetitions: args.repetitions,
        };
        return bench_engine::run(loaded, model_name, &tests);
    }
    let masks = Arc::new(MaskTimes::default());
    let config = EngineConfig {
        observer: Some(masks.clone()),
        ..args.engine.config()?
    };
    let engine = EngineHandle::start(loaded, config)?;
    eprintln!("{}", engine.info());
    let vocab = engine.model().config.vocab_size as u64;
    let grammar = match &args.json_schema {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let schema = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
            let started = Instant::now();
            let compiler = engine.model().grammar_compiler()?;
            eprintln!("token trie and parser factory: {:.2} s", started.elapsed().as_secs_f64());
            let started = Instant::now();
            let compiled = compiler.compile(&Grammar::JsonSchema(schema))?;
            eprintln!("schema compiled in {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
            Some(compiled.into_factory())
        }
        None => None,
    };

    // One short request first: the first forward pays one-time costs.
    engine
        .submit(request(0, 8.min(args.prompt_len), 2, vocab, None))?
        .collect_blocking();

    let mut levels = Vec::new();
    let mut next_prompt = 1;
    for &c in &args.concurrency {
        let count = args.requests.unwrap_or((2 * c).max(8));
        // Free and constrained side by side, each on fresh prompts (the same
        // prompts twice would hit the prefix cache the second time).
        for constraint in std::iter::once(None).chain(grammar.clone().map(Some)) {
            let constrained = constraint.is_some();
            reset_peak_rss();
            masks.take_us();
            let before = engine.stats();
            let started = Instant::now();
            let timings = run_level(&engine, c, count, next_prompt, &args, vocab, constraint)?;
            let duration = started.elapsed().as_secs_f64();
            let after = engine.stats();
            let mut ttft: Vec<f64> = timings.iter().map(|t| ms(t.ttft)).collect();
            let mut itl: Vec<f64> = timings.iter().flat_map(|t| t.gaps.iter().map(|&g| ms(g))).collect();
            let mut mask = masks.take_us();
            let tokens: usize = timings.iter().map(|t| t.tokens).sum();
            let steps = (after.steps - before.steps).max(1);
            let level = Level {
                concurrency: c,
                constrained,
                requests: count,
                duration_s: duration,
                requests_per_s: count as f64 / duration,
                output_tokens_per_s: tokens as f64 / duration,
                ttft_p50_ms: percentile(&mut ttft, 50.0),
                ttft_p99_ms: percentile(&mut ttft, 99.0),
                itl_p50_ms: percentile(&mut itl, 50.0),
                itl_p99_ms: percentile(&mut itl, 99.0),
                peak_rss_mib: peak_rss_mib(),
                // Every sampled token is one sequence-step of a batch.
                mean_batch_size: (after.generated_tokens - before.generated_tokens) as f64 / steps as f64,
                preemptions: after.preemptions - before.preemptions,
                mask_p50_us: constrained.then(|| percentile(&mut mask, 50.0)),
                mask_p99_us: constrained.then(|| percentile(&mut mask, 99.0)),
            };
            eprintln!(
                "concurrency {c}{}: {:.2} req/s, {:.1} tok/s",
                if constrained { " (schema)" } else { "" },
                level.requests_per_s,
                level.output_tokens_per_s
            );
            levels.push(level);
            next_prompt += count;
        }
    }
    let throughput = |c: usize| {
        levels
            .iter()
            .find(|l| l.concurrency == c && !l.constrained)
            .map(|l| l.output_tokens_per_s)
    };
    let report = Report {
        model: model_name,
        device: format!("{:?}", args.model.device),
        prompt_len: args.prompt_len,
        output_len: args.output_len,
        throughput_ratio_16_to_1: throughput(16).zip(throughput(1)).map(|(a, b)| a / b),
        levels,
    };
    print_table(&report);
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `concurrency` clients take request numbers from a shared counter until
/// `count` are done.
fn run_level(
    engine: &EngineHandle,
    concurrency: usize,
    count: usize,
    first_prompt: usize,
    args: &BenchArgs,
    vocab: u64,
    constraint: Option<Arc<dyn LogitsProcessorFactory>>,
) -> Result<Vec<Timing>> {
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (engine, next, constraint) = (engine.clone(), next.clone(), constraint.clone());
            let (prompt_len, output_len) = (args.prompt_len, args.output_len);
            std::thread::spawn(move || -> Result<Vec<Timing>> {
                let mut timings = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok(timings);
                    }
                    let req = request(first_prompt + i, prompt_len, output_len, vocab, constraint.clone());
                    timings.push(time_request(&engine, req)?);
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for client in clients {
        let timings = client.join().map_err(|_| anyhow::anyhow!("a bench client panicked"))??;
        all.extend(timings);
    }
    Ok(all)
}

fn time_request(engine: &EngineHandle, request: GenerationRequest) -> Result<Timing> {
    let submitted = Instant::now();
    let mut stream = engine.submit(request)?;
    let mut last = None;
    let mut timing = Timing {
        ttft: Duration::ZERO,
        gaps: Vec::new(),
        tokens: 0,
    };
    while let Some(event) = stream.blocking_next() {
        match event {
            GenerationEvent::Delta { token_ids, .. } => {
                let now = Instant::now();
                match last {
                    None => timing.ttft = now - submitted,
                    Some(prev) => timing.gaps.push(now - prev),
                }
                last = Some(now);
                timing.tokens += token_ids.len();
            }
            GenerationEvent::Finished {
                reason: FinishReason::Error(message),
                ..
            } => bail!("a bench request failed: {message}"),
            GenerationEvent::Finished { .. } => {}
            GenerationEvent::Embedding { .. } => {}
            GenerationEvent::Done { .. } => break,
        }
    }
    Ok(timing)
}

/// A greedy request with its own pseudo-random prompt, so requests do not
/// share cached prefixes. A constrained one stops when its grammar is done.
fn request(
    number: usize,
    prompt_len: usize,
    output_len: usize,
    vocab: u64,
    constraint: Option<Arc<dyn LogitsProcessorFactory>>,
) -> GenerationRequest {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (number as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let prompt = (0..prompt_len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % vocab) as u32
        })
        .collect();
    GenerationRequest {
        max_tokens: Some(output_len),
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        logits_processor: constraint,
        ..GenerationRequest::new(prompt)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile; 0 for no samples.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Resets the kernel's peak-RSS mark (VmHWM) so each level reports its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn print_table(report: &Report) {
    println!(
        "model {} on {} | prompt {} tokens, output {} tokens",
        report.model, report.device, report.prompt_len, report.output_len
    );
    println!(
        "{:>5} {:>6} {:>5} {:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>6} {:>8} {:>19}",
        "conc", "schema", "reqs", "req/s", "out tok/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "peak MiB", "batch",
        "preempt", "mask p50/p99"
    );
    for l in &report.levels {
        println!(
            "{:>5} {:>6} {:>5} {:>8.2} {:>9.1} {:>8.0}ms {:>8.0}ms {:>7.1}ms {:>7.1}ms {:>9} {:>6.1} {:>8} {:>19}",
            l.concurrency,
            if l.constrained { "yes" } else { "no" },
            l.requests,
            l.requests_per_s,
            l.output_tokens_per_s,
            l.ttft_p50_ms,
            l.ttft_p99_ms,
            l.itl_p50_ms,
            l.itl_p99_ms,
            l.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
            l.mean_batch_size,
            l.preemptions,
            l.mask_p50_us
                .zip(l.mask_p99_us)
                .map_or("-".into(), |(a, b)| format!("{a:.0}/{b:.0} us")),
        );
    }
    if let Some(r) = report.throughput_ratio_16_to_1 {
        println!("throughput at 16 concurrent streams / 1 stream: {r:.2}x");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut [3.0], 99.0), 3.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn bench_prompts_differ_and_stay_in_the_vocabulary() {
        let a = request(1, 64, 4, 100, None).prompt;
        let b = request(2, 64, 4, 100, None).prompt;
        assert_ne!(a, b);
        assert!(a.iter().chain(&b).all(|&t| t < 100));
    }
}
