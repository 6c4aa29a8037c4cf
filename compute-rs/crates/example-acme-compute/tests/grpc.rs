//! `acme.invert` over real gRPC, served in-process by `tandem_compute::serve`
//! with the built-in ops: alone, in pipelines with built-in ops, in ListOps,
//! with bad params, at the request and output limits, and cancelled. The
//! binary itself: tests/binary.rs.
// Test helpers: a failed unwrap is a failed test (allow-unwrap-in-tests
// covers #[test] functions, not the helpers they call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message;
use tandem_compute::{Config, ServeError, metrics::Metrics};
use tandem_core::{Limits, Op, Output};
use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};
use tonic::transport::Channel;
use tonic_types::StatusExt;

const MAX_REQUEST: u64 = 100_000;
const MAX_OUTPUT: u64 = 50_000;

struct Server {
    addr: SocketAddr,
    metrics: Metrics,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Server {
    async fn start(config: Config) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tandem_compute::serve(config, listener, metrics.clone(), async {
            let _ = stopped.await;
        }));
        Server { addr, metrics, stop, task }
    }

    async fn client(&self) -> ComputeServiceClient<Channel> {
        ComputeServiceClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Acme's ops plus `extra`, on a small pool with small limits.
fn config(workers: u32, extra: Vec<Op>) -> Config {
    let mut ops = acme_compute::ops();
    ops.extend(extra);
    Config {
        limits: Limits { workers, queue_depth: 0, max_request_bytes: MAX_REQUEST, ..Limits::default() },
        enable_debug_ops: true,
        ops,
        ..Config::default()
    }
}

fn step(op: &str, params: &[(&str, &str)]) -> v1::Step {
    v1::Step { op: op.to_owned(), params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect() }
}

fn request(steps: Vec<v1::Step>, input: &[u8]) -> v1::TransformRequest {
    v1::TransformRequest { steps, input: input.to_vec(), job_id: String::new(), attempt: 0 }
}

fn error_info(st: &tonic::Status) -> (String, HashMap<String, String>) {
    let info = st.get_error_details().error_info().cloned().expect("status carries ErrorInfo");
    assert_eq!(info.domain, "tandem.dev");
    (info.reason, info.metadata)
}

/// Polls `cond` until it holds; the 30 s bound guards against a hang and
/// measures nothing.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn invert_alone_and_in_pipelines_with_builtin_ops() {
    let srv = Server::start(config(2, Vec::new())).await;
    let mut c = srv.client().await;
    let out = c.transform(request(vec![step("acme.invert", &[])], &[0x00, 0xff, 0x5a])).await.unwrap().into_inner();
    assert_eq!(out.output, [0xff, 0x00, 0xa5]);
    assert_eq!(out.content_type, "application/octet-stream");
    assert_eq!(out.steps.len(), 1);
    assert_eq!((out.steps[0].op.as_str(), out.steps[0].input_bytes, out.steps[0].output_bytes), ("acme.invert", 3, 3));
    let out = c.transform(request(vec![step("acme.invert", &[("mask", "15")])], &[0x00, 0xf0])).await.unwrap();
    assert_eq!(out.into_inner().output, [0x0f, 0xff]);

    // [acme.invert, hash.sha256] is the digest of the inverted bytes.
    let input = b"tandem".to_vec();
    let inverted: Vec<u8> = input.iter().map(|b| !b).collect();
    let pipeline = c.transform(request(vec![step("acme.invert", &[]), step("hash.sha256", &[])], &input)).await;
    let pipeline = pipeline.unwrap().into_inner();
    let direct = c.transform(request(vec![step("hash.sha256", &[])], &inverted)).await.unwrap().into_inner();
    assert_eq!(pipeline.output, direct.output);
    assert_eq!(pipeline.output.len(), 32);
    assert_eq!(pipeline.steps.iter().map(|s| s.op.as_str()).collect::<Vec<_>>(), ["acme.invert", "hash.sha256"]);

    // Between built-in ops, both ways: the round trip gives the input back.
    let text = b"the quick brown fox jumps over the lazy dog ".repeat(100);
    let round_trip = vec![
        step("compress.zstd", &[("level", "3")]),
        step("acme.invert", &[("mask", "170")]),
        step("acme.invert", &[("mask", "170")]),
        step("decompress.zstd", &[]),
    ];
    let out = c.transform(request(round_trip, &text)).await.unwrap().into_inner();
    assert_eq!(out.output, text);

    // Batches too.
    let items = vec![request(vec![step("acme.invert", &[])], b"\x01"), request(vec![step("acme.nope", &[])], b"")];
    let results = c.transform_batch(v1::TransformBatchRequest { items }).await.unwrap().into_inner().results;
    assert!(matches!(&results[0].outcome, Some(v1::transform_result::Outcome::Response(r)) if r.output == [0xfe]));
    assert!(
        matches!(&results[1].outcome, Some(v1::transform_result::Outcome::Error(e)) if e.reason == v1::ErrorReason::UnknownOp as i32)
    );
    let ok = srv.metrics.op_runs.with_label_values(&["acme.invert", "OK"]).get();
    assert_eq!(ok, 6, "acme.invert runs are counted per op like built-in ones");
    srv.stop().await;
}

