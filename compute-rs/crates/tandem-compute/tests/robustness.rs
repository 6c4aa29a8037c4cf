//! Overload, panics, deadlines and cancellation, health and metrics over
//! real gRPC. No assertion here depends on how fast the machine is: each
//! checks an event or a count (reflection: tests/reflection.rs).

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, config, error_info, request, step};
use tandem_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_types::StatusExt;

/// Polls `cond` until it holds. The 30 s bound is a guard against a hang,
/// not a measurement: every wait here is for an event that happens at once
/// when the code works, or never when it does not.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Ten minutes: an op that only stops when cancelled.
const FOREVER_MS: &str = "600000";

#[tokio::test]
async fn overload_is_resource_exhausted_at_once() {
    let srv = TestServer::start(config(1, 1)).await;
    let c = srv.client().await;
    // One running (until cancelled), one waiting: the pool and its queue are full.
    let mut c1 = c.clone();
    let running =
        tokio::spawn(
            async move { c1.transform(request(vec![step("debug.sleep", &[("ms", FOREVER_MS)])], b"a")).await },
        );
    wait_for("one running", || srv.metrics.in_flight.get() == 1 && srv.metrics.queued.get() == 0).await;
    let mut c2 = c.clone();
    let queued = tokio::spawn(async move { c2.transform(request(vec![step("hash.sha256", &[])], b"b")).await });
    wait_for("one queued", || srv.metrics.queued.get() == 1).await;

    let mut c3 = c.clone();
    let st = c3.transform(request(vec![step("hash.sha256", &[])], b"c")).await.unwrap_err();
    // Answered while the only worker is still busy and the queue still
    // full: rejected at once, not queued behind them.
    assert!(!running.is_finished() && !queued.is_finished());
    assert_eq!((srv.metrics.in_flight.get(), srv.metrics.queued.get()), (2, 1), "nothing else admitted");
    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
    let (reason, _, md) = error_info(&st);
    assert_eq!(reason, "OVERLOADED");
    assert_eq!(md["retry_after_ms"], "100");
    let retry = st.get_error_details().retry_info().cloned().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(100)));
    // Batches are admitted the same way.
    let st = c3
        .transform_batch(v1::TransformBatchRequest { items: vec![request(vec![step("hash.sha256", &[])], b"d")] })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
    assert_eq!(srv.metrics.rejected.get(), 2);

    // The caller of the running request leaves: its op is cancelled, the
    // worker takes the queued request.
    running.abort();
    queued.await.unwrap().expect("the queued request runs");
    wait_for("pool empty", || srv.metrics.in_flight.get() == 0).await;
    c3.transform(request(vec![step("hash.sha256", &[])], b"e")).await.expect("serves once free");
    srv.stop().await;
}

#[tokio::test]
async fn panic_is_internal_and_the_service_keeps_serving() {
    let srv = TestServer::start(config(2, 4)).await;
    let mut c = srv.client().await;
    for _ in 0..3 {
        let st =
            c.transform(request(vec![step("hash.sha256", &[]), step("debug.panic", &[])], b"x")).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::Internal);
        let (reason, _, md) = error_info(&st);
        assert_eq!(reason, "INTERNAL_ERROR");
        assert_eq!(md["step"], "1");
    }
    // A panicking batch item fails alone.
    let items = vec![request(vec![step("debug.panic", &[])], b"x"), request(vec![step("hash.sha256", &[])], b"x")];
    let resp = c.transform_batch(v1::TransformBatchRequest { items }).await.unwrap().into_inner();
    assert!(matches!(resp.results[0].outcome, Some(v1::transform_result::Outcome::Error(ref e)) if e.code == 13));
    assert!(matches!(resp.results[1].outcome, Some(v1::transform_result::Outcome::Response(_))));
    c.transform(request(vec![step("hash.sha256", &[])], b"x")).await.expect("still serving");
    assert_eq!(srv.metrics.in_flight.get(), 0);
    srv.stop().await;
}

