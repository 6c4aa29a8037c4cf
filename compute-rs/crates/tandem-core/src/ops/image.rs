//! `image.info` and `image.thumbnail`. Dimensions are read from the header
//! and checked against the pixel and dimension caps before any pixel is
//! decoded; the decoder also gets an allocation cap.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader};
use serde::Serialize;

use crate::cancel::Ctx;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::params::{ParamSpec, Params};
use crate::registry::{Op, Output};

/// Output encoding of image.info.
pub const INFO_ENCODING: &str = "tandem.image_info.v1 (JSON)";

/// Largest thumbnail box side. With the shrink-first resize below, the
/// resize's intermediate buffer stays under 2048 × 16384 × 4 B = 128 MiB.
pub const MAX_THUMBNAIL_SIDE: u32 = 2048;

pub(crate) fn ops(limits: &Limits) -> Vec<Op> {
    let dim = i64::from(limits.max_image_dimension.min(MAX_THUMBNAIL_SIDE));
    vec![
        Op::json(
            "image.info",
            "Reads an image's header (PNG, JPEG, GIF or WebP): format, width, height, colour type. \
             Output: JSON {\"format\", \"width\", \"height\", \"color_type\"}.",
            INFO_ENCODING,
            Vec::new(),
            info,
        ),
        Op::bytes(
            "image.thumbnail",
            "Decodes a PNG, JPEG, GIF (first frame) or WebP image, resizes it into a width × height box \
                          (JPEG: decoded at 1/2, 1/4 or 1/8 scale in the DCT while that still leaves twice the \
                          target size; then Lanczos3, after area-averaging reductions over 8×) and encodes it as PNG, JPEG or WebP \
                          (lossless). Output content type is \
                          image/png, image/jpeg or image/webp per the format param.",
            vec![
                ParamSpec::int("width", "Box width in pixels.", 256.min(dim), 1, dim),
                ParamSpec::int("height", "Box height in pixels.", 256.min(dim), 1, dim),
                ParamSpec::choice(
                    "fit",
                    "contain: fit inside the box keeping the aspect ratio, never enlarging; cover: fill the box \
                     keeping the aspect ratio, cropping the overflow; fill: stretch to exactly the box.",
                    "contain",
                    &["contain", "cover", "fill"],
                ),
                ParamSpec::choice("format", "Output format.", "png", &["png", "jpeg", "webp"]),
                ParamSpec::int("quality", "JPEG quality (ignored for png and webp, which are lossless).", 85, 1, 100),
            ],
            thumbnail,
        )
        .with_output("image/*", ""),
    ]
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        _ => "other",
    }
}

fn decode_error(limits: &Limits) -> impl Fn(ImageError) -> Error + '_ {
    move |e| match e {
        ImageError::Limits(l) => Error::OutputTooLarge {
            what: format!("memory to decode the image ({l})"),
            unit: "bytes",
            param: None,
            limit: limits.max_image_alloc(),
            actual: None,
        },
        other => Error::corrupt(format!("image: {other}")),
    }
}

/// Opens `input`, recognising the format from its magic bytes.
fn reader<'a>(input: &'a [u8], limits: &Limits) -> Result<(ImageReader<Cursor<&'a [u8]>>, ImageFormat)> {
    let mut r = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| Error::corrupt(format!("image: {e}")))?;
    let format = match r.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)) => f,
        Some(f) => {
            return Err(Error::corrupt(format!("image: unsupported format {f:?} (expected PNG, JPEG, GIF or WebP)")));
        }
        None => return Err(Error::corrupt("image: unrecognised format (expected PNG, JPEG, GIF or WebP)")),
    };
    r.limits(decoder_limits(limits));
    Ok((r, format))
}

/// Decoder limits: the allocation cap only; dimensions and pixel counts
/// are checked by [`check_size`] from the header, with a clearer message.
fn decoder_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_image_alloc());
    l
}

#[derive(Serialize)]
struct Info {
    format: &'static str,
    width: u32,
    height: u32,
    color_type: String,
}

fn info(ctx: &Ctx<'_>, _: &Params, input: &[u8]) -> Result<Output> {
    // Header only: no pixel limits apply (nothing is decoded).
    let (r, format) = reader(input, ctx.limits)?;
    let dec = r.into_decoder().map_err(decode_error(ctx.limits))?;
    let (width, height) = dec.dimensions();
    let color_type = format!("{:?}", dec.color_type()).to_lowercase();
    Output::json(&Info { format: format_name(format), width, height, color_type })
}

