//! Overload, panics, deadlines and cancellation, health, reflection and
//! metrics over real gRPC.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, config, error_info, request, step};
use tandem_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_types::StatusExt;

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn overload_is_resource_exhausted_at_once() {
    let srv = TestServer::start(config(1, 1)).await;
    let c = srv.client().await;
    // One running, one waiting: the pool and its queue are full.
    let mut c1 = c.clone();
    let running = tokio::spawn(async move { c1.transform(request(vec![step("debug.sleep", &[("ms", "800")])], b"a")).await });
    wait_for("one running", || srv.metrics.in_flight.get() == 1 && srv.metrics.queued.get() == 0).await;
    let mut c2 = c.clone();
    let queued = tokio::spawn(async move { c2.transform(request(vec![step("hash.sha256", &[])], b"b")).await });
    wait_for("one queued", || srv.metrics.queued.get() == 1).await;

    let mut c3 = c.clone();
    let start = Instant::now();
    let st = c3.transform(request(vec![step("hash.sha256", &[])], b"c")).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_millis(300), "rejected at once, took {:?}", start.elapsed());
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

    running.await.unwrap().expect("the running request finishes");
    queued.await.unwrap().expect("the queued request runs");
    c3.transform(request(vec![step("hash.sha256", &[])], b"e")).await.expect("serves once free");
    srv.stop().await;
}

#[tokio::test]
async fn panic_is_internal_and_the_service_keeps_serving() {
    let srv = TestServer::start(config(2, 4)).await;
    let mut c = srv.client().await;
    for _ in 0..3 {
        let st = c.transform(request(vec![step("hash.sha256", &[]), step("debug.panic", &[])], b"x")).await.unwrap_err();
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
    let mut req = tonic::Request::new(request(vec![step("debug.sleep", &[("ms", "30000")])], b"x"));
    req.set_timeout(Duration::from_millis(200));
    let start = Instant::now();
    let st = c.transform(req).await.unwrap_err();
    assert!(
        matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "deadline: {st:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    // The sleeping op sees the cancellation and frees the only worker.
    wait_for("worker freed", || srv.metrics.in_flight.get() == 0).await;
    assert!(start.elapsed() < Duration::from_secs(2), "worker freed late: {:?}", start.elapsed());
    c.transform(request(vec![step("hash.sha256", &[])], b"x")).await.expect("worker is free again");
    // debug.burn honours cancellation too.
    let mut req = tonic::Request::new(request(vec![step("debug.burn", &[("ms", "30000")])], b"x"));
    req.set_timeout(Duration::from_millis(200));
    c.transform(req).await.unwrap_err();
    wait_for("burn stopped", || srv.metrics.in_flight.get() == 0).await;
    assert!(start.elapsed() < Duration::from_secs(4));
    srv.stop().await;
}

#[tokio::test]
async fn expired_request_is_not_started() {
    let srv = TestServer::start(config(1, 4)).await;
    let c = srv.client().await;
    let mut c1 = c.clone();
    let running = tokio::spawn(async move { c1.transform(request(vec![step("debug.sleep", &[("ms", "600")])], b"a")).await });
    wait_for("one running", || srv.metrics.in_flight.get() == 1).await;
    // Waits for the busy worker past its deadline: never runs.
    let mut c2 = c.clone();
    let mut req = tonic::Request::new(request(vec![step("debug.burn", &[("ms", "10")])], b"x"));
    req.set_timeout(Duration::from_millis(150));
    let st = c2.transform(req).await.unwrap_err();
    assert!(matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{st:?}");
    running.await.unwrap().unwrap();
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
        "hash.sha256", "hash.blake3", "hash.xxh3_64", "hash.crc32c", "compress.zstd", "decompress.zstd",
        "compress.gzip", "decompress.gzip", "compress.lz4", "decompress.lz4", "image.info", "image.thumbnail",
        "chunk.fastcdc", "text.stats",
    ] {
        assert!(names.contains(&want), "{want} missing from ListOps");
    }
    let st = c.transform(request(vec![step("debug.sleep", &[])], b"x")).await.unwrap_err();
    assert_eq!(error_info(&st).0, "UNKNOWN_OP");
    srv.stop().await;
}

#[tokio::test]
async fn health_and_reflection() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let srv = TestServer::start(config(2, 4)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr)).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "tandem.v1.ComputeService"] {
        let r = health.check(HealthCheckRequest { service: service.to_owned() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "health of {service:?}");
    }
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let describe = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("tandem.v1.ComputeService".to_owned())),
    };
    let mut stream = refl.server_reflection_info(tokio_stream::iter(vec![req, describe])).await.unwrap().into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"tandem.v1.ComputeService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    // `grpcurl describe` needs the file (and its imports) for a symbol.
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = resp.message_response else { panic!("{resp:?}") };
    assert!(!files.file_descriptor_proto.is_empty());
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
    let d = grpc_deadline(&md).unwrap();
    let left = d.saturating_duration_since(Instant::now());
    assert!(left <= Duration::from_millis(250) && left > Duration::from_millis(200));
    md.insert("traceparent", "garbage".parse().unwrap());
    assert_eq!(trace_id(&md), "");
}
