//! OpenTelemetry spans from the real `tandem-compute` binary, exported over
//! OTLP/gRPC to an in-process receiver (a tonic server implementing
//! `opentelemetry-proto`'s TraceService): a Transform called with a
//! traceparent yields a server span whose parent is the caller's span and
//! one child span per step; failures carry their reason; the spans still
//! buffered at SIGTERM are flushed before the process exits; log lines carry
//! the span's `trace_id` and `span_id`.
// Test helpers: a failed unwrap is a failed test (allow-unwrap-in-tests
// covers #[test] functions, not the helpers they call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_id: String,
    attrs: HashMap<String, Value>,
    status: (i32, String),
}

impl Span {
    fn str(&self, key: &str) -> &str {
        match self.attrs.get(key) {
            Some(Value::StringValue(s)) => s,
            other => panic!("{}: attribute {key} is {other:?}", self.name),
        }
    }

    fn int(&self, key: &str) -> i64 {
        self.maybe_int(key).unwrap_or_else(|| panic!("{}: no int attribute {key}: {:?}", self.name, self.attrs))
    }

    fn maybe_int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Value::IntValue(v)) => Some(*v),
            _ => None,
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                got.push(Span {
                    service: service.clone(),
                    kind: s.kind,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_id: hex(&s.parent_span_id),
                    attrs: s.attributes.into_iter().filter_map(|a| Some((a.key, a.value?.value?))).collect(),
                    status: s.status.map(|st| (st.code, st.message)).unwrap_or_default(),
                    name: s.name,
                });
            }
        }
        self.spans.lock().unwrap().extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_receiver() -> (Receiver, String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = Receiver::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (receiver, format!("http://{addr}"), stop)
}

fn with_traceparent<T>(msg: T, span_id: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{span_id}-01").parse().unwrap());
    req
}

fn step(op: &str, params: &[(&str, &str)]) -> v1::Step {
    v1::Step { op: op.to_owned(), params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect() }
}

fn transform(steps: Vec<v1::Step>, job_id: &str, attempt: u32) -> v1::TransformRequest {
    v1::TransformRequest { steps, input: b"traced".repeat(100), job_id: job_id.to_owned(), attempt }
}

/// A child process killed if the test fails before it ends it.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `f` on a thread of its own (it blocks on the child's stderr) while
/// this test's runtime keeps serving the receiver.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.await.expect("the blocking part panicked")
}

/// Reads the log lines up to the startup line (on a blocking thread: the
/// receiver runs on this test's runtime); returns it.
async fn startup_line(mut stderr: BufReader<ChildStderr>) -> (serde_json::Value, BufReader<ChildStderr>) {
    blocking(move || {
        loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "tandem-compute exited before listening");
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if v["fields"]["message"] == "tandem-compute listening" {
                return (v, stderr);
            }
        }
    })
    .await
}

/// Sends SIGTERM, waits for the exit (which must be clean) and returns the
/// log lines after the startup line.
async fn terminate(mut proc: Proc, mut stderr: BufReader<ChildStderr>) -> Vec<serde_json::Value> {
    blocking(move || {
        let mut child = proc.0.take().unwrap();
        assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        let exit = child.wait().unwrap();
        assert!(exit.success(), "exit status {exit}\n{rest}");
        rest.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("JSON log line: {l}"))).collect()
    })
    .await
}

