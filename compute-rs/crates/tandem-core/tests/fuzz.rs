//! Fuzz-style property tests over every decoder: arbitrary and mutated
//! inputs must give an output or a clean error, never a panic, and never
//! more output than the caps. `cargo test` runs a short pass (2,000 cases
//! each); `make fuzz` runs them with the `fuzz-long` feature (1,000,000).
// Test helpers: a failed unwrap is a failed test (allow-unwrap-in-tests
// covers #[test] functions, not the helpers they call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tandem_core::{Error, Limits, Reason, Registry, StepRequest};

/// Small caps so that a bomb is caught quickly and memory stays small.
fn registry() -> Registry {
    Registry::new(
        Limits { max_output_bytes: 4 << 20, max_image_pixels: 1 << 20, max_image_dimension: 4096, ..Limits::default() },
        false,
    )
}

fn cases() -> u32 {
    if cfg!(feature = "fuzz-long") { 1_000_000 } else { 2_000 }
}

const DECODERS: &[&str] = &[
    "decompress.zstd",
    "decompress.gzip",
    "decompress.lz4",
    "image.info",
    "image.thumbnail",
    "text.stats",
    "chunk.fastcdc",
];

/// Valid seeds with the decoders that read them, so mutations reach deep
/// into the formats.
fn seeds(reg: &Registry) -> Vec<(Vec<u8>, &'static [&'static str])> {
    let text = b"tandem compute fuzz seed \xc3\xa9t\xc3\xa9 ".repeat(40);
    let run = |steps: &[StepRequest], input: &[u8]| reg.run(steps, input, &reg.ctx()).unwrap().data;
    let mut png = Vec::new();
    {
        use image::ImageEncoder;
        let img = image::RgbaImage::from_fn(23, 17, |x, y| image::Rgba([(x * 11) as u8, (y * 15) as u8, 90, 200]));
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(img.as_raw(), 23, 17, image::ExtendedColorType::Rgba8)
            .unwrap();
    }
    let thumb = |fmt: &str| {
        run(
            &[StepRequest::new("image.thumbnail").param("width", "23").param("height", "17").param("format", fmt)],
            &png,
        )
    };
    let gif = {
        let mut out = Vec::new();
        let img = image::RgbaImage::from_fn(9, 7, |x, y| image::Rgba([(x * 20) as u8, (y * 30) as u8, 0, 255]));
        image::codecs::gif::GifEncoder::new(&mut out).encode_frame(image::Frame::new(img)).unwrap();
        out
    };
    const IMAGE: &[&str] = &["image.info", "image.thumbnail"];
    vec![
        (run(&[StepRequest::new("compress.zstd")], &text), &["decompress.zstd"]),
        (run(&[StepRequest::new("compress.gzip")], &text), &["decompress.gzip"]),
        (run(&[StepRequest::new("compress.lz4")], &text), &["decompress.lz4"]),
        (run(&[StepRequest::new("compress.zstd")], &vec![0u8; 1 << 20]), &["decompress.zstd"]),
        (run(&[StepRequest::new("compress.gzip")], &vec![0u8; 1 << 20]), &["decompress.gzip"]),
        (run(&[StepRequest::new("compress.lz4")], &vec![0u8; 1 << 20]), &["decompress.lz4"]),
        (png.clone(), IMAGE),
        (thumb("jpeg"), IMAGE),
        (thumb("webp"), IMAGE),
        (gif, IMAGE),
        (text, &["text.stats", "chunk.fastcdc"]),
    ]
}

fn check(reg: &Registry, op: &str, input: &[u8]) -> Result<(), TestCaseError> {
    let r = reg.run(&[StepRequest::new(op)], input, &reg.ctx());
    match r {
        Ok(out) => prop_assert!(out.data.len() as u64 <= reg.limits().max_output_bytes),
        Err(e) => {
            let reason = e.reason();
            prop_assert!(matches!(reason, Reason::InputCorrupt | Reason::OutputTooLarge), "{op}: unexpected error {e}");
            if let Error::Step { source, .. } = &e {
                prop_assert!(!matches!(**source, Error::Internal { .. }), "{op}: {e}");
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_decoders_arbitrary_bytes() {
    let reg = registry();
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    runner
        .run(&(0..DECODERS.len(), prop::collection::vec(any::<u8>(), 0..4096)), |(i, data)| {
            check(&reg, DECODERS[i], &data)
        })
        .unwrap();
}

#[test]
fn fuzz_decoders_mutated_seeds() {
    let reg = registry();
    let seeds = seeds(&reg);
    let n = seeds.len();
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let mutation = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..12);
    runner
        .run(&(any::<prop::sample::Index>(), 0..n, mutation, any::<prop::sample::Index>()), |(d, s, muts, cut)| {
            let (seed, decoders) = &seeds[s];
            let mut data = seed.clone();
            for (at, byte, kind) in muts {
                if data.is_empty() {
                    break;
                }
                let i = at.index(data.len());
                match kind {
                    0 => data[i] = byte,
                    1 => data[i] ^= 1 << (byte % 8),
                    2 => data.insert(i, byte),
                    _ => {
                        data.remove(i);
                    }
                }
            }
            if cut.index(8) == 0 && !data.is_empty() {
                let at = cut.index(data.len());
                data.truncate(at);
            }
            check(&reg, decoders[d.index(decoders.len())], &data)
        })
        .unwrap();
}
