//! Timing harness for image.thumbnail on JPEG files (the benchmark's
//! workload: 1920×1080 JPEG → 256 px PNG).
//!
//! `cargo run --release --example thumb_bench -p tandem-core -- DIR [SECONDS] [THREADS] [FORMAT]`
//! Prints images/s with one thread and with THREADS threads (default: cores).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use tandem_core::{Limits, Registry, StepRequest};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn rate(reg: &Registry, inputs: &[Vec<u8>], steps: &[StepRequest], threads: usize, secs: f64) -> Res<f64> {
    let start = Instant::now();
    let total = std::thread::scope(|s| -> Res<usize> {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Res<usize> {
                    let mut n = 0usize;
                    let mut i = t;
                    while start.elapsed() < Duration::from_secs_f64(secs) {
                        let out = reg.run(steps, &inputs[i % inputs.len()], &reg.ctx())?;
                        std::hint::black_box(out.data.len());
                        n += 1;
                        i += threads;
                    }
                    Ok(n)
                })
            })
            .collect();
        let mut total = 0;
        for h in hs {
            total += h.join().map_err(|_| "a benchmark thread panicked")??;
        }
        Ok(total)
    })?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or("usage: thumb_bench DIR [SECONDS] [THREADS] [FORMAT]")?;
    let secs: f64 = args.get(2).map_or(Ok(5.0), |s| s.parse())?;
    let threads: usize =
        args.get(3).map_or_else(|| Ok(std::thread::available_parallelism().map_or(1, |n| n.get())), |s| s.parse())?;
    let format = args.get(4).map_or("png", String::as_str);
    let mut paths = Vec::new();
    for e in std::fs::read_dir(dir)? {
        paths.push(e?.path());
    }
    paths.sort();
    let inputs = paths.iter().map(std::fs::read).collect::<Result<Vec<Vec<u8>>, _>>()?;
    let first = inputs.first().ok_or("no input files")?;
    let reg = Registry::new(Limits::default(), false);
    let steps =
        [StepRequest::new("image.thumbnail").param("width", "256").param("height", "256").param("format", format)];
    let out = reg.run(&steps, first, &reg.ctx())?;
    println!("{} inputs, first output {} bytes", inputs.len(), out.data.len());
    if let Ok(path) = std::env::var("THUMB_OUT") {
        std::fs::write(path, &out.data)?;
    }
    println!("1 thread: {:.1} images/s", rate(&reg, &inputs, &steps, 1, secs)?);
    println!("{threads} threads: {:.1} images/s", rate(&reg, &inputs, &steps, threads, secs)?);
    Ok(())
}
