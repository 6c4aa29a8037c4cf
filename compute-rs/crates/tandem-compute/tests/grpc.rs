//! The real server over real gRPC: ops, ListOps, errors with ErrorInfo.

mod common;

use common::{TestServer, config, error_info, request, step};
use tandem_proto::v1;

const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn sha256_over_grpc() {
    let srv = TestServer::start(config(2, 8)).await;
    let mut c = srv.client().await;
    let resp = c.transform(request(vec![step("hash.sha256", &[])], b"abc")).await.unwrap().into_inner();
    assert_eq!(hex(&resp.output), SHA256_ABC);
    assert_eq!(resp.content_type, "application/octet-stream");
    assert_eq!(resp.steps.len(), 1);
    assert_eq!(resp.steps[0].op, "hash.sha256");
    assert_eq!(resp.steps[0].input_bytes, 3);
    assert_eq!(resp.steps[0].output_bytes, 32);
    srv.stop().await;
}

#[tokio::test]
async fn list_ops_describes_ops_and_limits() {
    let srv = TestServer::start(config(2, 8)).await;
    let mut c = srv.client().await;
    let resp = c.list_ops(v1::ListOpsRequest {}).await.unwrap().into_inner();
    let sha = resp.ops.iter().find(|o| o.name == "hash.sha256").expect("sha256 listed");
    assert!(sha.description.contains("raw"));
    let limits = resp.limits.unwrap();
    assert_eq!(limits.workers, 2);
    assert_eq!(limits.queue_depth, 8);
    assert_eq!(limits.max_request_bytes, 64 << 20);
    srv.stop().await;
}

#[tokio::test]
async fn unknown_op_is_invalid_argument_with_error_info() {
    let srv = TestServer::start(config(2, 8)).await;
    let mut c = srv.client().await;
    let mut req = request(vec![step("hash.sha256", &[]), step("nope.op", &[])], b"abc");
    req.job_id = "job-1".to_owned();
    let st = c.transform(req).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert_eq!(st.message(), "step 1 (nope.op): unknown op \"nope.op\"");
    let (reason, domain, md) = error_info(&st);
    assert_eq!(reason, "UNKNOWN_OP");
    assert_eq!(domain, "tandem.dev");
    assert_eq!(md["step"], "1");
    assert_eq!(md["op"], "nope.op");
    assert_eq!(md["job_id"], "job-1");
    srv.stop().await;
}

#[tokio::test]
async fn empty_pipeline_is_request_invalid() {
    let srv = TestServer::start(config(2, 8)).await;
    let mut c = srv.client().await;
    let st = c.transform(request(vec![], b"abc")).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    assert_eq!(error_info(&st).0, "REQUEST_INVALID");
    srv.stop().await;
}

#[tokio::test]
async fn batch_mixes_results_and_errors() {
    let srv = TestServer::start(config(2, 8)).await;
    let mut c = srv.client().await;
    let mut items = Vec::new();
    for i in 0..50 {
        if i % 10 == 3 {
            items.push(request(vec![step("bad.op", &[])], b"abc"));
        } else {
            items.push(request(vec![step("hash.sha256", &[])], b"abc"));
        }
    }
    let resp = c.transform_batch(v1::TransformBatchRequest { items }).await.unwrap().into_inner();
    assert_eq!(resp.results.len(), 50);
    for (i, r) in resp.results.iter().enumerate() {
        match r.outcome.as_ref().unwrap() {
            v1::transform_result::Outcome::Response(ok) => {
                assert_ne!(i % 10, 3);
                assert_eq!(hex(&ok.output), SHA256_ABC);
            }
            v1::transform_result::Outcome::Error(e) => {
                assert_eq!(i % 10, 3);
                assert_eq!(e.code, 3);
                assert_eq!(e.reason, v1::ErrorReason::UnknownOp as i32);
                assert_eq!(e.metadata["step"], "0");
            }
        }
    }
    srv.stop().await;
}

/// A 1 MiB op name, param name, param value or job id comes back quoted
/// (at most QUOTE_LIMIT bytes of it), never whole: the status message, the
/// ErrorInfo metadata and the batch item's error stay small, so a plain
/// grpcio client (16 KiB metadata limit) still sees INVALID_ARGUMENT.
#[tokio::test]
async fn huge_caller_values_are_quoted_not_echoed() {
    use tandem_core::QUOTE_LIMIT;
    let srv = TestServer::start(config(2, 8)).await;
    let mut c = srv.client().await;
    let huge = "x".repeat(1 << 20);
    let cases = [
        ("op name", step(&huge, &[])),
        ("param name", step("compress.zstd", &[(huge.as_str(), "1")])),
        ("param value", step("compress.zstd", &[("level", huge.as_str())])),
        ("enum value", step("image.thumbnail", &[("fit", huge.as_str())])),
    ];
    for (what, s) in cases {
        let mut req = request(vec![step("hash.sha256", &[]), s], b"abc");
        req.job_id = huge.clone();
        let st = c.transform(req.clone()).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{what}");
        assert!(st.message().len() < 300, "{what}: message of {} bytes", st.message().len());
        assert!(st.details().len() < 1024, "{what}: status details of {} bytes", st.details().len());
        assert!(st.metadata().as_ref().len() < 4096, "{what}: trailers of {} bytes", st.metadata().as_ref().len());
        let (_, _, md) = error_info(&st);
        assert!(md.values().all(|v| v.len() <= QUOTE_LIMIT + 20), "{what}: {md:?}");
        assert!(md["job_id"].ends_with(&format!("…({} bytes)", 1 << 20)), "{what}: {md:?}");

        let resp = c.transform_batch(v1::TransformBatchRequest { items: vec![req] }).await.unwrap().into_inner();
        let Some(v1::transform_result::Outcome::Error(e)) = &resp.results[0].outcome else {
            panic!("{what}: {resp:?}")
        };
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
        assert!(e.message.len() < 300, "{what}: batch message of {} bytes", e.message.len());
        assert!(e.metadata.values().all(|v| v.len() <= QUOTE_LIMIT + 20), "{what}: {:?}", e.metadata);
    }
    srv.stop().await;
}
