//! Starts the real server in-process on a random loopback port.
#![allow(dead_code)]
// Test helpers: a failed unwrap is a failed test (allow-unwrap-in-tests
// covers #[test] functions, not the helpers they call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;

use tandem_compute::{Config, metrics::Metrics};
use tandem_core::Limits;
use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            tandem_compute::serve(config, listener, m, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer { addr, metrics, stop: Some(tx), task: Some(task) }
    }

    pub async fn client(&self) -> ComputeServiceClient<Channel> {
        ComputeServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// A config with small, test-friendly limits.
pub fn config(workers: u32, queue_depth: u32) -> Config {
    Config { limits: Limits { workers, queue_depth, ..Limits::default() }, enable_debug_ops: true, ..Config::default() }
}

pub fn step(op: &str, params: &[(&str, &str)]) -> v1::Step {
    v1::Step { op: op.to_owned(), params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect() }
}

pub fn request(steps: Vec<v1::Step>, input: &[u8]) -> v1::TransformRequest {
    v1::TransformRequest { steps, input: input.to_vec(), job_id: String::new(), attempt: 0 }
}

/// The ErrorInfo (reason, domain, metadata) of a status.
pub fn error_info(st: &tonic::Status) -> (String, String, HashMap<String, String>) {
    let d = st.get_error_details();
    let info = d.error_info().expect("status carries ErrorInfo");
    (info.reason.clone(), info.domain.clone(), info.metadata.clone())
}