/// Checks header dimensions against the caps (before any pixel decoding).
fn check_size(limits: &Limits, w: u32, h: u32) -> Result<()> {
    let max_dim = limits.max_image_dimension;
    if w > max_dim || h > max_dim {
        return Err(Error::OutputTooLarge {
            what: format!("image dimension ({w} × {h})"),
            unit: "pixels per side",
            param: None,
            limit: u64::from(max_dim),
            actual: Some(u64::from(w.max(h))),
        });
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_image_pixels {
        return Err(Error::OutputTooLarge {
            what: format!("image pixel count ({w} × {h})"),
            unit: "pixels",
            param: None,
            limit: limits.max_image_pixels,
            actual: Some(pixels),
        });
    }
    Ok(())
}

fn thumbnail(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let (r, format) = reader(input, ctx.limits)?;
    let mut dec = r.into_decoder().map_err(decode_error(ctx.limits))?;
    let (w, h) = dec.dimensions();
    check_size(ctx.limits, w, h)?;

    let bw = params.int("width") as u32;
    let bh = params.int("height") as u32;
    let fit = params.str("fit");
    // The output size and the source region that maps onto it, in the
    // full-size image's coordinates.
    let ((rw, rh), (tw, th)) = match fit {
        "cover" => {
            let (_, _, cw, ch) = cover_crop(w, h, bw, bh);
            ((cw, ch), (bw, bh))
        }
        "fill" => ((w, h), (bw, bh)),
        _ => ((w, h), contain_size(w, h, bw, bh)),
    };
    ctx.checkpoint()?;

    // JPEG: decode at 1/2, 1/4 or 1/8 scale in the DCT when the region
    // stays at least twice the output size (see dct_scale_denominator).
    let denom = if format == ImageFormat::Jpeg { dct_scale_denominator(rw, rh, tw, th) } else { 1 };
    let scaled = if denom > 1 { decode_jpeg_scaled(input, ctx.limits, w, h, denom)? } else { None };
    let img = match scaled {
        Some(img) => img,
        None => {
            dec.set_limits(decoder_limits(ctx.limits)).map_err(decode_error(ctx.limits))?;
            DynamicImage::from_decoder(dec).map_err(decode_error(ctx.limits))?
        }
    };
    ctx.checkpoint()?;

    let crop = match fit {
        // Crop the centre to the box's aspect ratio (in the decoded image's
        // coordinates), then scale to the box.
        "cover" => cover_crop(img.width(), img.height(), bw, bh),
        _ => (0, 0, img.width(), img.height()),
    };
    let out = resize(img, crop, tw, th)?;
    ctx.checkpoint()?;
    encode(out, params.str("format"), params.int("quality") as u8)
}

/// The largest JPEG DCT scale denominator (8, 4 or 2; 1 for none) that
/// still leaves a `rw × rh` source region at least twice the `tw × th`
/// output in both axes, as Pillow's `thumbnail` (reducing_gap = 2) does:
/// the decoder never goes below 2× the target, so the final Lanczos pass
/// still has real detail to filter and nothing is ever upscaled.
pub fn dct_scale_denominator(rw: u32, rh: u32, tw: u32, th: u32) -> u32 {
    let (rw, rh, tw, th) = (u64::from(rw), u64::from(rh), u64::from(tw), u64::from(th));
    [8u32, 4, 2].into_iter().find(|&d| rw / u64::from(d) >= 2 * tw && rh / u64::from(d) >= 2 * th).unwrap_or(1)
}

/// Decodes a baseline or progressive JPEG at 1/`denom` scale in the DCT
/// (jpeg-decoder's scaled IDCT: the image is never built at full size).
/// The header was already checked by [`check_size`]; the decoder's output
/// buffer is capped by the allocation limit. Returns `None` where this
/// decoder cannot give the answer (a pixel format other than 8-bit grey or
/// RGB, an unsupported JPEG feature, or any decoding error): the caller
/// then decodes at full size with the image crate's decoder, so accepted
/// and rejected inputs, and the reasons given, are exactly those of the
/// full-size path.
fn decode_jpeg_scaled(input: &[u8], limits: &Limits, w: u32, h: u32, denom: u32) -> Result<Option<DynamicImage>> {
    use jpeg_decoder::{Decoder, Error as JpegError, PixelFormat};

    let mut dec = Decoder::new(input);
    dec.set_max_decoding_buffer_size(usize::try_from(limits.max_image_alloc()).unwrap_or(usize::MAX));
    let (Ok(w16), Ok(h16)) = (u16::try_from(w.div_ceil(denom)), u16::try_from(h.div_ceil(denom))) else {
        return Ok(None);
    };
    match dec.scale(w16, h16) {
        Ok(got) if got == (w16, h16) => {}
        _ => return Ok(None),
    }
    let pixels = match dec.decode() {
        Ok(p) => p,
        Err(JpegError::Format(m)) if m.contains("exceeds maximum allowed size") => {
            return Err(Error::OutputTooLarge {
                what: format!("memory to decode the image ({m})"),
                unit: "bytes",
                param: None,
                limit: limits.max_image_alloc(),
                actual: None,
            });
        }
        Err(_) => return Ok(None),
    };
    let (sw, sh) = (u32::from(w16), u32::from(h16));
    let img = match dec.info().map(|i| i.pixel_format) {
        Some(PixelFormat::RGB24) => image::RgbImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageRgb8),
        Some(PixelFormat::L8) => image::GrayImage::from_raw(sw, sh, pixels).map(DynamicImage::ImageLuma8),
        _ => None,
    };
    Ok(img)
}

