//! Per-phase timing for image.thumbnail on JPEG files (decode, resize, encode).
//! `cargo run --release --example thumb_phases -p tandem-core -- DIR`
#![allow(clippy::print_stdout)]
// A measuring tool: any failure should stop it on the spot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::time::Instant;

use image::{DynamicImage, ImageEncoder, ImageReader, imageops::FilterType};

fn time<T>(name: &str, n: usize, mut f: impl FnMut() -> T) {
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    println!("{name:40} {:8.2} ms", t.elapsed().as_secs_f64() * 1000.0 / n as f64);
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: thumb_phases DIR");
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let input = std::fs::read(&paths[0]).unwrap();
    let n = 20;
    let full = || ImageReader::new(Cursor::new(&input)).with_guessed_format().unwrap().decode().unwrap();
    time("zune full decode", n, full);
    for d in [1u16, 2, 4, 8] {
        time(&format!("jpeg-decoder 1/{d}"), n, || {
            let mut dec = jpeg_decoder::Decoder::new(&input[..]);
            dec.scale(1920u16.div_ceil(d), 1080u16.div_ceil(d)).unwrap();
            dec.decode().unwrap()
        });
    }
    let img = full();
    let half = img.resize_exact(960, 540, FilterType::Triangle);
    time("thumbnail_exact 1920x1080->512x288", n, || img.thumbnail_exact(512, 288));
    time("thumbnail_exact 960x540->512x288", n, || half.thumbnail_exact(512, 288));
    let s = half.thumbnail_exact(512, 288);
    time("lanczos3 512x288->256x144", n, || s.resize_exact(256, 144, FilterType::Lanczos3));
    let t = s.resize_exact(256, 144, FilterType::Lanczos3).into_rgb8();
    use image::codecs::png::{CompressionType, FilterType as PF, PngEncoder};
    for (name, c, f) in [
        ("png default", CompressionType::Default, PF::Adaptive),
        ("png fast", CompressionType::Fast, PF::Adaptive),
        ("png best", CompressionType::Best, PF::Adaptive),
        ("png fast/sub", CompressionType::Fast, PF::Sub),
        ("png default/paeth", CompressionType::Default, PF::Paeth),
    ] {
        let mut size = 0;
        time(name, n, || {
            let mut out = Vec::new();
            PngEncoder::new_with_quality(&mut out, c, f)
                .write_image(t.as_raw(), 256, 144, image::ExtendedColorType::Rgb8)
                .unwrap();
            size = out.len();
        });
        println!("   size {size}");
    }
    // The whole op before DCT-scaled decoding (full-size zune-jpeg decode,
    // area averaging to 2× the target, Lanczos3, default PNG deflate),
    // against the op as it is now, on the same input at the same moment.
    let old = || {
        let img = full();
        let img = img.thumbnail_exact(512, 288).resize_exact(256, 144, FilterType::Lanczos3);
        let img = DynamicImage::ImageRgb8(img.into_rgb8());
        let mut out = Vec::new();
        PngEncoder::new(&mut out).write_image(img.as_bytes(), 256, 144, image::ExtendedColorType::Rgb8).unwrap();
        out.len()
    };
    let reg = tandem_core::Registry::new(tandem_core::Limits::default(), false);
    let steps = [tandem_core::StepRequest::new("image.thumbnail")];
    let new = || reg.run(&steps, &input, &reg.ctx()).unwrap().data.len();
    for _ in 0..3 {
        time("old op (full decode)", n, old);
        time("new op (image.thumbnail)", n, new);
    }
}
