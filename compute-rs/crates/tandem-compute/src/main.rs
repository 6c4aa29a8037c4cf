//! `tandem-compute`: the compute gRPC server. Every flag is also an
//! environment variable (see `--help` and docs/ARCHITECTURE.md).
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use tandem_compute::{Config, metrics::Metrics, serve};
use tandem_core::Limits;

#[derive(Debug, Parser)]
#[command(name = "tandem-compute", version, about = "Tandem compute service: runs CPU-bound transforms over gRPC.")]
struct Args {
    /// gRPC listen address.
    #[arg(long, env = "TANDEM_COMPUTE_LISTEN", default_value = "127.0.0.1:50052")]
    listen: SocketAddr,

    /// Prometheus metrics listen address (HTTP, GET /metrics); empty turns metrics off.
    #[arg(long, env = "TANDEM_COMPUTE_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    metrics_listen: String,

    /// CPU workers [default: number of cores].
    #[arg(long, env = "TANDEM_COMPUTE_WORKERS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    workers: Option<u32>,

    /// Requests that may wait for a worker before the server answers
    /// RESOURCE_EXHAUSTED [default: 4 × workers].
    #[arg(long, env = "TANDEM_COMPUTE_QUEUE_DEPTH")]
    queue_depth: Option<u32>,

    /// Largest request message accepted, after gRPC decompression.
    #[arg(long, env = "TANDEM_COMPUTE_MAX_REQUEST_BYTES", default_value_t = tandem_core::limits::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: u64,

    /// Serve the test-only debug.* ops.
    #[arg(long, env = "TANDEM_COMPUTE_ENABLE_DEBUG_OPS", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    enable_debug_ops: bool,

    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, env = "TANDEM_COMPUTE_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", args.log_level))?;
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // Panics inside ops are caught and answered INTERNAL; log them as JSON
    // too instead of the default hook's plain text.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));

    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as u32);
    let queue_depth = args.queue_depth.unwrap_or(4 * workers);
    let config = Config {
        limits: Limits { max_request_bytes: args.max_request_bytes, workers, queue_depth, ..Limits::default() },
        enable_debug_ops: args.enable_debug_ops,
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 4) as usize)
        // Blocking threads beyond the pool are only the batch helpers.
        .max_blocking_threads(workers as usize * 2 + 16)
        .enable_all()
        .build()?;
    runtime.block_on(run(args, config))
}

async fn run(args: Args, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new()?;
    let metrics_addr = if args.metrics_listen.trim().is_empty() {
        None
    } else {
        let addr: SocketAddr =
            args.metrics_listen.parse().map_err(|e| format!("--metrics-listen {:?}: {e}", args.metrics_listen))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics listen {addr}: {e}"))?;
        let local = listener.local_addr()?;
        tokio::spawn(tandem_compute::metrics::serve(listener, metrics.clone()));
        Some(local)
    };
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        listen = %addr,
        metrics_listen = %metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        workers = config.limits.workers,
        queue_depth = config.limits.queue_depth,
        max_request_bytes = config.limits.max_request_bytes,
        debug_ops = config.enable_debug_ops,
        version = env!("CARGO_PKG_VERSION"),
        "tandem-compute listening"
    );
    serve(config, listener, metrics, shutdown_signal()).await?;
    tracing::info!("tandem-compute stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(signal = "SIGINT", "signal received"),
        () = term => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}
