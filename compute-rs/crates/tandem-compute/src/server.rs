//! Building and running the gRPC server: ComputeService with gzip/zstd
//! request decompression bounded by max_request_bytes, health, reflection,
//! graceful shutdown with a bounded drain.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tandem_core::{DefinitionError, Error, Limits, Op, Registry};
use tandem_proto::v1::compute_service_server::{self, ComputeServiceServer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;

use crate::auth::AuthGate;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::service::ComputeSvc;
use crate::status;
use crate::tls::TlsFiles;

/// How long shutdown waits for calls in flight by default (`--drain-timeout`).
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// After the drain timeout: how long the calls cut off get to have their
/// SHUTTING_DOWN answers written (and the ops they ran to reach a
/// cancellation checkpoint) before the process exits anyway.
pub const CUT_OFF_GRACE: Duration = Duration::from_secs(1);

/// The most metadata (HTTP/2 headers) one call may carry, 16 KiB (hyper's
/// default, set here so it is a stated limit): a call over it is refused by
/// HTTP/2 itself (HTTP 431, or GOAWAY for a flood of CONTINUATION frames),
/// before any service sees it.
pub const MAX_METADATA_BYTES: u32 = 16 * 1024;

/// Everything the server needs besides its sockets.
#[derive(Debug, Clone)]
pub struct Config {
    /// Limits; `workers` and `queue_depth` size the CPU pool.
    pub limits: Limits,
    /// Serve the test-only `debug.*` ops (and any op marked
    /// [`Op::debug_only`]).
    pub enable_debug_ops: bool,
    /// On shutdown, how long calls in flight may run on. Past it they are
    /// cut off (cancelled, answered UNAVAILABLE / `SHUTTING_DOWN`, which
    /// callers retry), and [`serve`] returns even if clients still hold
    /// connections open.
    pub drain_timeout: Duration,
    /// Ops served besides the built-in catalogue: a team's own
    /// (`tandem_core::registry` says how to declare one).
    pub ops: Vec<Op>,
    /// TLS (and mTLS) on the gRPC port, the files re-read when they change;
    /// `None` serves plaintext.
    pub tls: Option<TlsFiles>,
    /// A token file ([`crate::auth`]): every call but health and reflection
    /// needs one of its bearer tokens. `None` asks for no token.
    pub token_file: Option<PathBuf>,
}

impl Default for Config {
    /// Same as [`Config::with_defaults`].
    fn default() -> Self {
        Config::with_defaults()
    }
}

impl Config {
    /// Default limits with `workers` = number of cores and a queue of
    /// 4 × workers, no debug ops, a 10 s drain, the built-in ops only.
    pub fn with_defaults() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        Config {
            limits: Limits { workers, queue_depth: 4 * workers, ..Limits::default() },
            enable_debug_ops: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            ops: Vec::new(),
            tls: None,
            token_file: None,
        }
    }

    /// The registry this config serves: the built-in catalogue plus
    /// [`Config::ops`]; fails on the first op definition that
    /// [`Registry::with_op`] refuses.
    pub fn registry(&self) -> Result<Registry, DefinitionError> {
        let mut registry = Registry::new(self.limits.clone(), self.enable_debug_ops);
        for op in &self.ops {
            registry = registry.with_op(op.clone())?;
        }
        Ok(registry)
    }
}

/// Every gRPC service this server answers, and so exactly what reflection
/// lists.
pub const SERVICES: [&str; 4] = [
    compute_service_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// Why [`serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An op of [`Config::ops`] is defined wrongly.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// The reflection service could not be built (a bug).
    #[error("reflection descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A TLS or token file is missing or unusable (the message names the
    /// flag and the file).
    #[error("{0}")]
    Security(String),
}

/// Server reflection: lists [`SERVICES`] and nothing else (no JobService,
/// which only the orchestrator serves) and resolves every message they take
/// or return, including the `google.rpc.ErrorInfo` and `RetryInfo` details
/// of every error status (descriptors from tonic-types, the crate that
/// encodes them).
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        // Registered below, both versions, so each lists the other too.
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(tandem_proto::COMPUTE_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for name in SERVICES {
        b = b.with_service_name(name);
    }
    b
}

