//! Compression and capped decompression. Every decompressor stops at its
//! `max_output_bytes` (at most the server's max_output_bytes), so a bomb
//! costs memory bounded by the cap, never by what the stream claims.

use std::io::{Read, Write};

use super::CHUNK;
use crate::cancel::Ctx;
use crate::error::{Error, Result};
use crate::limits::{DEFAULT_DECOMPRESS_OUTPUT_BYTES, Limits};
use crate::params::{ParamSpec, Params};
use crate::registry::{Op, Output};

pub(crate) fn ops(limits: &Limits) -> Vec<Op> {
    let cap = i64::try_from(limits.max_output_bytes).unwrap_or(i64::MAX);
    let max_out = ParamSpec::int(
        "max_output_bytes",
        "Fail with OUTPUT_TOO_LARGE when the decompressed output would exceed this many bytes.",
        (DEFAULT_DECOMPRESS_OUTPUT_BYTES as i64).min(cap),
        1,
        cap,
    );
    vec![
        Op::bytes(
            "compress.zstd",
            "Zstandard-compresses the input into one frame (with content size).",
            vec![ParamSpec::int("level", "Compression level.", 3, 1, 22)],
            compress_zstd,
        ),
        Op::bytes(
            "decompress.zstd",
            "Decompresses Zstandard frames (concatenated frames allowed), capped at max_output_bytes.",
            vec![max_out.clone()],
            decompress_zstd,
        ),
        Op::bytes(
            "compress.gzip",
            "Gzip-compresses the input (RFC 1952, no file name, mtime 0).",
            vec![ParamSpec::int("level", "Compression level (0 = store).", 6, 0, 9)],
            compress_gzip,
        ),
        Op::bytes(
            "decompress.gzip",
            "Decompresses gzip (multi-member allowed), capped at max_output_bytes.",
            vec![max_out.clone()],
            decompress_gzip,
        ),
        Op::bytes(
            "compress.lz4",
            "LZ4-compresses the input in the LZ4 frame format (what the lz4 command line tool reads), with a content checksum.",
            Vec::new(),
            compress_lz4,
        ),
        Op::bytes(
            "decompress.lz4",
            "Decompresses the LZ4 frame format, capped at max_output_bytes.",
            vec![max_out],
            decompress_lz4,
        ),
    ]
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Internal { detail: format!("{what}: {e}") }
}

/// Feeds `input` to `w` in chunks, checking for cancellation.
fn write_chunked<W: Write>(ctx: &Ctx<'_>, w: &mut W, input: &[u8], what: &str) -> Result<()> {
    for chunk in input.chunks(CHUNK) {
        ctx.checkpoint()?;
        w.write_all(chunk).map_err(|e| internal(what, e))?;
    }
    Ok(())
}

/// Reads `r` to the end, failing once more than `cap` bytes come out.
fn read_capped<R: Read>(ctx: &Ctx<'_>, mut r: R, cap: u64, format: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        ctx.checkpoint()?;
        let n = match r.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::corrupt(format!("{format}: {e}"))),
        };
        if n == 0 {
            return Ok(out);
        }
        if (out.len() + n) as u64 > cap {
            return Err(Error::OutputTooLarge {
                what: "decompressed output".to_owned(),
                unit: "bytes",
                param: Some("max_output_bytes".to_owned()),
                limit: cap,
                actual: None,
            });
        }
        if out.len() + n > out.capacity() {
            // Grow by doubling, but never past the cap: memory stays bounded
            // by the cap, not by twice it.
            let want = (out.capacity() * 2).max(out.len() + n).min(cap as usize);
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn non_empty(input: &[u8], format: &str) -> Result<()> {
    if input.is_empty() {
        return Err(Error::corrupt(format!("{format}: empty input")));
    }
    Ok(())
}

fn cap(params: &Params) -> u64 {
    params.int("max_output_bytes") as u64
}

fn compress_zstd(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let level = params.int("level") as i32;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level).map_err(|e| internal("zstd", e))?;
    enc.include_contentsize(true).map_err(|e| internal("zstd", e))?;
    enc.set_pledged_src_size(Some(input.len() as u64)).map_err(|e| internal("zstd", e))?;
    write_chunked(ctx, &mut enc, input, "zstd")?;
    Ok(Output::bytes(enc.finish().map_err(|e| internal("zstd", e))?))
}

fn decompress_zstd(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    non_empty(input, "zstd")?;
    let mut dec = zstd::stream::read::Decoder::with_buffer(input).map_err(|e| internal("zstd", e))?;
    // Bounds the decoder's window (and so its memory) at 128 MiB.
    dec.window_log_max(27).map_err(|e| internal("zstd", e))?;
    read_capped(ctx, dec, cap(params), "zstd").map(Output::bytes)
}

fn compress_gzip(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let level = flate2::Compression::new(params.int("level") as u32);
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), level);
    write_chunked(ctx, &mut enc, input, "gzip")?;
    Ok(Output::bytes(enc.finish().map_err(|e| internal("gzip", e))?))
}

fn decompress_gzip(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    non_empty(input, "gzip")?;
    read_capped(ctx, flate2::read::MultiGzDecoder::new(input), cap(params), "gzip").map(Output::bytes)
}

fn compress_lz4(ctx: &Ctx<'_>, _: &Params, input: &[u8]) -> Result<Output> {
    let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    write_chunked(ctx, &mut enc, input, "lz4")?;
    Ok(Output::bytes(enc.finish().map_err(|e| internal("lz4", e))?))
}

fn decompress_lz4(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    non_empty(input, "lz4")?;
    read_capped(ctx, lz4_flex::frame::FrameDecoder::new(input), cap(params), "lz4").map(Output::bytes)
}