/// The centred region of `w × h` with the aspect ratio of `bw × bh`.
pub fn cover_crop(w: u32, h: u32, bw: u32, bh: u32) -> (u32, u32, u32, u32) {
    let (w64, h64, bw64, bh64) = (u64::from(w), u64::from(h), u64::from(bw), u64::from(bh));
    if w64 * bh64 > h64 * bw64 {
        // Wider than the box: keep the full height.
        let cw = ((h64 * bw64 + bh64 / 2) / bh64).clamp(1, w64) as u32;
        ((w - cw) / 2, 0, cw, h)
    } else {
        let ch = ((w64 * bh64 + bw64 / 2) / bw64).clamp(1, h64) as u32;
        (0, (h - ch) / 2, w, ch)
    }
}

/// Resizes the `crop` region (x, y, w, h) of `img` to exactly `tw × th`
/// with a Lanczos3 convolution (fast_image_resize: SIMD, integer
/// arithmetic for 8-bit pixels). An axis reduced more than 8× is first
/// area-averaged (box filter) to 2× the target, which bounds the work per
/// output pixel and the intermediate buffer (at most tw × source height
/// pixels: 2048 × 16384 × 4 B = 128 MiB). Colour channels are filtered
/// independently of alpha (no premultiplication, so no full-size copy of
/// the source). Output is Luma8, Rgb8 or Rgba8.
fn resize(img: DynamicImage, crop: (u32, u32, u32, u32), tw: u32, th: u32) -> Result<DynamicImage> {
    use fast_image_resize::{
        FilterType as F, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image, images::ImageRef,
    };

    let (cx, cy, cw, ch) = crop;
    if (cx, cy, cw, ch, tw, th) == (0, 0, img.width(), img.height(), img.width(), img.height()) {
        return Ok(img);
    }
    let img = match img {
        DynamicImage::ImageLuma8(_) | DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => img,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.into_rgba8()),
        other => DynamicImage::ImageRgb8(other.into_rgb8()),
    };
    let pt = match &img {
        DynamicImage::ImageLuma8(_) => PixelType::U8,
        DynamicImage::ImageRgba8(_) => PixelType::U8x4,
        _ => PixelType::U8x3,
    };
    let err = |e: &dyn std::fmt::Display| Error::Internal { detail: format!("resizing: {e}") };
    let src = ImageRef::new(img.width(), img.height(), img.as_bytes(), pt).map_err(|e| err(&e))?;
    let mut resizer = Resizer::new();
    let opts = |alg| ResizeOptions::new().resize_alg(alg).use_alpha(false);
    let lanczos = ResizeAlg::Convolution(F::Lanczos3);
    let crop_opts = |alg| opts(alg).crop(f64::from(cx), f64::from(cy), f64::from(cw), f64::from(ch));
    let mut dst = Image::new(tw, th, pt);
    let (pw, ph) =
        (if cw > tw.saturating_mul(8) { tw * 2 } else { cw }, if ch > th.saturating_mul(8) { th * 2 } else { ch });
    if (pw, ph) == (cw, ch) {
        resizer.resize(&src, &mut dst, &crop_opts(lanczos)).map_err(|e| err(&e))?;
    } else {
        let mut mid = Image::new(pw, ph, pt);
        resizer.resize(&src, &mut mid, &crop_opts(ResizeAlg::Convolution(F::Box))).map_err(|e| err(&e))?;
        drop(img);
        resizer.resize(&mid, &mut dst, &opts(lanczos)).map_err(|e| err(&e))?;
    }
    let raw = dst.into_vec();
    let out = match pt {
        PixelType::U8 => image::GrayImage::from_raw(tw, th, raw).map(DynamicImage::ImageLuma8),
        PixelType::U8x4 => image::RgbaImage::from_raw(tw, th, raw).map(DynamicImage::ImageRgba8),
        _ => image::RgbImage::from_raw(tw, th, raw).map(DynamicImage::ImageRgb8),
    };
    out.ok_or_else(|| Error::Internal { detail: "resizing: output buffer size".to_owned() })
}