/// Serves gRPC on `listener` (over TLS with [`Config::tls`], asking for
/// bearer tokens with [`Config::token_file`]; both files re-read when they
/// change) until `shutdown` resolves, then drains: stops
/// accepting connections, turns health NOT_SERVING, lets the calls in flight
/// finish, and returns once every connection has closed, or once
/// [`Config::drain_timeout`] has passed (then it cuts off the calls still in
/// flight, logs how many, gives their answers [`CUT_OFF_GRACE`] to go out,
/// and returns `Ok` whatever clients still hold open).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let registry = config.registry()?;
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::watch(files, metrics.clone()).map_err(ServeError::Security)?),
        None => None,
    };
    let tokens = match &config.token_file {
        Some(path) => Some(crate::auth::watch(path, metrics.clone()).map_err(ServeError::Security)?),
        None => None,
    };
    let limits = config.limits.clone();
    let drain_timeout = config.drain_timeout;
    let pool = Pool::new(limits.workers as usize, limits.queue_depth as usize);
    let metrics_for_gate = metrics.clone();
    let svc = ComputeSvc::new(registry, pool, metrics);
    let max = usize::try_from(limits.max_request_bytes).unwrap_or(usize::MAX);
    let compute = ComputeServiceServer::new(svc)
        .max_decoding_message_size(max)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    // Responses are sent uncompressed: hashes are tiny and images already
    // compressed, and compute CPU is the scarce resource.

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ComputeServiceServer<ComputeSvc>>().await;
    let reflection = reflection_builder().build_v1().map_err(ServeError::Reflection)?;
    let reflection_alpha = reflection_builder().build_v1alpha().map_err(ServeError::Reflection)?;

    let health_for_shutdown = health.clone();
    let (stopping_tx, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        tracing::info!(
            drain_timeout = %crate::duration::format(drain_timeout),
            "shutting down: draining in-flight calls"
        );
        health_for_shutdown.set_not_serving::<ComputeServiceServer<ComputeSvc>>().await;
        health_for_shutdown.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let _ = stopping_tx.send(true);
    };
    let drain = Drain::new();

    // Requests being received and decoded hold memory before the pool can
    // admit them: bound them too (2 × the pool's own bound, + 4).
    let decoding = Arc::new(Semaphore::new(2 * (limits.workers as usize + limits.queue_depth as usize) + 4));
    let gate_metrics = metrics_for_gate;
    let gate_drain = drain.clone();
    let auth_metrics = gate_metrics.clone();
    let tls_metrics = gate_metrics.clone();
    let router = tonic::transport::Server::builder()
        .http2_max_header_list_size(MAX_METADATA_BYTES)
        // Outermost: a call without a valid token takes no decoding permit.
        .layer(tower::layer::layer_fn(move |inner| AuthGate {
            inner,
            tokens: tokens.clone(),
            metrics: auth_metrics.clone(),
        }))
        .layer(tower::layer::layer_fn(move |inner| RequestGate {
            inner,
            limit: limits.max_request_bytes,
            decoding: decoding.clone(),
            metrics: gate_metrics.clone(),
            drain: gate_drain.clone(),
        }))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(compute);
    let tcp =
        TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(std::time::Duration::from_secs(60)));
    let mut server: std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match tls {
        Some(tls) => {
            Box::pin(router.serve_with_incoming_shutdown(crate::tls::incoming(tcp, tls, tls_metrics), shutdown))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(tcp, shutdown)),
    };
    tokio::select! {
        r = &mut server => return Ok(r?),
        () = drain_deadline(stopping, drain_timeout) => {}
    }
    // Clients that never let go (a call still running, a connection that
    // never closes): tonic would wait for them forever.
    let n = drain.cut_off();
    tracing::warn!(
        calls_cut_off = n,
        drain_timeout = %crate::duration::format(drain_timeout),
        "drain timeout passed: {n} call{} cut off",
        if n == 1 { "" } else { "s" }
    );
    if let Ok(Err(e)) = tokio::time::timeout(CUT_OFF_GRACE, &mut server).await {
        tracing::warn!(error = %e, "error while closing connections");
    }
    Ok(())
}

/// Resolves `timeout` after shutdown starts (never if it does not).
async fn drain_deadline(mut stopping: watch::Receiver<bool>, timeout: Duration) {
    if stopping.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(timeout).await;
}

