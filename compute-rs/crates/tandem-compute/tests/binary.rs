//! The real `tandem-compute` binary: flags from the environment, the JSON
//! startup line, gRPC and metrics, a clean exit on SIGTERM, and a drain that
//! ends (`--drain-timeout`) however long clients hold on.
// Test helpers: a failed unwrap is a failed test (allow-unwrap-in-tests
// covers #[test] functions, not the helpers they call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};
use tonic_types::StatusExt;

/// One `tandem-compute` process started with `env`, and what its startup
/// line said.
struct Compute {
    child: Child,
    stderr: BufReader<ChildStderr>,
    startup: serde_json::Value,
    listen: String,
    metrics: String,
}

impl Compute {
    fn start(env: &[(&str, &str)]) -> Compute {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-compute"));
        cmd.env("TANDEM_COMPUTE_LISTEN", "127.0.0.1:0")
            .env("TANDEM_COMPUTE_METRICS_LISTEN", "127.0.0.1:0")
            .env("TANDEM_COMPUTE_WORKERS", "1")
            .env("TANDEM_COMPUTE_ENABLE_DEBUG_OPS", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tandem-compute");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let startup: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        assert_eq!(startup["fields"]["message"], "tandem-compute listening", "{line}");
        let listen = startup["fields"]["listen"].as_str().unwrap().to_owned();
        let metrics = startup["fields"]["metrics_listen"].as_str().unwrap().to_owned();
        Compute { child, stderr, startup, listen, metrics }
    }

    async fn client(&self) -> ComputeServiceClient<tonic::transport::Channel> {
        ComputeServiceClient::connect(format!("http://{}", self.listen)).await.unwrap()
    }

    fn scrape(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// Waits until `tandem_compute_in_flight_requests` reads `n`. The 30 s
    /// bound guards against a hang; it measures nothing.
    async fn wait_in_flight(&self, n: u32) {
        let want = format!("\ntandem_compute_in_flight_requests {n}\n");
        let start = Instant::now();
        while !self.scrape().contains(&want) {
            assert!(start.elapsed() < Duration::from_secs(30), "never {n} in flight");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends SIGTERM and waits for the process to end; returns its exit
    /// status and every log line after the startup line. A watchdog kills the
    /// process after 60 s so a hang fails the test instead of blocking it:
    /// the exit status then says "signal 9".
    async fn terminate(self) -> (ExitStatus, Vec<serde_json::Value>) {
        let Compute { mut child, mut stderr, .. } = self;
        let pid = child.id();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        });
        let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
        assert!(status.success());
        // stderr ends when the process does. Read on a thread of its own:
        // this test's runtime must keep running (clients it holds answer
        // the server's shutdown).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let read = stderr.read_to_string(&mut rest).map(|_| rest);
            let _ = tx.send((read, child.wait()));
        });
        let (rest, exit) = rx.await.unwrap();
        let (rest, exit) = (rest.unwrap(), exit.unwrap());
        let _ = done_tx.send(());
        watchdog.join().unwrap();
        let lines = rest.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("JSON log line: {l}")));
        (exit, lines.collect())
    }
}

fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}

/// Index of the first log line whose message starts with `m`.
fn at(lines: &[serde_json::Value], m: &str) -> usize {
    let messages: Vec<&str> = lines.iter().map(message).collect();
    messages.iter().position(|l| l.starts_with(m)).unwrap_or_else(|| panic!("no {m:?} in {messages:?}"))
}

fn sleep_request(ms: &str) -> v1::TransformRequest {
    v1::TransformRequest {
        steps: vec![v1::Step { op: "debug.sleep".into(), params: [("ms".to_owned(), ms.to_owned())].into() }],
        input: b"abc".to_vec(),
        job_id: "j1".into(),
        attempt: 1,
    }
}

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let compute = Compute::start(&[]);
    assert_eq!(compute.startup["fields"]["workers"], 1);
    assert_eq!(compute.startup["fields"]["queue_depth"], 4);
    assert_eq!(compute.startup["fields"]["debug_ops"], true);
    assert_eq!(compute.startup["fields"]["drain_timeout"], "10s");
    assert_eq!(compute.startup["fields"]["extra_ops"], "");
    assert_eq!(compute.startup["fields"]["tracing"], "off", "no OTEL_EXPORTER_OTLP_ENDPOINT here");

    let mut c = compute.client().await;
    let out = c.transform(sleep_request("1")).await.unwrap().into_inner();
    assert_eq!(out.output, b"abc");
    let body = compute.scrape();
    assert!(body.contains("tandem_compute_op_runs_total{code=\"OK\",op=\"debug.sleep\"} 1"), "{body}");

    drop(c);
    let (exit, lines) = compute.terminate().await;
    assert!(exit.success(), "exit status {exit}\n{lines:?}");
    assert_eq!(lines[at(&lines, "signal received")]["fields"]["signal"], "SIGTERM");
    assert!(at(&lines, "signal received") < at(&lines, "shutting down: draining"), "{lines:?}");
    assert!(at(&lines, "shutting down: draining") < at(&lines, "tandem-compute stopped"), "{lines:?}");
    assert!(!lines.iter().any(|l| message(l).starts_with("drain timeout")), "nothing was cut off: {lines:?}");
}