/// The size that fits `w × h` inside `bw × bh` keeping the aspect ratio,
/// never enlarging, at least 1 × 1.
pub fn contain_size(w: u32, h: u32, bw: u32, bh: u32) -> (u32, u32) {
    if w <= bw && h <= bh {
        return (w.max(1), h.max(1));
    }
    let scale = f64::min(f64::from(bw) / f64::from(w), f64::from(bh) / f64::from(h));
    let tw = ((f64::from(w) * scale).round() as u32).clamp(1, bw);
    let th = ((f64::from(h) * scale).round() as u32).clamp(1, bh);
    (tw, th)
}

fn encode(img: DynamicImage, format: &str, quality: u8) -> Result<Output> {
    let img = if img.color().has_alpha() && format != "jpeg" {
        DynamicImage::ImageRgba8(img.into_rgba8())
    } else {
        DynamicImage::ImageRgb8(img.into_rgb8())
    };
    let (w, h) = (img.width(), img.height());
    let color = img.color().into();
    let mut out = Vec::new();
    let enc_err = |e: ImageError| Error::Internal { detail: format!("encoding {format}: {e}") };
    let content_type = match format {
        "jpeg" => {
            JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(img.as_bytes(), w, h, color)
                .map_err(enc_err)?;
            "image/jpeg"
        }
        "webp" => {
            WebPEncoder::new_lossless(&mut out).write_image(img.as_bytes(), w, h, color).map_err(enc_err)?;
            "image/webp"
        }
        _ => {
            // Fast deflate: for thumbnail-sized output the default level costs
            // ~10× the time (≈1.8 ms vs 0.2 ms at 256 × 144) for ~12% smaller
            // files.
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilter::Adaptive)
                .write_image(img.as_bytes(), w, h, color)
                .map_err(enc_err)?;
            "image/png"
        }
    };
    Ok(Output { data: out, content_type })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_crop_keeps_the_box_aspect() {
        assert_eq!(cover_crop(40, 30, 10, 25), (14, 0, 12, 30));
        assert_eq!(cover_crop(100, 100, 50, 50), (0, 0, 100, 100));
        assert_eq!(cover_crop(8000, 2, 2048, 2048), (3999, 0, 2, 2));
        assert_eq!(cover_crop(2, 8000, 2048, 1), (0, 3999, 2, 1));
    }

    #[test]
    fn extreme_aspect_cover_stays_small() {
        // 8000 × 2 into a 2048 × 2048 cover: a 2 × 2 crop scaled up, not a
        // 8 M × 2048 intermediate.
        let img = image::RgbImage::from_pixel(8000, 2, image::Rgb([10, 20, 30]));
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(img.as_raw(), 8000, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        let reg = crate::Registry::new(Limits::default(), false);
        let step = crate::StepRequest::new("image.thumbnail")
            .param("width", "2048")
            .param("height", "2048")
            .param("fit", "cover");
        let out = reg.run(&[step], &png, &reg.ctx()).unwrap();
        let dec = ImageReader::new(Cursor::new(&out.data)).with_guessed_format().unwrap().into_dimensions().unwrap();
        assert_eq!(dec, (2048, 2048));
    }

    fn test_jpeg(w: u32, h: u32, gray: bool) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let band = if (x / 40 + y / 40) % 2 == 0 { 200 } else { 40 };
            image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, band])
        });
        let img = if gray { DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(img).into_luma8()) } else { img.into() };
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 90).encode_image(&img).unwrap();
        out
    }

    fn thumb(input: &[u8], w: u32, h: u32, fit: &str, format: &str) -> Result<Output> {
        let reg = crate::Registry::new(Limits::default(), false);
        let step = crate::StepRequest::new("image.thumbnail")
            .param("width", w.to_string())
            .param("height", h.to_string())
            .param("fit", fit)
            .param("format", format);
        reg.run(&[step], input, &reg.ctx()).map(|o| Output { data: o.data, content_type: o.content_type })
    }

    fn decode(data: &[u8]) -> DynamicImage {
        ImageReader::new(Cursor::new(data)).with_guessed_format().unwrap().decode().unwrap()
    }

    #[test]
    fn dct_scale_keeps_twice_the_target() {
        // 1920 × 1080 → 256 × 144: 1/2 (960 × 540 ≥ 512 × 288), not 1/4 (480 < 512).
        assert_eq!(dct_scale_denominator(1920, 1080, 256, 144), 2);
        assert_eq!(dct_scale_denominator(1920, 1080, 64, 36), 8);
        assert_eq!(dct_scale_denominator(1920, 1080, 120, 68), 4);
        assert_eq!(dct_scale_denominator(1920, 1080, 1000, 562), 1);
        // Both axes must keep 2× (fill stretches one axis more).
        assert_eq!(dct_scale_denominator(1920, 1080, 64, 400), 1);
        assert_eq!(dct_scale_denominator(8, 8, 1, 1), 4);
        assert_eq!(dct_scale_denominator(1, 1, 1, 1), 1);
        assert_eq!(dct_scale_denominator(u32::MAX, u32::MAX, 1, 1), 8);
    }

    #[test]
    fn scaled_jpeg_decode_matches_full_decode() {
        for gray in [false, true] {
            let jpeg = test_jpeg(1920, 1080, gray);
            for (bw, bh, fit, want) in
                [(256, 256, "contain", (256, 144)), (100, 100, "cover", (100, 100)), (300, 50, "fill", (300, 50))]
            {
                let out = decode(&thumb(&jpeg, bw, bh, fit, "png").unwrap().data);
                assert_eq!((out.width(), out.height()), want, "{fit}");
                // The same resize from a full-size decode (PNG input takes the
                // full-size path): the DCT-scaled result stays close.
                let mut png = Vec::new();
                decode(&jpeg).write_to(&mut Cursor::new(&mut png), ImageFormat::Png).unwrap();
                let full = decode(&thumb(&png, bw, bh, fit, "png").unwrap().data);
                let (a, b) = (out.into_rgb8(), full.into_rgb8());
                let diff: u64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
                let mean = diff as f64 / a.as_raw().len() as f64;
                assert!(mean < 2.0, "{fit} gray={gray}: mean abs difference {mean}");
            }
        }
    }

    #[test]
    fn corrupt_and_truncated_jpegs_are_input_corrupt() {
        let jpeg = test_jpeg(1920, 1080, false);
        for cut in [20, 200, 600] {
            let err = thumb(&jpeg[..cut], 256, 256, "contain", "png").unwrap_err();
            assert_eq!(err.reason(), crate::Reason::InputCorrupt, "cut at {cut}: {err}");
        }
        // Cut in the entropy-coded data: the DCT-scaled path (256 box) gives
        // the same verdict as the full-size path (1000 box, no DCT scaling).
        for cut in [jpeg.len() / 2, jpeg.len() - 10] {
            let scaled = thumb(&jpeg[..cut], 256, 256, "contain", "png").map(|_| ()).map_err(|e| e.reason());
            let full = thumb(&jpeg[..cut], 1000, 1000, "contain", "png").map(|_| ()).map_err(|e| e.reason());
            assert_eq!(scaled, full, "cut at {cut}");
        }
        // Garbage after a valid header.
        let mut bad = jpeg.clone();
        let start = bad.len() / 3;
        for b in &mut bad[start..] {
            *b = 0xff;
        }
        if let Err(e) = thumb(&bad, 256, 256, "contain", "png") {
            assert_eq!(e.reason(), crate::Reason::InputCorrupt, "{e}");
        }
    }

    #[test]
    fn jpeg_pixel_limit_is_checked_before_decoding() {
        let jpeg = test_jpeg(1920, 1080, false);
        let limits = Limits { max_image_pixels: 1000 * 1000, ..Limits::default() };
        let reg = crate::Registry::new(limits, false);
        let err = reg.run(&[crate::StepRequest::new("image.thumbnail")], &jpeg, &reg.ctx()).unwrap_err();
        assert_eq!(err.reason(), crate::Reason::OutputTooLarge, "{err}");
    }

    #[test]
    fn mutated_jpegs_through_the_dct_scaled_path_never_panic() {
        // 256 × 192 into a 16 px box: 1/8 DCT scale. Deterministic byte
        // mutations; every outcome must be an image or a clean error.
        let jpeg = test_jpeg(256, 192, false);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..400 {
            let mut m = jpeg.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() % m.len() as u64) as usize;
                m[at] = next() as u8;
            }
            let cut = m.len() - (next() % 64) as usize;
            match crate::catch_panic(|| thumb(&m[..cut], 16, 16, "contain", "png")) {
                Ok(out) => assert!(decode(&out.data).width() <= 16),
                Err(e) => {
                    assert!(matches!(e.reason(), crate::Reason::InputCorrupt | crate::Reason::OutputTooLarge), "{e}")
                }
            }
        }
    }
}
