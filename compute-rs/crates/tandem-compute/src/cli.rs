//! The process around the server: flags (each also an environment
//! variable), JSON logs, the runtime, the listeners, signals. The
//! `tandem-compute` binary is `tandem_compute::run(Flags::parse(), [])`; a
//! team's own compute binary passes its ops instead of `[]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_core::Op;

use crate::metrics::Metrics;
use crate::server::{CUT_OFF_GRACE, Config, serve};
use crate::telemetry::Telemetry;
use crate::tls::TlsFiles;

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
    long_about = None,
    after_help = SECURITY_HELP
)]
pub struct Flags {
    /// gRPC listen address (IP:port; localhost:PORT is 127.0.0.1:PORT).
    #[arg(long, env = "TANDEM_COMPUTE_LISTEN", default_value = "127.0.0.1:50052", value_parser = listen_addr)]
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

    /// TLS on the gRPC port: the server certificate chain (PEM, leaf first); needs --tls-key.
    /// Re-read when the file changes (new connections get the new certificate).
    #[arg(long, env = "TANDEM_COMPUTE_TLS_CERT", value_name = "FILE", value_parser = path)]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1). Re-read when the file changes.
    #[arg(long, env = "TANDEM_COMPUTE_TLS_KEY", value_name = "FILE", value_parser = path)]
    pub tls_key: Option<PathBuf>,

    /// mTLS: CA certificates (PEM bundle) that client certificates must chain to; a client without
    /// one, or with another CA's, fails the TLS handshake. Needs --tls-cert. Re-read when the file changes.
    #[arg(long, env = "TANDEM_COMPUTE_TLS_CLIENT_CA", value_name = "FILE", value_parser = path)]
    pub tls_client_ca: Option<PathBuf>,

    /// Accepted bearer tokens, one a line (blank lines and # comments ignored): every ComputeService
    /// call then needs metadata "authorization: Bearer <token>" (health and reflection stay open).
    /// Re-read when the file changes.
    #[arg(long, env = "TANDEM_COMPUTE_TOKEN_FILE", value_name = "FILE", value_parser = path)]
    pub token_file: Option<PathBuf>,

    /// Allow a non-loopback --listen without TLS and client authentication (logs a warning).
    #[arg(long, env = "TANDEM_COMPUTE_INSECURE", default_value_t = false,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
}

/// `--listen`: an IP address and port, or `localhost:PORT` (127.0.0.1).
fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port.parse().map_err(|e| format!("{s:?}: port: {e}"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|e| format!("{s:?}: {e} (want IP:port, e.g. 127.0.0.1:50052 or [::1]:50052)"))
}

/// A file flag; empty (e.g. `TANDEM_COMPUTE_TLS_CERT=` in a compose file)
/// is the same as not set.
fn path(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

/// `Some` only for a non-empty path.
fn given(p: &Option<PathBuf>) -> Option<&PathBuf> {
    p.as_ref().filter(|p| !p.as_os_str().is_empty())
}

/// The security paragraph of `--help`.
const SECURITY_HELP: &str = "\
Security: a --listen address outside loopback (127.0.0.0/8, ::1) needs TLS (--tls-cert and --tls-key) and \
client authentication (--tls-client-ca or --token-file, or both); without them the server refuses to start \
unless --insecure is given. Certificate, key, CA and token files are re-read within about a second of a change; \
a file that no longer loads keeps the previous one (and logs an error).";

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
        config.tls = match (given(&self.tls_cert), given(&self.tls_key)) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: given(&self.tls_client_ca).cloned() })
            }
            _ => None,
        };
        config.token_file = given(&self.token_file).cloned();
        config
    }

    /// Whether these flags may serve: the TLS flags come in pairs, and a
    /// non-loopback [`Flags::listen`] needs TLS and client authentication
    /// (a client CA or a token file) unless [`Flags::insecure`]. `Ok` holds
    /// the warning to log when `--insecure` let a missing one pass.
    pub fn check_security(&self) -> Result<Option<String>, String> {
        let (cert, key, client_ca, token_file) =
            (given(&self.tls_cert), given(&self.tls_key), given(&self.tls_client_ca), given(&self.token_file));
        match (cert, key) {
            (Some(_), None) => return Err("--tls-cert needs --tls-key".to_owned()),
            (None, Some(_)) => return Err("--tls-key needs --tls-cert".to_owned()),
            _ => {}
        }
        if client_ca.is_some() && cert.is_none() {
            return Err("--tls-client-ca (mTLS) needs --tls-cert and --tls-key".to_owned());
        }
        let mut missing = Vec::new();
        if cert.is_none() {
            missing.push("TLS (--tls-cert and --tls-key)");
        }
        if client_ca.is_none() && token_file.is_none() {
            missing.push("client authentication (--tls-client-ca or --token-file)");
        }
        let ip = self.listen.ip().to_canonical();
        if ip.is_loopback() || missing.is_empty() {
            return Ok(None);
        }
        let missing = missing.join(" and ");
        if self.insecure {
            Ok(Some(format!(
                "INSECURE: --listen {} is not loopback and has no {missing}: anyone who can reach it can run ops \
                 (--insecure given)",
                self.listen
            )))
        } else {
            Err(format!(
                "refusing to serve: --listen {} is not loopback and has no {missing}; set them, listen on loopback, \
                 or pass --insecure to accept the risk",
                self.listen
            ))
        }
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

    let insecure_warning = match flags.check_security() {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "not starting");
            return Err(e.into());
        }
    };
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
    let result = runtime.block_on(serve_process(flags, config, telemetry.exporting(), insecure_warning));
    // The runtime still runs: the last spans (the drain's too) go out.
    telemetry.shutdown(SPAN_FLUSH_TIMEOUT);
    // An op that was cut off and never reaches a checkpoint keeps its
    // thread: do not wait for it past the grace.
    runtime.shutdown_timeout(CUT_OFF_GRACE);
    result
}

