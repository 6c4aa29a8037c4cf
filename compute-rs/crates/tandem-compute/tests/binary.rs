//! The real `tandem-compute` binary: flags from the environment, the JSON
//! startup line, gRPC and metrics, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("tandem-compute stopped"), "{rest}");
}
