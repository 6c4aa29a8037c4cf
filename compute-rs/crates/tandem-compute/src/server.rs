//! Building and running the gRPC server: ComputeService with gzip/zstd
//! request decompression bounded by max_request_bytes, health, reflection,
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tandem_core::{Error, Limits, Registry};
use tandem_proto::v1::compute_service_server::{self, ComputeServiceServer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;

use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::service::ComputeSvc;
use crate::status;

/// Everything the server needs besides its sockets.
#[derive(Debug, Clone)]
pub struct Config {
    /// Limits; `workers` and `queue_depth` size the CPU pool.
    pub limits: Limits,
    pub enable_debug_ops: bool,
}

impl Config {
    /// Default limits with `workers` = number of cores and a queue of
    /// 4 × workers.
    pub fn with_defaults() -> Self {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        Config { limits: Limits { workers, queue_depth: 4 * workers, ..Limits::default() }, enable_debug_ops: false }
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
    #[error("reflection descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
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

/// Serves gRPC on `listener` until `shutdown` resolves, then drains
/// in-flight calls and returns.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let limits = config.limits.clone();
    let pool = Pool::new(limits.workers as usize, limits.queue_depth as usize);
    let metrics_for_gate = metrics.clone();
    let svc = ComputeSvc::new(Registry::new(limits.clone(), config.enable_debug_ops), pool, metrics);
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
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight calls");
        health_for_shutdown.set_not_serving::<ComputeServiceServer<ComputeSvc>>().await;
        health_for_shutdown.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    };

    // Requests being received and decoded hold memory before the pool can
    // admit them: bound them too (2 × the pool's own bound, + 4).
    let decoding = Arc::new(Semaphore::new(2 * (limits.workers as usize + limits.queue_depth as usize) + 4));
    let gate_metrics = metrics_for_gate;
    tonic::transport::Server::builder()
        .layer(tower::layer::layer_fn(move |inner| RequestGate {
            inner,
            limit: limits.max_request_bytes,
            decoding: decoding.clone(),
            metrics: gate_metrics.clone(),
        }))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(compute)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(60))),
            shutdown,
        )
        .await?;
    Ok(())
}

/// A tower layer in front of every gRPC call:
///
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
    pub inner: S,
    pub limit: u64,
    pub decoding: Arc<Semaphore>,
    pub metrics: Metrics,
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
        let fut = self.inner.call(req);
        let limit = self.limit;
        Box::pin(async move {
            let mut resp = fut.await?;
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
        let mut gate =
            RequestGate { inner, limit: 10, decoding: Arc::new(Semaphore::new(2)), metrics: metrics.clone() };
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
