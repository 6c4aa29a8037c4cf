//! The process around the server: flags (each also an environment
//! variable), JSON logs, the runtime, the listeners, signals. The
//! `tandem-compute` binary is `tandem_compute::run(Flags::parse(), [])`; a
//! team's own compute binary passes its ops instead of `[]`.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_core::Op;

use crate::metrics::Metrics;
use crate::server::{CUT_OFF_GRACE, Config, serve};
use crate::telemetry::Telemetry;

/// How long shutdown waits for the last spans to be exported.
const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags of every compute binary; `--help` lists them with their
/// environment variables and defaults (docs/ARCHITECTURE.md has the table).
///
/// A binary with flags of its own puts these in its clap parser with
/// `#[command(flatten)] tandem: tandem_compute::Flags`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tandem-compute",
    version,
    about = "Tandem compute service: runs CPU-bound transforms over gRPC.",
    long_about = None
)]
pub struct Flags {
    /// gRPC listen address.
    #[arg(long, env = "TANDEM_COMPUTE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// Prometheus metrics listen address (HTTP, GET /metrics); empty turns metrics off.
    #[arg(long, env = "TANDEM_COMPUTE_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    pub metrics_listen: String,

    /// CPU workers [default: number of cores].
    #[arg(long, env = "TANDEM_COMPUTE_WORKERS", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub workers: Option<u32>,

    /// Requests that may wait for a worker before the server answers
    /// RESOURCE_EXHAUSTED [default: 4 × workers].
    #[arg(long, env = "TANDEM_COMPUTE_QUEUE_DEPTH")]
    pub queue_depth: Option<u32>,

    /// Largest request message accepted, after gRPC decompression.
    #[arg(long, env = "TANDEM_COMPUTE_MAX_REQUEST_BYTES", default_value_t = tandem_core::limits::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: u64,

    /// Serve the test-only debug.* ops.
    #[arg(long, env = "TANDEM_COMPUTE_ENABLE_DEBUG_OPS", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_debug_ops: bool,

    /// On SIGTERM/SIGINT, how long calls in flight may run on (e.g. 10s, 500ms, 1m30s); then they are cut off
    /// (answered UNAVAILABLE / SHUTTING_DOWN) and the process exits 0 even if clients hold connections open.
    #[arg(long, env = "TANDEM_COMPUTE_DRAIN_TIMEOUT", default_value = "10s", value_parser = crate::duration::parse)]
    pub drain_timeout: Duration,

    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, env = "TANDEM_COMPUTE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Flags {
    /// The flags from the command line and the environment; prints usage
    /// and exits on a bad one (clap's `Parser::parse`, here so a binary
    /// needs no clap import).
    pub fn parse() -> Flags {
        <Flags as clap::Parser>::parse()
    }

    /// The server config these flags ask for (built-in ops only; see
    /// [`Config::ops`]).
    pub fn config(&self) -> Config {
        let workers =
            self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as u32);
        let queue_depth = self.queue_depth.unwrap_or(4 * workers);
        let mut config = Config::with_defaults();
        config.limits.max_request_bytes = self.max_request_bytes;
        config.limits.workers = workers;
        config.limits.queue_depth = queue_depth;
        config.enable_debug_ops = self.enable_debug_ops;
        config.drain_timeout = self.drain_timeout;
        config
    }
}

/// Runs a compute process until SIGTERM or SIGINT: JSON logs on stderr,
/// Prometheus metrics, OpenTelemetry spans exported over OTLP when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set ([`crate::telemetry`]), gRPC serving
/// the built-in ops plus `ops`, and the bounded drain ([`serve`]), after
/// which the spans still buffered are exported. Returns an error (and serves nothing) when
/// an op of `ops` is defined wrongly or a listen address cannot be bound;
/// `Ok` after a shutdown, drained or cut off.
///
/// ```no_run
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     tandem_compute::run(tandem_compute::Flags::parse(), [/* your tandem_core::Op values */])
/// }
/// ```
pub fn run(flags: Flags, ops: impl IntoIterator<Item = Op>) -> Result<(), Box<dyn std::error::Error>> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(&flags.log_level)
        .map_err(|e| format!("--log-level {:?}: {e}", flags.log_level))?;
    // OpenTelemetry's own logs (export failures are errors) at warn and
    // above, unless the filter names them.
    if !flags.log_level.contains("opentelemetry")
        && let Ok(d) = "opentelemetry=warn".parse()
    {
        filter = filter.add_directive(d);
    }
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| format!("logging: {e}"))?;
    // Panics inside ops are caught and answered INTERNAL; log them as JSON
    // too instead of the default hook's plain text.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(error = %info, "panic");
    }));

    let config = Config { ops: ops.into_iter().collect(), ..flags.config() };
    // Refuse a wrongly defined op before listening.
    config.registry().map_err(|e| e.to_string())?;
    let workers = config.limits.workers;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.clamp(1, 4) as usize)
        // Blocking threads beyond the pool are only the batch helpers.
        .max_blocking_threads(workers as usize * 2 + 16)
        .enable_all()
        .build()?;
    // The exporter's gRPC channel runs on this runtime.
    let telemetry = {
        let _in_runtime = runtime.enter();
        Telemetry::init()?
    };
    let result = runtime.block_on(serve_process(flags, config, telemetry.exporting()));
    // The runtime still runs: the last spans (the drain's too) go out.
    telemetry.shutdown(SPAN_FLUSH_TIMEOUT);
    // An op that was cut off and never reaches a checkpoint keeps its
    // thread: do not wait for it past the grace.
    runtime.shutdown_timeout(CUT_OFF_GRACE);
    result
}

async fn serve_process(flags: Flags, config: Config, exporting: bool) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything listens: SIGTERM is a drain from the first moment on.
    let shutdown = shutdown_signal().map_err(|e| format!("cannot listen for SIGINT/SIGTERM: {e}"))?;
    let metrics = Metrics::new()?;
    let metrics_addr = if flags.metrics_listen.trim().is_empty() {
        None
    } else {
        let addr: SocketAddr =
            flags.metrics_listen.parse().map_err(|e| format!("--metrics-listen {:?}: {e}", flags.metrics_listen))?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics listen {addr}: {e}"))?;
        let local = listener.local_addr()?;
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
        Some(local)
    };
    let listener =
        tokio::net::TcpListener::bind(flags.listen).await.map_err(|e| format!("listen {}: {e}", flags.listen))?;
    let addr = listener.local_addr()?;
    let extra_ops: Vec<&str> = config.ops.iter().map(|op| op.name).collect();
    tracing::info!(
        listen = %addr,
        metrics_listen = %metrics_addr.map(|a| a.to_string()).unwrap_or_default(),
        workers = config.limits.workers,
        queue_depth = config.limits.queue_depth,
        max_request_bytes = config.limits.max_request_bytes,
        debug_ops = config.enable_debug_ops,
        drain_timeout = %crate::duration::format(config.drain_timeout),
        extra_ops = %extra_ops.join(","),
        tracing = if exporting { "otlp" } else { "off" },
        version = env!("CARGO_PKG_VERSION"),
        "tandem-compute listening"
    );
    serve(config, listener, metrics, shutdown).await?;
    tracing::info!("tandem-compute stopped");
    Ok(())
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed
/// here, at once, not when the future is first polled: a signal that
/// arrives any time after this call (e.g. right after the first call was
/// served) starts the drain instead of killing the process.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        }
    })
}

/// A future that resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    Ok(async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!(signal = "SIGINT", "signal received"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    })
}