/// A call in flight at SIGTERM runs to its end within the drain timeout and
/// gets its answer; then the process exits 0 without cutting anything off.
#[tokio::test]
async fn sigterm_lets_a_call_in_flight_finish() {
    let compute = Compute::start(&[("TANDEM_COMPUTE_DRAIN_TIMEOUT", "5m")]);
    let mut c = compute.client().await;
    let call = tokio::spawn(async move { c.transform(sleep_request("2000")).await });
    compute.wait_in_flight(1).await;
    let terminated = tokio::spawn(compute.terminate());
    let out = call.await.unwrap().expect("the call in flight is answered");
    assert_eq!(out.into_inner().output, b"abc");
    let (exit, lines) = terminated.await.unwrap();
    assert!(exit.success(), "exit status {exit}\n{lines:?}");
    assert!(at(&lines, "shutting down: draining") < at(&lines, "tandem-compute stopped"), "{lines:?}");
    assert!(!lines.iter().any(|l| message(l).starts_with("drain timeout")), "nothing was cut off: {lines:?}");
}

/// Clients that never let go: a TCP connection that never speaks, one that
/// sent the HTTP/2 preface and then never reads, and a call that would run
/// for ten minutes. After SIGTERM the process waits out the drain timeout,
/// answers the call UNAVAILABLE / SHUTTING_DOWN, logs that it cut one call
/// off, and exits 0.
#[tokio::test]
async fn sigterm_ends_the_drain_at_the_timeout() {
    let compute = Compute::start(&[("TANDEM_COMPUTE_DRAIN_TIMEOUT", "500ms")]);
    let silent = std::net::TcpStream::connect(&compute.listen).unwrap();
    let mut deaf = std::net::TcpStream::connect(&compute.listen).unwrap();
    // Client preface, then an empty SETTINGS frame; never a SETTINGS ack.
    deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let mut c = compute.client().await;
    let call = tokio::spawn(async move { c.transform(sleep_request("600000")).await });
    compute.wait_in_flight(1).await;

    let (exit, lines) = compute.terminate().await;
    let answer = call.await.unwrap();
    assert!(exit.success(), "exit status {exit}\n{lines:?}");
    let cut = &lines[at(&lines, "drain timeout")];
    assert_eq!(cut["level"], "WARN", "{cut}");
    assert_eq!(cut["fields"]["calls_cut_off"], 1, "{cut}");
    assert_eq!(cut["fields"]["drain_timeout"], "500ms", "{cut}");
    assert!(at(&lines, "shutting down: draining") < at(&lines, "drain timeout"), "{lines:?}");
    assert!(at(&lines, "drain timeout") < at(&lines, "tandem-compute stopped"), "{lines:?}");

    let st = answer.expect_err("the call was cut off");
    assert_eq!(st.code(), tonic::Code::Unavailable, "{st:?}");
    assert_eq!(st.get_error_details().error_info().map(|i| i.reason.as_str()), Some("SHUTTING_DOWN"), "{st:?}");
    drop((silent, deaf));
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-compute")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.starts_with("Tandem compute service: runs CPU-bound transforms over gRPC.\n"), "{help}");
    for (flag, env) in [
        ("--listen", "TANDEM_COMPUTE_LISTEN"),
        ("--metrics-listen", "TANDEM_COMPUTE_METRICS_LISTEN"),
        ("--workers", "TANDEM_COMPUTE_WORKERS"),
        ("--queue-depth", "TANDEM_COMPUTE_QUEUE_DEPTH"),
        ("--max-request-bytes", "TANDEM_COMPUTE_MAX_REQUEST_BYTES"),
        ("--enable-debug-ops", "TANDEM_COMPUTE_ENABLE_DEBUG_OPS"),
        ("--drain-timeout", "TANDEM_COMPUTE_DRAIN_TIMEOUT"),
        ("--log-level", "TANDEM_COMPUTE_LOG_LEVEL"),
    ] {
        assert!(help.contains(flag) && help.contains(&format!("[env: {env}=")), "{flag} / {env} in\n{help}");
    }
    assert!(help.contains("[default: 10s]"), "{help}");
    let bad = Command::new(env!("CARGO_BIN_EXE_tandem-compute")).args(["--drain-timeout", "10"]).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--drain-timeout"));
}
