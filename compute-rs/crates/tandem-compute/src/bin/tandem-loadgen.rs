//! `tandem-loadgen`: a small gRPC load client for tandem-compute. Runs for a
//! bounded time over one connection and prints requests/s, ops/s and
//! per-RPC latency percentiles.
//!
//! ```text
//! tandem-loadgen --addr 127.0.0.1:50052 --seconds 5 --concurrency 1             # single RPCs
//! tandem-loadgen --addr 127.0.0.1:50052 --seconds 5 --concurrency 4 --batch 256 # batched
//! ```

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tandem_proto::v1::{self, compute_service_client::ComputeServiceClient};

#[derive(Debug, Parser)]
#[command(name = "tandem-loadgen", about = "Load client for tandem-compute (bounded in time).")]
struct Args {
    /// Server address (host:port).
    #[arg(long, default_value = "127.0.0.1:50052")]
    addr: String,
    /// How long to run (at most 600 s).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// RPCs in flight at once (all over one HTTP/2 connection).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Items per TransformBatch call; 0 sends single Transform calls.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Input size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// The op to run.
    #[arg(long, default_value = "hash.sha256")]
    op: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let client = ComputeServiceClient::connect(format!("http://{}", args.addr)).await?;
    let item = v1::TransformRequest {
        steps: vec![v1::Step { op: args.op.clone(), params: Default::default() }],
        input: vec![0x5a; args.size],
        job_id: String::new(),
        attempt: 0,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..args.concurrency.max(1) {
        let mut c = client.clone();
        let (stop, ops, errors, item) = (stop.clone(), ops.clone(), errors.clone(), item.clone());
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if batch == 0 {
                    match c.transform(item.clone()).await {
                        Ok(_) => ops.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                } else {
                    let req = v1::TransformBatchRequest { items: vec![item.clone(); batch] };
                    match c.transform_batch(req).await {
                        Ok(r) => {
                            let ok = r
                                .into_inner()
                                .results
                                .iter()
                                .filter(|r| matches!(r.outcome, Some(v1::transform_result::Outcome::Response(_))))
                                .count() as u64;
                            ops.fetch_add(ok, Ordering::Relaxed);
                            errors.fetch_add(batch as u64 - ok, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                    }
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    let n = ops.load(Ordering::Relaxed);
    println!(
        "op={} size={} batch={} concurrency={} seconds={:.1}\nrpcs={} rpcs_per_s={:.0} ops={} ops_per_s={:.0} errors={} MB_per_s={:.1}\nlatency_us p50={:.0} p90={:.0} p99={:.0}",
        args.op,
        args.size,
        args.batch,
        args.concurrency,
        secs,
        lat.len(),
        lat.len() as f64 / secs,
        n,
        n as f64 / secs,
        errors.load(Ordering::Relaxed),
        n as f64 * args.size as f64 / secs / 1e6,
        pct(0.5),
        pct(0.9),
        pct(0.99),
    );
    Ok(())
}