/// The calls in flight (every gRPC call, from its arrival to its answer),
/// and the switch that cuts them off when the drain timeout passes. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Drain {
    in_flight: Arc<AtomicUsize>,
    cut_off: Arc<watch::Sender<bool>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

/// One call in flight: counted until dropped.
#[derive(Debug)]
struct CallGuard(Arc<AtomicUsize>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drain {
    /// No calls in flight, nothing cut off.
    pub fn new() -> Self {
        Drain { in_flight: Arc::new(AtomicUsize::new(0)), cut_off: Arc::new(watch::channel(false).0) }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Cuts off every call in flight and every later one; returns how many
    /// were in flight.
    pub fn cut_off(&self) -> usize {
        // Counted first: the calls woken below end (and stop counting) at once.
        let n = self.in_flight();
        self.cut_off.send_replace(true);
        n
    }

    fn is_cut_off(&self) -> bool {
        *self.cut_off.borrow()
    }

    fn enter(&self) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard(self.in_flight.clone())
    }

    /// Resolves when the calls are cut off.
    fn until_cut_off(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.cut_off.subscribe();
        async move {
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A tower layer in front of every gRPC call:
///
/// - Every call counts in [`Drain`] until it is answered; once the drain
///   timeout cuts calls off, each one still running is dropped (its op is
///   cancelled at its next checkpoint) and answered UNAVAILABLE /
///   `SHUTTING_DOWN`, as is any call that arrives after that.
/// - Transform/TransformBatch calls each hold a `decoding` permit from
///   before their body is read until they answer; with none left the call
///   is answered OVERLOADED at once, without reading the body. This bounds
///   the memory of requests that are still arriving, which the pool cannot
///   see yet.
/// - tonic's own "message too large" statuses (OUT_OF_RANGE for the length
///   prefix, RESOURCE_EXHAUSTED when a gRPC-compressed message inflates past
///   the limit) become Tandem's INVALID_ARGUMENT / PAYLOAD_TOO_LARGE with
///   ErrorInfo, so clients never retry an oversized request.
#[derive(Debug, Clone)]
pub struct RequestGate<S> {
    /// The services behind the gate.
    pub inner: S,
    /// `max_request_bytes`, for the rewritten size errors.
    pub limit: u64,
    /// Permits for calls whose body is being received.
    pub decoding: Arc<Semaphore>,
    /// Where rejections are counted.
    pub metrics: Metrics,
    /// Calls in flight, and their cut-off.
    pub drain: Drain,
}

/// Path prefix of the calls that carry inputs.
const GATED_PREFIX: &str = "/tandem.v1.ComputeService/Transform";

impl<S, ReqB, ResB> tower::Service<http::Request<ReqB>> for RequestGate<S>
where
    S: tower::Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let shutting_down = || status::to_status(&Error::ShuttingDown, &[]).into_http::<ResB>();
        if self.drain.is_cut_off() {
            let resp = shutting_down();
            return Box::pin(async move { Ok(resp) });
        }
        let permit = if req.uri().path().starts_with(GATED_PREFIX) {
            match self.decoding.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.metrics.rejected.inc();
                    let e = Error::Overloaded { retry_after_ms: crate::pool::RETRY_AFTER_MS };
                    let resp = status::to_status(&e, &[]).into_http::<ResB>();
                    return Box::pin(async move { Ok(resp) });
                }
            }
        } else {
            None
        };
        let call = self.drain.enter();
        let cut_off = self.drain.until_cut_off();
        let fut = self.inner.call(req);
        let limit = self.limit;
        Box::pin(async move {
            let _call = call;
            let mut resp = tokio::select! {
                r = fut => r?,
                // Drops the handler: its CancelOnDrop stops the op.
                () = cut_off => return Ok(shutting_down()),
            };
            drop(permit);
            rewrite_size_status(resp.headers_mut(), limit);
            Ok(resp)
        })
    }
}