/// Names of the OS threads of process `pid` (Linux), to see the exporter's.
fn thread_names(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_spans_are_exported_with_the_callers_parent() {
    let (receiver, endpoint, stop_receiver) = start_receiver().await;
    // A schedule delay far past the test: every span arrives through the
    // flush at shutdown.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-compute"))
        .env("TANDEM_COMPUTE_LISTEN", "127.0.0.1:0")
        .env("TANDEM_COMPUTE_METRICS_LISTEN", "")
        .env("TANDEM_COMPUTE_WORKERS", "2")
        .env("TANDEM_COMPUTE_ENABLE_DEBUG_OPS", "1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem-compute");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id();
    let child = Proc(Some(child));
    let (startup, stderr) = startup_line(stderr).await;
    assert_eq!(startup["fields"]["tracing"], "otlp", "{startup}");
    // A new thread takes its name a moment after it starts.
    let mut names = thread_names(pid);
    for _ in 0..500 {
        if names.iter().any(|n| n.starts_with("OpenTelemetry")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        names = thread_names(pid);
    }
    assert!(names.iter().any(|n| n.starts_with("OpenTelemetry")), "the batch exporter's thread runs: {names:?}");
    let listen = startup["fields"]["listen"].as_str().unwrap();
    let mut c = ComputeServiceClient::connect(format!("http://{listen}")).await.unwrap();

    let steps = vec![step("compress.zstd", &[("level", "3")]), step("decompress.zstd", &[]), step("hash.sha256", &[])];
    let ok = c.transform(with_traceparent(transform(steps, "job-ok", 2), PARENT_ID)).await.unwrap().into_inner();
    let failing = vec![step("hash.sha256", &[]), step("debug.fail", &[("code", "UNAVAILABLE")])];
    let st = c.transform(with_traceparent(transform(failing, "job-fail", 1), "00000000000000a1")).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unavailable);
    let bad = vec![step("hash.*", &[])];
    let st = c.transform(with_traceparent(transform(bad, "job-bad", 1), "00000000000000b1")).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::InvalidArgument);
    let batch = v1::TransformBatchRequest {
        items: vec![
            transform(vec![step("hash.sha256", &[])], "job-b0", 1),
            transform(vec![step("nope.op", &[])], "job-b1", 1),
            transform(vec![step("hash.crc32c", &[]), step("hash.sha256", &[])], "job-b2", 1),
        ],
    };
    c.transform_batch(with_traceparent(batch, "00000000000000c1")).await.unwrap();
    assert!(receiver.spans.lock().unwrap().is_empty(), "nothing exported before the flush");

    drop(c);
    let logs = terminate(child, stderr).await;
    let _ = stop_receiver.send(());
    let spans = receiver.spans.lock().unwrap().clone();

    assert!(spans.iter().all(|s| s.service == "tandem-compute" && s.trace_id == TRACE_ID), "{spans:#?}");
    let server = |parent: &str| -> &Span {
        let found: Vec<&Span> = spans.iter().filter(|s| s.parent_id == parent).collect();
        assert_eq!(found.len(), 1, "one span under {parent}: {spans:#?}");
        let s = found[0];
        assert_eq!((s.name.as_str(), s.kind), ("tandem.compute.transform", SpanKind::Server as i32), "{s:?}");
        assert_eq!((s.str("rpc.system"), s.str("rpc.service")), ("grpc", "tandem.v1.ComputeService"));
        s
    };
    let steps_of = |parent: &Span| -> Vec<&Span> {
        let mut v: Vec<&Span> = spans.iter().filter(|s| s.parent_id == parent.span_id).collect();
        v.sort_by_key(|s| (s.maybe_int("tandem.batch.item"), s.int("tandem.step")));
        for s in &v {
            assert_eq!((s.name.as_str(), s.kind), ("tandem.compute.step", SpanKind::Internal as i32), "{s:?}");
        }
        v
    };

    // The successful call: its span, child of the caller's, and one span per step.
    let call = server(PARENT_ID);
    assert_eq!(
        (call.str("rpc.method"), call.str("tandem.job_id"), call.int("tandem.attempt")),
        ("Transform", "job-ok", 2)
    );
    assert_eq!(
        (call.int("tandem.steps"), call.int("tandem.input_bytes"), call.int("tandem.output_bytes")),
        (3, 600, 32)
    );
    assert_eq!(call.status.0, StatusCode::Ok as i32);
    let steps = steps_of(call);
    assert_eq!(steps.len(), 3, "{steps:#?}");
    for (i, (s, stats)) in steps.iter().zip(&ok.steps).enumerate() {
        assert_eq!((s.str("tandem.op"), s.int("tandem.step")), (stats.op.as_str(), i as i64));
        assert_eq!(s.int("tandem.input_bytes"), stats.input_bytes as i64);
        assert_eq!(s.int("tandem.output_bytes"), stats.output_bytes as i64);
        assert_eq!(s.status.0, StatusCode::Ok as i32);
    }

    // A step that fails: both spans carry the error and its reason.
    let call = server("00000000000000a1");
    assert_eq!(call.status.0, StatusCode::Error as i32);
    assert_eq!(call.str("tandem.error.reason"), "INJECTED_FAULT");
    assert_eq!(call.int("rpc.grpc.status_code"), 14);
    let steps = steps_of(call);
    assert_eq!(steps.iter().map(|s| s.str("tandem.op")).collect::<Vec<_>>(), ["hash.sha256", "debug.fail"]);
    assert_eq!(steps[1].status.0, StatusCode::Error as i32);
    assert!(steps[1].status.1.starts_with("step 1 (debug.fail): injected UNAVAILABLE"), "{:?}", steps[1]);
    assert_eq!(steps[1].str("tandem.error.reason"), "INJECTED_FAULT");
    assert!(!steps[1].attrs.contains_key("tandem.output_bytes"));

    // Refused before any step ran: no step spans.
    let call = server("00000000000000b1");
    assert_eq!((call.status.0, call.str("tandem.error.reason")), (StatusCode::Error as i32, "REQUEST_INVALID"));
    assert!(steps_of(call).is_empty());

    // A batch: one server span, step spans of the valid items only.
    let call = server("00000000000000c1");
    assert_eq!((call.str("rpc.method"), call.int("tandem.batch.items")), ("TransformBatch", 3));
    assert_eq!(call.int("tandem.batch.failed_items"), 1);
    let steps = steps_of(call);
    let got: Vec<(i64, &str, &str)> =
        steps.iter().map(|s| (s.int("tandem.batch.item"), s.str("tandem.job_id"), s.str("tandem.op"))).collect();
    assert_eq!(got, [(0, "job-b0", "hash.sha256"), (2, "job-b2", "hash.crc32c"), (2, "job-b2", "hash.sha256")]);
    assert_eq!(spans.len(), 4 + 3 + 2 + 3, "{spans:#?}");

    // Log lines of a call carry its trace_id and span_id; errors under `error`.
    let failed = logs
        .iter()
        .find(|l| l["fields"]["message"] == "transform failed" && l["span"]["job_id"] == "job-fail")
        .unwrap_or_else(|| panic!("no failure log line in {logs:#?}"));
    let call = server("00000000000000a1");
    assert_eq!(
        (&failed["span"]["trace_id"], &failed["span"]["span_id"]),
        (&TRACE_ID.into(), &call.span_id.clone().into())
    );
    assert!(failed["fields"]["error"].as_str().unwrap().contains("injected UNAVAILABLE"), "{failed}");
}

