//! Timing harness for image.thumbnail on JPEG files (the benchmark's
//! workload: 1920×1080 JPEG → 256 px PNG).
//!
//! `cargo run --release --example thumb_bench -p tandem-core -- DIR [SECONDS] [THREADS] [FORMAT]`
//! Prints images/s with one thread and with THREADS threads (default: cores).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use tandem_core::{Limits, Registry, StepRequest};

fn rate(reg: &Registry, inputs: &[Vec<u8>], steps: &[StepRequest], threads: usize, secs: f64) -> f64 {
    let start = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut n = 0usize;
                    let mut i = t;
                    while start.elapsed() < Duration::from_secs_f64(secs) {
                        let out = reg.run(steps, &inputs[i % inputs.len()], &reg.ctx()).expect("thumbnail");
                        std::hint::black_box(out.data.len());
                        n += 1;
                        i += threads;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: thumb_bench DIR [SECONDS] [THREADS] [FORMAT]");
    let secs: f64 = args.get(2).map_or(5.0, |s| s.parse().unwrap());
    let threads: usize = args.get(3).map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), |s| s.parse().unwrap());
    let format = args.get(4).map_or("png", String::as_str);
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let inputs: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let reg = Registry::new(Limits::default(), false);
    let steps = [StepRequest::new("image.thumbnail").param("width", "256").param("height", "256").param("format", format)];
    let out = reg.run(&steps, &inputs[0], &reg.ctx()).unwrap();
    println!("{} inputs, first output {} bytes", inputs.len(), out.data.len());
    if let Ok(path) = std::env::var("THUMB_OUT") {
        std::fs::write(path, &out.data).unwrap();
    }
    println!("1 thread: {:.1} images/s", rate(&reg, &inputs, &steps, 1, secs));
    println!("{threads} threads: {:.1} images/s", rate(&reg, &inputs, &steps, threads, secs));
}
