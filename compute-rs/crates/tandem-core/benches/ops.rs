//! Criterion benchmarks, one group per op family, reporting throughput
//! (bytes/s, or elements/s for images). `cargo bench -p tandem-core`.
// A measuring harness: any failure should stop it on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use image::{ImageEncoder, RgbImage, codecs::png::PngEncoder};
use tandem_core::{Limits, Registry, StepRequest};

/// Compressible but not trivial: text-like bytes.
fn corpus(len: usize) -> Vec<u8> {
    let words = ["tandem ", "compute ", "job ", "queue ", "retry ", "orchestrator ", "nats ", "rust "];
    let mut out = Vec::with_capacity(len + 16);
    let mut x = 0x2545_f491_4f6c_dd1du64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(words[(x % 8) as usize].as_bytes());
        if x.is_multiple_of(11) {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8]));
    let mut out = Vec::new();
    PngEncoder::new(&mut out).write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8).unwrap();
    out
}

fn run(reg: &Registry, steps: &[StepRequest], input: &[u8]) -> usize {
    reg.run(steps, input, &reg.ctx()).unwrap().data.len()
}

fn hashes(c: &mut Criterion) {
    let reg = Registry::new(Limits::default(), false);
    let mut g = c.benchmark_group("hash");
    for size in [1usize << 10, 1 << 20, 16 << 20] {
        let data = corpus(size);
        g.throughput(Throughput::Bytes(size as u64));
        for op in ["hash.sha256", "hash.blake3", "hash.xxh3_64", "hash.crc32c"] {
            if size == 16 << 20 && op != "hash.sha256" {
                continue;
            }
            let steps = [StepRequest::new(op)];
            g.bench_with_input(BenchmarkId::new(op, size), &data, |b, d| b.iter(|| run(&reg, &steps, black_box(d))));
        }
    }
    g.finish();
}

fn compression(c: &mut Criterion) {
    let reg = Registry::new(Limits::default(), false);
    let data = corpus(4 << 20);
    let mut g = c.benchmark_group("compress");
    g.throughput(Throughput::Bytes(data.len() as u64));
    for fmt in ["zstd", "gzip", "lz4"] {
        let c_steps = [StepRequest::new(format!("compress.{fmt}"))];
        let d_steps = [StepRequest::new(format!("decompress.{fmt}"))];
        let packed = reg.run(&c_steps, &data, &reg.ctx()).unwrap().data;
        g.bench_function(format!("compress.{fmt}"), |b| b.iter(|| run(&reg, &c_steps, black_box(&data))));
        g.bench_function(format!("decompress.{fmt}"), |b| b.iter(|| run(&reg, &d_steps, black_box(&packed))));
    }
    g.finish();
}

fn images(c: &mut Criterion) {
    let reg = Registry::new(Limits::default(), false);
    let src = png(1920, 1080);
    let mut g = c.benchmark_group("image");
    g.throughput(Throughput::Elements(1));
    g.bench_function("image.info 1920x1080 png", |b| {
        b.iter(|| run(&reg, &[StepRequest::new("image.info")], black_box(&src)))
    });
    for fmt in ["png", "jpeg", "webp"] {
        let steps = [StepRequest::new("image.thumbnail").param("format", fmt)];
        g.bench_function(format!("image.thumbnail 1920x1080 png -> 256 {fmt}"), |b| {
            b.iter(|| run(&reg, &steps, black_box(&src)))
        });
    }
    // The benchmark's workload: a photo-like JPEG (decoded at 1/2 scale in
    // the DCT for a 256 px box).
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 88)
        .encode_image(&image::load_from_memory(&src).unwrap())
        .unwrap();
    let steps = [StepRequest::new("image.thumbnail").param("format", "png")];
    g.bench_function("image.thumbnail 1920x1080 jpeg -> 256 png", |b| b.iter(|| run(&reg, &steps, black_box(&jpeg))));
    g.finish();
}

fn chunk_and_text(c: &mut Criterion) {
    let reg = Registry::new(Limits::default(), false);
    let data = corpus(4 << 20);
    let mut g = c.benchmark_group("content");
    g.throughput(Throughput::Bytes(data.len() as u64));
    let cdc = [StepRequest::new("chunk.fastcdc")
        .param("min_size", "2048")
        .param("avg_size", "8192")
        .param("max_size", "65536")];
    g.bench_function("chunk.fastcdc 8 KiB avg", |b| b.iter(|| run(&reg, &cdc, black_box(&data))));
    let text: Vec<u8> = data.iter().map(|&b| if b.is_ascii() { b } else { b' ' }).collect();
    g.bench_function("text.stats", |b| b.iter(|| run(&reg, &[StepRequest::new("text.stats")], black_box(&text))));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = hashes, compression, images, chunk_and_text }
criterion_main!(benches);
