//! The real `tandem-compute` binary: flags from the environment, the JSON
//! startup line, gRPC and metrics, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-compute"))
        .env("TANDEM_COMPUTE_LISTEN", "127.0.0.1:0")
        .env("TANDEM_COMPUTE_METRICS_LISTEN", "127.0.0.1:0")
        .env("TANDEM_COMPUTE_WORKERS", "1")
        .env("TANDEM_COMPUTE_ENABLE_DEBUG_OPS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tandem-compute");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let startup: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(startup["fields"]["message"], "tandem-compute listening", "{line}");
    assert_eq!(startup["fields"]["workers"], 1);
    assert_eq!(startup["fields"]["queue_depth"], 4);
    assert_eq!(startup["fields"]["debug_ops"], true);
    let listen = startup["fields"]["listen"].as_str().unwrap().to_owned();
    let metrics = startup["fields"]["metrics_listen"].as_str().unwrap().to_owned();

    let mut c = ComputeServiceClient::connect(format!("http://{listen}")).await.unwrap();
    let req = v1::TransformRequest {
        steps: vec![v1::Step { op: "debug.sleep".into(), params: [("ms".to_owned(), "1".to_owned())].into() }],
        input: b"abc".to_vec(),
        job_id: "j1".into(),
        attempt: 1,
    };
    let out = c.transform(req).await.unwrap().into_inner();
    assert_eq!(out.output, b"abc");

    let mut s = std::net::TcpStream::connect(&metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.contains("tandem_compute_op_runs_total{code=\"OK\",op=\"debug.sleep\"} 1"), "{body}");

    drop(c);
    // A watchdog against a hang only: if SIGTERM is ignored it kills the
    // child, and the exit status and log checks below fail.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    });
    let status = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
    // stderr ends when the process does. Read on a thread of its own: this
    // test's runtime must keep running to close the client connection, which
    // graceful shutdown waits for.
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
    assert!(exit.success(), "exit status {exit}\n{rest}");
    let messages: Vec<String> = rest
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON log line"))
        .map(|v| {
            format!(
                "{} {}",
                v["fields"]["message"].as_str().unwrap_or(""),
                v["fields"]["signal"].as_str().unwrap_or("")
            )
        })
        .collect();
    let at =
        |m: &str| messages.iter().position(|l| l.starts_with(m)).unwrap_or_else(|| panic!("no {m:?} in {messages:?}"));
    assert!(messages[at("signal received")].ends_with("SIGTERM"), "{messages:?}");
    assert!(at("signal received") < at("shutting down: draining"), "{messages:?}");
    assert!(at("shutting down: draining") < at("tandem-compute stopped"), "{messages:?}");
}