#[tokio::test]
async fn deadline_frees_the_worker() {
    let srv = TestServer::start(config(1, 0)).await;
    let mut c = srv.client().await;
    for op in ["debug.sleep", "debug.burn"] {
        let mut req = tonic::Request::new(request(vec![step(op, &[("ms", FOREVER_MS)])], b"x"));
        req.set_timeout(Duration::from_millis(200));
        let st = c.transform(req).await.unwrap_err();
        assert!(matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{op}: {st:?}");
        // The op (ten minutes long) sees the cancellation and frees the
        // only worker; without it the worker stays busy and this never holds.
        wait_for(&format!("{op} stopped"), || srv.metrics.in_flight.get() == 0).await;
        c.transform(request(vec![step("hash.sha256", &[])], b"x")).await.expect("worker is free again");
    }
    srv.stop().await;
}

#[tokio::test]
async fn expired_request_is_not_started() {
    let srv = TestServer::start(config(1, 4)).await;
    let c = srv.client().await;
    let mut c1 = c.clone();
    let running =
        tokio::spawn(
            async move { c1.transform(request(vec![step("debug.sleep", &[("ms", FOREVER_MS)])], b"a")).await },
        );
    wait_for("one running", || srv.metrics.in_flight.get() == 1).await;
    // Waits for the busy worker past its deadline: never runs.
    let mut c2 = c.clone();
    let mut req = tonic::Request::new(request(vec![step("debug.burn", &[("ms", "10")])], b"x"));
    req.set_timeout(Duration::from_millis(150));
    let st = c2.transform(req).await.unwrap_err();
    assert!(matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{st:?}");
    wait_for("the expired request left the queue", || srv.metrics.queued.get() == 0).await;
    assert!(!running.is_finished(), "the worker was busy all along");
    running.abort();
    wait_for("pool empty", || srv.metrics.in_flight.get() == 0).await;
    c2.transform(request(vec![step("hash.sha256", &[])], b"x")).await.unwrap();
    let burned = srv.metrics.op_runs.with_label_values(&["debug.burn", "OK"]).get()
        + srv.metrics.op_runs.with_label_values(&["debug.burn", "DEADLINE_EXCEEDED"]).get()
        + srv.metrics.op_runs.with_label_values(&["debug.burn", "CANCELLED"]).get();
    assert_eq!(burned, 0, "an expired request must not start");
    srv.stop().await;
}

#[tokio::test]
async fn debug_fail_uses_the_attempt() {
    let srv = TestServer::start(config(2, 4)).await;
    let mut c = srv.client().await;
    for attempt in 1..=3 {
        let mut req = request(vec![step("debug.fail", &[("code", "UNAVAILABLE"), ("until_attempt", "2")])], b"ok");
        req.attempt = attempt;
        let r = c.transform(req).await;
        if attempt <= 2 {
            let st = r.unwrap_err();
            assert_eq!(st.code(), tonic::Code::Unavailable);
            assert_eq!(error_info(&st).0, "INJECTED_FAULT");
        } else {
            assert_eq!(r.unwrap().into_inner().output, b"ok");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn debug_ops_are_hidden_unless_enabled() {
    let mut cfg = config(2, 4);
    cfg.enable_debug_ops = false;
    let srv = TestServer::start(cfg).await;
    let mut c = srv.client().await;
    let ops = c.list_ops(v1::ListOpsRequest {}).await.unwrap().into_inner().ops;
    assert!(ops.iter().all(|o| !o.debug && !o.name.starts_with("debug.")));
    let names: Vec<&str> = ops.iter().map(|o| o.name.as_str()).collect();
    for want in [
        "hash.sha256",
        "hash.blake3",
        "hash.xxh3_64",
        "hash.crc32c",
        "compress.zstd",
        "decompress.zstd",
        "compress.gzip",
        "decompress.gzip",
        "compress.lz4",
        "decompress.lz4",
        "image.info",
        "image.thumbnail",
        "chunk.fastcdc",
        "text.stats",
    ] {
        assert!(names.contains(&want), "{want} missing from ListOps");
    }
    let st = c.transform(request(vec![step("debug.sleep", &[])], b"x")).await.unwrap_err();
    assert_eq!(error_info(&st).0, "UNKNOWN_OP");
    srv.stop().await;
}

#[tokio::test]
async fn health_serves_overall_and_compute() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let srv = TestServer::start(config(2, 4)).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "tandem.v1.ComputeService"] {
        let r = health.check(HealthCheckRequest { service: service.to_owned() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "health of {service:?}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let srv = TestServer::start(config(2, 4)).await;
    let mut c = srv.client().await;
    c.transform(request(vec![step("hash.sha256", &[])], b"x")).await.unwrap();
    let _ = c.transform(request(vec![step("compress.zstd", &[("level", "99")])], b"x")).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(tandem_compute::metrics::serve(listener, srv.metrics.clone()));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    task.abort();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for want in [
        "tandem_compute_requests_total{code=\"OK\",method=\"Transform\"} 1",
        "tandem_compute_requests_total{code=\"INVALID_ARGUMENT\",method=\"Transform\"} 1",
        "tandem_compute_op_runs_total{code=\"OK\",op=\"hash.sha256\"} 1",
        "tandem_compute_op_duration_seconds_bucket",
        "tandem_compute_op_input_bytes_total{op=\"hash.sha256\"} 1",
        "tandem_compute_op_output_bytes_total{op=\"hash.sha256\"} 32",
        "tandem_compute_in_flight_requests 0",
        "tandem_compute_rejected_total 0",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    srv.stop().await;
}

#[test]
fn trace_and_deadline_headers_parse() {
    use tandem_compute::service::{grpc_deadline, trace_id};
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
    md.insert("grpc-timeout", "250m".parse().unwrap());
    assert_eq!(trace_id(&md), "4bf92f3577b34da6a3ce929d0e0e4736");
    // 250 ms from the moment of parsing, whenever that was.
    let before = Instant::now();
    let d = grpc_deadline(&md).unwrap();
    let after = Instant::now();
    let timeout = Duration::from_millis(250);
    assert!(before + timeout <= d && d <= after + timeout, "{d:?} not 250 ms after {before:?}..{after:?}");
    md.insert("traceparent", "garbage".parse().unwrap());
    assert_eq!(trace_id(&md), "");
}