/// Without the variables: no exporter thread, and log lines still carry the
/// caller's trace_id and span_id (OpenTelemetry's no-op spans keep them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-compute"))
        .env("TANDEM_COMPUTE_LISTEN", "127.0.0.1:0")
        .env("TANDEM_COMPUTE_METRICS_LISTEN", "")
        .env("TANDEM_COMPUTE_WORKERS", "1")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem-compute");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let pid = child.id();
    let child = Proc(Some(child));
    let (startup, stderr) = startup_line(stderr).await;
    assert_eq!(startup["fields"]["tracing"], "off", "{startup}");
    let listen = startup["fields"]["listen"].as_str().unwrap();
    let mut c = ComputeServiceClient::connect(format!("http://{listen}")).await.unwrap();
    let st = c.transform(with_traceparent(transform(vec![step("nope.op", &[])], "j1", 1), PARENT_ID)).await;
    assert_eq!(st.unwrap_err().code(), tonic::Code::InvalidArgument);
    let names = thread_names(pid);
    assert!(!names.is_empty() && !names.iter().any(|n| n.starts_with("OpenTelemetry")), "{names:?}");
    drop(c);
    let logs = terminate(child, stderr).await;
    let failed = logs
        .iter()
        .find(|l| l["fields"]["message"] == "transform failed")
        .unwrap_or_else(|| panic!("no failure log line in {logs:#?}"));
    assert_eq!(failed["span"]["trace_id"], TRACE_ID, "{failed}");
    assert_eq!(failed["span"]["span_id"], PARENT_ID, "{failed}");
    assert_eq!(failed["fields"]["reason"], "UNKNOWN_OP", "{failed}");
}

/// An https endpoint needs TLS, which this build does not have: refused at
/// startup, with the reason, before listening.
#[test]
fn an_https_endpoint_is_refused_at_startup() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-compute"))
        .env("TANDEM_COMPUTE_LISTEN", "127.0.0.1:0")
        .env("TANDEM_COMPUTE_METRICS_LISTEN", "")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.invalid:4317")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OTLP") && err.contains("TLS"), "{err}");
    assert!(!err.contains("tandem-compute listening"), "{err}");
}
