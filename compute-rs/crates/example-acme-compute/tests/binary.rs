//! The `acme-compute` binary: the same flags, startup line and shutdown as
//! `tandem-compute`, serving the built-in ops and `acme.invert`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};

#[tokio::test]
async fn binary_serves_builtin_and_acme_ops_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_acme-compute"))
        .env("TANDEM_COMPUTE_LISTEN", "127.0.0.1:0")
        .env("TANDEM_COMPUTE_METRICS_LISTEN", "")
        .env("TANDEM_COMPUTE_WORKERS", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start acme-compute");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let startup: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(startup["fields"]["message"], "tandem-compute listening", "{line}");
    assert_eq!(startup["fields"]["extra_ops"], "acme.invert", "{line}");
    assert_eq!(startup["fields"]["workers"], 1);
    let listen = startup["fields"]["listen"].as_str().unwrap().to_owned();

    let mut c = ComputeServiceClient::connect(format!("http://{listen}")).await.unwrap();
    let ops = c.list_ops(v1::ListOpsRequest {}).await.unwrap().into_inner().ops;
    let names: Vec<&str> = ops.iter().map(|o| o.name.as_str()).collect();
    assert!(names.contains(&"acme.invert") && names.contains(&"hash.sha256"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("debug.")), "no debug ops unless enabled: {names:?}");
    let steps = vec![
        v1::Step { op: "acme.invert".into(), params: [("mask".to_owned(), "255".to_owned())].into() },
        v1::Step { op: "hash.sha256".into(), params: Default::default() },
    ];
    let req = v1::TransformRequest { steps, input: b"abc".to_vec(), job_id: "j1".into(), attempt: 1 };
    let out = c.transform(req).await.unwrap().into_inner();
    assert_eq!(out.output.len(), 32);
    drop(c);

    // A watchdog against a hang only: the exit status check below fails if
    // it had to kill the process.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
    });
    assert!(Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap().success());
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
    assert!(rest.contains("\"message\":\"tandem-compute stopped\""), "{rest}");
}

#[test]
fn help_is_tandem_computes() {
    let out = Command::new(env!("CARGO_BIN_EXE_acme-compute")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--listen", "--workers", "--max-request-bytes", "--enable-debug-ops", "--drain-timeout"] {
        assert!(help.contains(flag), "{flag} in\n{help}");
    }
}