async fn serve_process(
    flags: Flags,
    config: Config,
    exporting: bool,
    insecure_warning: Option<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Unusable TLS or token files stop the start before anything listens.
    let cert_sha256 = match &config.tls {
        Some(files) => files.check()?,
        None => String::new(),
    };
    let tokens = match &config.token_file {
        Some(path) => crate::auth::Tokens::from_file(path)?.len(),
        None => 0,
    };
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
        tls = match &config.tls {
            None => "off",
            Some(TlsFiles { client_ca: None, .. }) => "on",
            Some(_) => "mtls",
        },
        cert_sha256 = %cert_sha256,
        token_auth = config.token_file.is_some(),
        tokens,
        version = env!("CARGO_PKG_VERSION"),
        "tandem-compute listening"
    );
    if let Some(w) = insecure_warning {
        tracing::warn!(listen = %addr, "{w}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        <Flags as clap::Parser>::try_parse_from(std::iter::once("tandem-compute").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn loopback_needs_nothing_and_public_needs_tls_and_client_auth() {
        for listen in ["127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "[::ffff:127.0.0.1]:1", "localhost:1"] {
            assert_eq!(flags(&["--listen", listen]).check_security(), Ok(None), "{listen}");
        }
        assert_eq!(flags(&["--listen", "localhost:7"]).listen, "127.0.0.1:7".parse().unwrap());
        let tls = ["--tls-cert", "c.pem", "--tls-key", "k.pem"];
        for listen in ["0.0.0.0:1", "[::]:1", "10.1.2.3:1", "[::ffff:10.0.0.1]:1"] {
            let with = |extra: &[&str]| flags(&[&["--listen", listen], extra].concat()).check_security();
            let e = with(&[]).unwrap_err();
            assert!(e.contains("has no TLS (--tls-cert and --tls-key) and client authentication"), "{e}");
            let e = with(&tls).unwrap_err();
            assert!(e.contains("has no client authentication (--tls-client-ca or --token-file);"), "{e}");
            let e = with(&["--token-file", "t"]).unwrap_err();
            assert!(e.contains("has no TLS (--tls-cert and --tls-key);"), "{e}");
            assert_eq!(with(&[&tls[..], &["--token-file", "t"]].concat()), Ok(None));
            assert_eq!(with(&[&tls[..], &["--tls-client-ca", "ca.pem"]].concat()), Ok(None));
            let w = with(&["--insecure"]).unwrap().unwrap();
            assert!(w.starts_with(&format!("INSECURE: --listen {listen} is not loopback and has no TLS")), "{w}");
            let w = with(&[&tls[..], &["--insecure"]].concat()).unwrap().unwrap();
            assert!(w.contains("has no client authentication"), "{w}");
            assert_eq!(with(&[&tls[..], &["--token-file", "t", "--insecure"]].concat()), Ok(None));
        }
        let e = |args: &[&str]| flags(args).check_security().unwrap_err();
        assert_eq!(e(&["--tls-cert", "c"]), "--tls-cert needs --tls-key");
        assert_eq!(e(&["--tls-key", "k"]), "--tls-key needs --tls-cert");
        assert_eq!(e(&["--tls-client-ca", "ca"]), "--tls-client-ca (mTLS) needs --tls-cert and --tls-key");
        // Empty (an unset compose variable) is not set.
        let f = flags(&["--tls-cert", "", "--tls-key", "", "--token-file", ""]);
        assert_eq!(f.check_security(), Ok(None));
        assert_eq!((f.config().tls, f.config().token_file), (None, None));
        let f = flags(&[&tls[..], &["--tls-client-ca", "ca.pem"]].concat());
        let want = TlsFiles { cert: "c.pem".into(), key: "k.pem".into(), client_ca: Some("ca.pem".into()) };
        assert_eq!(f.config().tls, Some(want));
        let bad = <Flags as clap::Parser>::try_parse_from(["tandem-compute", "--listen", "localhost"]).unwrap_err();
        assert!(bad.to_string().contains("want IP:port"), "{bad}");
    }
}