fn rewrite_size_status(headers: &mut http::HeaderMap, limit: u64) {
    if !headers.contains_key("grpc-status") {
        return;
    }
    let Some(st) = tonic::Status::from_header_map(headers) else { return };
    let msg = st.message();
    let actual = match st.code() {
        tonic::Code::OutOfRange if msg.starts_with("Error, decoded message length too large") => {
            msg.split("found ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse::<u64>().ok())
        }
        tonic::Code::ResourceExhausted if msg.starts_with("Error decompressing: size limit") => None,
        _ => return,
    };
    let e = Error::PayloadTooLarge { field: "request".to_owned(), limit, actual };
    let new = status::to_status(&e, &[]);
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if new.add_header(headers).is_err() {
        tracing::warn!("could not rewrite an oversized-request status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_answers_overloaded_without_reading_the_body() {
        use tower::{Service, ServiceExt};
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let mut rx = release_rx.clone();
            async move {
                let _ = rx.wait_for(|r| *r).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }
        });
        let metrics = Metrics::new().unwrap();
        let drain = Drain::new();
        let mut gate = RequestGate {
            inner,
            limit: 10,
            decoding: Arc::new(Semaphore::new(2)),
            metrics: metrics.clone(),
            drain: drain.clone(),
        };
        let call = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        let a = gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/Transform"));
        let b = gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/TransformBatch"));
        // Both permits taken: the third gated call is rejected at once...
        let c = gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/Transform")).await.unwrap();
        let st = tonic::Status::from_header_map(c.headers()).unwrap();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(metrics.rejected.get(), 1);
        // ...while other calls (ListOps, health) pass.
        let d = gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/ListOps"));
        release_tx.send(true).unwrap();
        for f in [a, b, d] {
            assert!(!f.await.unwrap().headers().contains_key("grpc-status"));
        }
        // Permits are back.
        let e = gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/Transform")).await.unwrap();
        assert!(!e.headers().contains_key("grpc-status"));
    }

    #[tokio::test]
    async fn cut_off_drops_calls_in_flight_and_answers_shutting_down() {
        use std::sync::atomic::AtomicBool;
        use tonic_types::StatusExt;
        use tower::{Service, ServiceExt};
        struct SetOnDrop(Arc<AtomicBool>);
        impl Drop for SetOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let guard = SetOnDrop(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<Result<http::Response<String>, std::convert::Infallible>>().await
            }
        });
        let drain = Drain::new();
        let mut gate = RequestGate {
            inner,
            limit: 10,
            decoding: Arc::new(Semaphore::new(2)),
            metrics: Metrics::new().unwrap(),
            drain: drain.clone(),
        };
        let call = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        let running = tokio::spawn(gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/Transform")));
        let other = tokio::spawn(gate.ready().await.unwrap().call(call("/grpc.health.v1.Health/Check")));
        assert_eq!(drain.in_flight(), 2);
        assert_eq!(drain.cut_off(), 2, "both were in flight");
        let shutting_down = |resp: http::Response<String>| {
            let st = tonic::Status::from_header_map(resp.headers()).unwrap();
            (st.code(), st.get_error_details().error_info().map(|i| i.reason.clone()))
        };
        let want = (tonic::Code::Unavailable, Some("SHUTTING_DOWN".to_owned()));
        assert_eq!(shutting_down(running.await.unwrap().unwrap()), want);
        assert_eq!(shutting_down(other.await.unwrap().unwrap()), want);
        assert!(dropped.load(Ordering::Relaxed), "the handler was dropped (so its op is cancelled)");
        assert_eq!(drain.in_flight(), 0);
        // Calls that arrive later are not started.
        dropped.store(false, Ordering::Relaxed);
        let late = gate.ready().await.unwrap().call(call("/tandem.v1.ComputeService/Transform")).await.unwrap();
        assert_eq!(shutting_down(late), want);
        assert!(!dropped.load(Ordering::Relaxed), "never started");
        assert_eq!(drain.in_flight(), 0);
    }

    #[test]
    fn rewrites_tonic_size_errors() {
        let mut h = http::HeaderMap::new();
        tonic::Status::out_of_range("Error, decoded message length too large: found 11 bytes, the limit is: 10 bytes")
            .add_header(&mut h)
            .unwrap();
        rewrite_size_status(&mut h, 10);
        let st = tonic::Status::from_header_map(&h).unwrap();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert_eq!(st.message(), "request is 11 bytes, more than the limit of 10 bytes");
    }
}
