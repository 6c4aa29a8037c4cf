//! Prometheus metrics and the HTTP endpoint that serves them (`GET /metrics`).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Every metric of one server instance.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// RPCs by method and gRPC code name.
    pub requests: IntCounterVec,
    /// RPC latency by method.
    pub request_seconds: HistogramVec,
    /// Step runs by op and outcome code (OK or the error's gRPC code name).
    pub op_runs: IntCounterVec,
    /// Step errors by op and reason.
    pub op_errors: IntCounterVec,
    /// Step latency by op.
    pub op_seconds: HistogramVec,
    /// Bytes read by ops, by op.
    pub op_bytes_in: IntCounterVec,
    /// Bytes produced by ops, by op.
    pub op_bytes_out: IntCounterVec,
    /// Requests admitted and not finished (running or waiting for a worker).
    pub in_flight: IntGauge,
    /// Requests admitted and waiting for a worker.
    pub queued: IntGauge,
    /// Requests answered OVERLOADED.
    pub rejected: IntCounter,
    /// ComputeService calls answered UNAUTHENTICATED (no, a malformed or an
    /// unknown bearer token).
    pub unauthenticated: IntCounter,
    /// TLS handshakes that failed or timed out (plaintext clients, clients
    /// without an accepted certificate).
    pub tls_handshake_failures: IntCounter,
    /// Re-reads of changed certificate, key and token files, by what
    /// (`tls`, `tokens`) and result (`ok`, `error`: the previous stays).
    pub reloads: IntCounterVec,
}

impl Metrics {
    /// Every metric, registered. Fails only on an invalid metric definition
    /// (a bug caught by every test that starts a server).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let buckets = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0,
        ];
        let counters = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
        let histograms = |name: &str, help: &str, label: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.clone()), &[label])
        };
        let requests =
            counters("tandem_compute_requests_total", "gRPC requests by method and status code.", &["method", "code"])?;
        let request_seconds =
            histograms("tandem_compute_request_duration_seconds", "gRPC request latency by method.", "method")?;
        let op_runs = counters(
            "tandem_compute_op_runs_total",
            "Op (pipeline step) runs by op and status code.",
            &["op", "code"],
        )?;
        let op_errors =
            counters("tandem_compute_op_errors_total", "Failed op runs by op and error reason.", &["op", "reason"])?;
        let op_seconds = histograms("tandem_compute_op_duration_seconds", "Op run latency by op.", "op")?;
        let op_bytes_in = counters("tandem_compute_op_input_bytes_total", "Bytes read by ops.", &["op"])?;
        let op_bytes_out = counters("tandem_compute_op_output_bytes_total", "Bytes produced by ops.", &["op"])?;
        let in_flight = IntGauge::new("tandem_compute_in_flight_requests", "Requests admitted and not yet finished.")?;
        let queued =
            IntGauge::new("tandem_compute_queued_requests", "Requests admitted and waiting for a CPU worker.")?;
        let rejected = IntCounter::new(
            "tandem_compute_rejected_total",
            "Requests answered RESOURCE_EXHAUSTED (OVERLOADED) because the pool and its queue were full.",
        )?;
        let unauthenticated = IntCounter::new(
            "tandem_compute_unauthenticated_total",
            "ComputeService calls answered UNAUTHENTICATED (no, a malformed or an unknown bearer token).",
        )?;
        let tls_handshake_failures = IntCounter::new(
            "tandem_compute_tls_handshake_failures_total",
            "TLS handshakes on the gRPC port that failed or timed out.",
        )?;
        let reloads = counters(
            "tandem_compute_reloads_total",
            "Re-reads of changed certificate, key and token files, by what and result (error: the previous stays).",
            &["what", "result"],
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(op_runs.clone()),
            Box::new(op_errors.clone()),
            Box::new(op_seconds.clone()),
            Box::new(op_bytes_in.clone()),
            Box::new(op_bytes_out.clone()),
            Box::new(in_flight.clone()),
            Box::new(queued.clone()),
            Box::new(rejected.clone()),
            Box::new(unauthenticated.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(reloads.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            requests,
            request_seconds,
            op_runs,
            op_errors,
            op_seconds,
            op_bytes_in,
            op_bytes_out,
            in_flight,
            queued,
            rejected,
            unauthenticated,
            tls_handshake_failures,
            reloads,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for valid metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Serves `GET /metrics` (any path, in fact) on `listener` until the task is
/// dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    loop {
        let (stream, _peer): (_, SocketAddr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req: Request<Incoming>| {
                let body = metrics.render();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                    )
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}