#[tokio::test]
async fn list_ops_lists_it_with_its_params() {
    let srv = Server::start(config(2, Vec::new())).await;
    let mut c = srv.client().await;
    let resp = c.list_ops(v1::ListOpsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = resp.ops.iter().map(|o| o.name.as_str()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted by name: {names:?}");
    for builtin in ["hash.sha256", "compress.zstd", "image.thumbnail", "debug.sleep"] {
        assert!(names.contains(&builtin), "{builtin} still served: {names:?}");
    }
    let op = resp.ops.iter().find(|o| o.name == "acme.invert").expect("acme.invert listed");
    assert!(op.description.starts_with("XORs every byte"), "{op:?}");
    assert_eq!(op.output_content_type, "application/octet-stream");
    assert_eq!(op.output_encoding, "");
    assert!(!op.debug);
    assert_eq!(op.provider, "compute");
    assert_eq!(op.version, "1.0.0");
    assert_eq!(op.params.len(), 1);
    let mask = &op.params[0];
    assert_eq!(mask.name, "mask");
    assert_eq!(mask.r#type, v1::ParamType::Int as i32);
    assert_eq!((mask.min, mask.max, mask.default_value.as_str(), mask.required), (0, 255, "255", false));
    assert_eq!(resp.limits.unwrap().max_request_bytes, MAX_REQUEST);
    srv.stop().await;
}

#[tokio::test]
async fn bad_params_are_refused_naming_the_param_and_the_limit() {
    let srv = Server::start(config(2, Vec::new())).await;
    let mut c = srv.client().await;
    let with_mask = |mask: &str| request(vec![step("hash.sha256", &[]), step("acme.invert", &[("mask", mask)])], b"x");
    for (mask, actual) in [("256", "256"), ("-1", "-1"), ("1000000", "1000000")] {
        let st = c.transform(with_mask(mask)).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        assert_eq!(st.message(), format!("step 1 (acme.invert): param \"mask\" = {mask} is out of range [0, 255]"));
        let (reason, md) = error_info(&st);
        assert_eq!(reason, "PARAM_OUT_OF_RANGE");
        assert_eq!(md["step"], "1");
        assert_eq!(md["op"], "acme.invert");
        assert_eq!(md["param"], "mask");
        assert_eq!(md["limit"], "[0, 255]");
        assert_eq!(md["actual"], actual);
    }
    // At the edges: accepted.
    for mask in ["0", "255"] {
        c.transform(with_mask(mask)).await.unwrap_or_else(|e| panic!("mask {mask}: {e:?}"));
    }
    for (params, param) in
        [(vec![("mask", "ff")], "mask"), (vec![("mask", " 1")], "mask"), (vec![("masks", "1")], "masks")]
    {
        let st = c.transform(request(vec![step("acme.invert", &params)], b"x")).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        let (reason, md) = error_info(&st);
        assert_eq!(reason, "PARAM_INVALID", "{st:?}");
        assert_eq!((md["step"].as_str(), md["op"].as_str(), md["param"].as_str()), ("0", "acme.invert", param));
    }
    srv.stop().await;
}

/// A request whose encoded size is exactly `size` bytes.
fn request_of_size(op: &str, size: u64) -> v1::TransformRequest {
    let mut req = request(vec![step(op, &[])], b"");
    let mut n = size - req.encoded_len() as u64;
    loop {
        req.input = vec![7u8; n as usize];
        let len = req.encoded_len() as u64;
        if len == size {
            return req;
        }
        n -= len - size;
    }
}

/// The same limits as for built-in ops, with the same errors.
#[tokio::test]
async fn limits_apply_as_to_builtin_ops() {
    // Same length names: the requests are the same size byte for byte.
    assert_eq!("acme.invert".len(), "hash.blake3".len());
    let srv = Server::start(config(2, Vec::new())).await;
    let mut c = srv.client().await;
    let mut too_large = Vec::new();
    for op in ["acme.invert", "hash.blake3"] {
        c.transform(request_of_size(op, MAX_REQUEST - 1)).await.unwrap_or_else(|e| panic!("{op} below: {e:?}"));
        let st = c.transform(request_of_size(op, MAX_REQUEST + 1)).await.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{op}: {st:?}");
        let (reason, md) = error_info(&st);
        assert_eq!(reason, "PAYLOAD_TOO_LARGE", "{op}");
        too_large.push((st.message().to_owned(), md));
    }
    assert_eq!(too_large[0], too_large[1], "acme.invert is refused exactly like hash.blake3");
    assert_eq!(too_large[0].1["limit"], MAX_REQUEST.to_string());
    assert_eq!(too_large[0].1["actual"], (MAX_REQUEST + 1).to_string());
    srv.stop().await;

    // Each step's output is capped at max_output_bytes.
    let mut small = config(2, Vec::new());
    small.limits.max_output_bytes = MAX_OUTPUT;
    let srv = Server::start(small).await;
    let mut c = srv.client().await;
    let at = vec![0u8; MAX_OUTPUT as usize];
    assert_eq!(
        c.transform(request(vec![step("acme.invert", &[])], &at)).await.unwrap().into_inner().output.len(),
        at.len()
    );
    let over = vec![0u8; MAX_OUTPUT as usize + 1];
    let st = c.transform(request(vec![step("hash.sha256", &[]), step("acme.invert", &[])], &over)).await;
    assert!(st.is_ok(), "the sha256 step shrinks it first");
    let st = c.transform(request(vec![step("acme.invert", &[]), step("hash.sha256", &[])], &over)).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
    assert_eq!(
        st.message(),
        format!("step 0 (acme.invert): output exceeds the limit of {MAX_OUTPUT} bytes (is {})", MAX_OUTPUT + 1)
    );
    let (reason, md) = error_info(&st);
    assert_eq!(reason, "OUTPUT_TOO_LARGE");
    assert_eq!((md["step"].as_str(), md["op"].as_str()), ("0", "acme.invert"));
    assert_eq!(md["limit"], MAX_OUTPUT.to_string());
    srv.stop().await;
}

/// A test-only library op that runs until cancelled, checking between
/// 5 ms naps as a long op checks between chunks.
fn slow() -> Op {
    Op::bytes("acme.test.slow", "Runs until cancelled (test only).", Vec::new(), |ctx, _, _| {
        loop {
            ctx.checkpoint()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .debug_only()
}

/// Deadlines and cancellation reach a library op through its checkpoints:
/// the only worker is freed, so the next call runs.
#[tokio::test]
async fn deadline_and_cancel_stop_a_slow_library_op() {
    let srv = Server::start(config(1, vec![slow()])).await;
    let mut c = srv.client().await;
    let mut req = tonic::Request::new(request(vec![step("acme.invert", &[]), step("acme.test.slow", &[])], b"x"));
    req.set_timeout(Duration::from_millis(200));
    let st = c.transform(req).await.unwrap_err();
    assert!(matches!(st.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{st:?}");
    wait_for("the op stopped at its deadline", || srv.metrics.in_flight.get() == 0).await;
    c.transform(request(vec![step("acme.invert", &[])], b"x")).await.expect("the worker is free again");

    let mut c2 = c.clone();
    let call = tokio::spawn(async move { c2.transform(request(vec![step("acme.test.slow", &[])], b"x")).await });
    wait_for("running", || srv.metrics.in_flight.get() == 1).await;
    call.abort();
    wait_for("the op stopped when its caller left", || srv.metrics.in_flight.get() == 0).await;
    c.transform(request(vec![step("acme.invert", &[])], b"x")).await.expect("the worker is free again");
    srv.stop().await;
}

#[tokio::test]
async fn a_wrongly_defined_op_is_refused_before_serving() {
    let clash = Op::bytes("hash.md5", "Not ours to add.", Vec::new(), |_, _, input| Ok(Output::bytes(input.to_vec())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = tandem_compute::serve(config(1, vec![clash]), listener, Metrics::new().unwrap(), async {}).await;
    let Err(ServeError::Definition(e)) = r else { panic!("{r:?}") };
    assert_eq!(e.op, "hash.md5");
    assert!(e.to_string().contains("reserved"), "{e}");
    let twice = Config { ops: vec![acme_compute::invert(), acme_compute::invert()], ..Config::default() };
    assert!(twice.registry().unwrap_err().to_string().contains("already served"));
}
