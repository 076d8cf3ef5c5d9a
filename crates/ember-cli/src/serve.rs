//! `ember serve`: the OpenAI-compatible server. Settings come from
//! `--config` (TOML), then flags; the port opens at once and `/health`
//! says 503 until the model is loaded. SIGINT/SIGTERM stop new requests
//! (503) and let streams in flight finish up to the shutdown timeout.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use ember_engine::{EngineHandle, LoadedModel, Pooling};
use ember_gateway::backend::build::{build_router, describe, wants_local};
use ember_gateway::backend::health::spawn_checks;
use ember_gateway::backend::local::LocalBackend;
use ember_gateway::{AppState, GatewayMetrics, ServeConfig};
use ember_model::rope::RopeScalingOverride;

use crate::attention_args::{AttentionArgs, AttentionChoice};
use crate::cpu_args::CpuArgs;
use crate::device::{DeviceChoice, DtypeChoice};
use crate::engine_args::EngineArgs;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration (docs/CONFIG.md); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// [default: 127.0.0.1]
    #[arg(long)]
    host: Option<String>,
    /// [default: 8080]
    #[arg(long)]
    port: Option<u16>,
    /// Hugging Face model directory or `.gguf` file [default: the default model].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The name clients send as `model` [default: the file or directory name].
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` (added to the config's keys).
    #[arg(long, env = "EMBER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// [default: flex]
    #[arg(long, value_enum)]
    device: Option<DeviceChoice>,
    /// [default: f32]
    #[arg(long, value_enum)]
    dtype: Option<DtypeChoice>,
    /// What the model does: `generate` text, or `embed` (answer
    /// /v1/embeddings with last-token pooling unless its files name
    /// another) [default: from the model's files].
    #[arg(long, value_enum)]
    task: Option<TaskChoice>,
    #[command(flatten)]
    cpu: CpuArgs,
    #[command(flatten)]
    attention: AttentionArgs,
    /// Replaces the model's RoPE scaling (vLLM's JSON spelling); the window
    /// becomes factor x original.
    #[arg(long, value_name = "JSON")]
    rope_scaling: Option<RopeScalingOverride>,
    #[command(flatten)]
    engine: EngineArgs,
    /// An OpenAI-compatible server to route to (repeatable): every model
    /// its `/v1/models` lists is served; servers listing the same model are
    /// its replicas. Without `--model`, no model is loaded here.
    #[arg(long, value_name = "URL")]
    upstream: Vec<String>,
    /// Responses API responses kept in memory for `previous_response_id`
    /// and `GET /v1/responses/{id}`; 0 stores none [default: 1024].
    #[arg(long, value_name = "N")]
    responses_store_size: Option<usize>,
    /// How long a stored response is kept, in seconds [default: 3600].
    #[arg(long, value_name = "SECS")]
    responses_store_ttl_secs: Option<u64>,
}

/// The config file with the flags laid over it, and the `--upstream` URLs.
fn settings(args: ServeArgs) -> Result<(ServeConfig, Vec<String>)> {
    let mut c = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let s = &mut c.server;
    s.host = args.host.unwrap_or(std::mem::take(&mut s.host));
    s.port = args.port.unwrap_or(s.port);
    s.api_keys.extend(args.api_key.filter(|k| !k.is_empty()));
    s.responses_store_size = args.responses_store_size.unwrap_or(s.responses_store_size);
    s.responses_store_ttl_secs = args.responses_store_ttl_secs.unwrap_or(s.responses_store_ttl_secs);
    let m = &mut c.model;
    m.path = args.model.or(m.path.take());
    m.served_model_name = args.served_model_name.or(m.served_model_name.take());
    if let Some(d) = args.device {
        m.device = d.to_possible_value().map(|v| v.get_name().to_owned());
    }
    if let Some(d) = args.dtype {
        m.dtype = d.to_possible_value().map(|v| v.get_name().to_owned());
    }
    if let Some(t) = args.task {
        m.task = t.to_possible_value().map(|v| v.get_name().to_owned());
    }
    m.threads = args.cpu.threads.or(m.threads);
    if let Some(d) = args.cpu.kv_cache_dtype {
        m.kv_cache_dtype = d.to_possible_value().map(|v| v.get_name().to_owned());
    }
    m.rope_scaling = args.rope_scaling.or(m.rope_scaling.take());
    if let Some(q) = args.cpu.quantize {
        m.quantize = q.to_possible_value().map(|v| v.get_name().to_owned());
    }
    let a = &mut c.attention;
    if let Some(mode) = args.attention.attention {
        a.mode = mode.to_possible_value().map(|v| v.get_name().to_owned());
    }
    a.block = args.attention.sparse_block.or(a.block);
    a.local = args.attention.sparse_local.or(a.local);
    a.sinks = args.attention.sparse_sinks.or(a.sinks);
    a.stride = args.attention.sparse_stride.or(a.stride);
    a.dense_below = args.attention.sparse_dense_below.or(a.dense_below);
    if args.attention.keep_markers {
        a.keep_markers = Some(true);
    }
    args.engine.overlay(&mut c.engine);
    Ok((c, args.upstream))
}

fn parse_choice<T: ValueEnum>(value: Option<&str>, what: &str) -> Result<Option<T>> {
    value
        .map(|v| T::from_str(v, true).map_err(|_| anyhow::anyhow!("unknown {what} {v:?} in the config")))
        .transpose()
}

pub fn run(args: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (c, upstreams) = settings(args)?;
    let metrics = Arc::new(GatewayMetrics::new().context("setting up metrics")?);
    let s = &c.server;
    let local = match wants_local(&c, &upstreams) {
        true => Some(start_local(&c, metrics.clone())?),
        false => None,
    };
    let router = Arc::new(build_router(&c, &upstreams, local, Some(metrics.clone()))?);
    tracing::info!("routes: {}", describe(&router));
    let state = web::Data::new(AppState::with_router(router.clone(), s.limits(), s.api_keys.clone(), metrics));

    let (host, port, workers) = (s.host.clone(), s.port, s.workers);
    let shutdown = s.shutdown_timeout_secs;
    let auth = if s.api_keys.is_empty() { "open (no API keys)" } else { "API keys required" };
    actix_web::rt::System::new().block_on(async move {
        spawn_checks(&router);
        let app_state = state.clone();
        let mut server = HttpServer::new(move || App::new().configure(ember_gateway::configure(app_state.clone())))
            // A client that closes its sending side has hung up, as uvicorn
            // (and so vLLM) treats it: actix's default keeps a half-closed
            // connection's handler running, so a queued or non-streamed
            // request would still be prefilled and generated for nobody.
            .h1_allow_half_closed(false)
            .shutdown_timeout(shutdown)
            .disable_signals()
            // HTTP/1.1, and h2c for clients (such as another Ember) that speak it.
            .bind_auto_h2c((host.as_str(), port))
            .with_context(|| format!("cannot listen on {host}:{port}"))?;
        if workers > 0 {
            server = server.workers(workers);
        }
        tracing::info!("listening on http://{host}:{port} ({auth})");
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no new requests, finishing streams (up to {shutdown} s)");
            state.begin_shutdown();
            handle.stop(true).await;
        });
        server.await.context("server error")
    })
}

/// The model of `[model]` (the default model when none is named), loaded
/// in the background so the port answers `/health` (503) meanwhile.
fn start_local(c: &ServeConfig, metrics: Arc<GatewayMetrics>) -> Result<Arc<LocalBackend>> {
    let model_path = match &c.model.path {
        Some(p) => p.clone(),
        None => crate::model_args::default_model()?,
    };
    if !model_path.exists() {
        bail!("{}: no such model file or directory", model_path.display());
    }
    let device: DeviceChoice = parse_choice(c.model.device.as_deref(), "device")?.unwrap_or(DeviceChoice::Flex);
    let dtype: DtypeChoice = parse_choice(c.model.dtype.as_deref(), "dtype")?.unwrap_or(DtypeChoice::F32);
    let task: Option<TaskChoice> = parse_choice(c.model.task.as_deref(), "task")?;
    let mut load_options = CpuArgs {
        threads: c.model.threads,
        kv_cache_dtype: parse_choice(c.model.kv_cache_dtype.as_deref(), "kv_cache_dtype")?,
        quantize: parse_choice(c.model.quantize.as_deref(), "quantize")?,
    }
    .apply()?;
    let a = &c.attention;
    let attention = AttentionArgs {
        attention: parse_choice::<AttentionChoice>(a.mode.as_deref(), "attention mode")?,
        sparse_block: a.block,
        sparse_local: a.local,
        sparse_sinks: a.sinks,
        sparse_stride: a.stride,
        sparse_dense_below: a.dense_below,
        keep_markers: a.keep_markers.unwrap_or(false),
    };
    load_options.sparse = attention.layout()?;
    let markers = attention.markers()?;
    load_options.rope_scaling = c.model.rope_scaling.clone();
    let served = c.model.served_model_name.clone().unwrap_or_else(|| default_served_name(&model_path));
    let engine_config = c.engine.engine_config(Some(metrics))?;
    let local = Arc::new(LocalBackend::new("local", served.clone(), c.server.max_messages));

    let loading = local.clone();
    let device = device.device()?;
    std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let loaded = LoadedModel::open_with(&model_path, &device, dtype.dtype(), load_options)
            .with_context(|| format!("loading model from {}", model_path.display()))
            .and_then(|mut loaded| {
                loaded.info.markers = markers;
                loaded.info.pooling = match task {
                    None => loaded.info.pooling,
                    Some(TaskChoice::Generate) => None,
                    Some(TaskChoice::Embed) => loaded.info.pooling.or(Some(Pooling::Last)),
                };
                Ok(EngineHandle::start(loaded, engine_config)?)
            });
        match loaded {
            Ok(engine) => {
                tracing::info!("{}", engine.info());
                tracing::info!(model = %served, secs = started.elapsed().as_secs_f64(), "model loaded; ready");
                loading.set_engine(engine.clone());
                // The grammar compiler (token trie, about a second on a
                // 150K vocabulary) is built now rather than on the first
                // tool call or JSON-schema request.
                let started = std::time::Instant::now();
                match engine.model().grammar_compiler() {
                    Ok(_) => tracing::info!(secs = started.elapsed().as_secs_f64(), "constrained decoding ready"),
                    Err(e) => tracing::warn!("constrained decoding unavailable: {e}"),
                }
            }
            Err(e) => {
                tracing::error!("{e:#}");
                std::process::exit(1);
            }
        }
    });
    Ok(local)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TaskChoice {
    Generate,
    Embed,
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                first_of(actix_web::rt::signal::ctrl_c(), term.recv()).await;
            }
            Err(_) => {
                let _ = actix_web::rt::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_web::rt::signal::ctrl_c().await;
    }
}

/// Whichever of two futures finishes first.
async fn first_of<A: std::future::Future, B: std::future::Future>(a: A, b: B) {
    futures_util::future::select(std::pin::pin!(a), std::pin::pin!(b)).await;
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct.Q4_1`; a
/// directory keeps its name.
fn default_served_name(path: &std::path::Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ember".into())
}
