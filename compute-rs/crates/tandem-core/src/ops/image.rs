//! `image.info` and `image.thumbnail`. Dimensions are read from the header
//! and checked against the pixel and dimension caps before any pixel is
//! decoded; the decoder also gets an allocation cap.

use std::io::Cursor;

use image::codecs::{jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageError, ImageFormat, ImageReader};
use serde::Serialize;

use crate::cancel::Ctx;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::params::{ParamSpec, Params};
use crate::registry::{JSON, Op, Output};

/// Output encoding of image.info.
pub const INFO_ENCODING: &str = "tandem.image_info.v1 (JSON)";

/// Largest thumbnail box side. With the shrink-first resize below, the
/// Lanczos pass's f32 buffer stays under 2·2048 × 2048 × 16 B = 128 MiB.
pub const MAX_THUMBNAIL_SIDE: u32 = 2048;

pub(crate) fn ops(limits: &Limits) -> Vec<Op> {
    let dim = i64::from(limits.max_image_dimension.min(MAX_THUMBNAIL_SIDE));
    vec![
        Op {
            name: "image.info",
            description: "Reads an image's header (PNG, JPEG, GIF or WebP): format, width, height, colour type. \
                          Output: JSON {\"format\", \"width\", \"height\", \"color_type\"}."
                .to_owned(),
            params: Vec::new(),
            output_content_type: JSON,
            output_encoding: INFO_ENCODING,
            debug: false,
            run: info,
        },
        Op {
            name: "image.thumbnail",
            description: "Decodes a PNG, JPEG, GIF (first frame) or WebP image, resizes it into a width × height box \
                          (Lanczos3, after area-averaging big reductions) and encodes it as PNG, JPEG or WebP \
                          (lossless). Output content type is \
                          image/png, image/jpeg or image/webp per the format param."
                .to_owned(),
            params: vec![
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
            output_content_type: "image/*",
            output_encoding: "",
            debug: false,
            run: thumbnail,
        },
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
        Some(f) => return Err(Error::corrupt(format!("image: unsupported format {f:?} (expected PNG, JPEG, GIF or WebP)"))),
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
    let (r, _) = reader(input, ctx.limits)?;
    let mut dec = r.into_decoder().map_err(decode_error(ctx.limits))?;
    let (w, h) = dec.dimensions();
    check_size(ctx.limits, w, h)?;
    dec.set_limits(decoder_limits(ctx.limits)).map_err(decode_error(ctx.limits))?;
    ctx.checkpoint()?;
    let img = DynamicImage::from_decoder(dec).map_err(decode_error(ctx.limits))?;
    ctx.checkpoint()?;

    let bw = params.int("width") as u32;
    let bh = params.int("height") as u32;
    let (src, (tw, th)) = match params.str("fit") {
        "cover" => {
            // Crop the centre to the box's aspect ratio, then scale to the box.
            let (cx, cy, cw, ch) = cover_crop(w, h, bw, bh);
            (img.crop_imm(cx, cy, cw, ch), (bw, bh))
        }
        "fill" => (img, (bw, bh)),
        _ => (img, contain_size(w, h, bw, bh)),
    };
    let out = if (src.width(), src.height()) == (tw, th) { src } else { shrink_then_resize(src, tw, th) };
    ctx.checkpoint()?;
    encode(out, params.str("format"), params.int("quality") as u8)
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

/// Resizes to exactly `tw × th`: axes reduced more than 2× are first
/// shrunk by area averaging to 2× the target (fast, and it bounds the
/// Lanczos pass's f32 buffer to 2·tw × th pixels), then Lanczos3.
fn shrink_then_resize(img: DynamicImage, tw: u32, th: u32) -> DynamicImage {
    let (w, h) = (img.width(), img.height());
    let pw = if w > tw.saturating_mul(2) { tw * 2 } else { w };
    let ph = if h > th.saturating_mul(2) { th * 2 } else { h };
    let img = if (pw, ph) == (w, h) { img } else { img.thumbnail_exact(pw, ph) };
    img.resize_exact(tw, th, FilterType::Lanczos3)
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
            JpegEncoder::new_with_quality(&mut out, quality).write_image(img.as_bytes(), w, h, color).map_err(enc_err)?;
            "image/jpeg"
        }
        "webp" => {
            WebPEncoder::new_lossless(&mut out).write_image(img.as_bytes(), w, h, color).map_err(enc_err)?;
            "image/webp"
        }
        _ => {
            PngEncoder::new(&mut out).write_image(img.as_bytes(), w, h, color).map_err(enc_err)?;
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
}
