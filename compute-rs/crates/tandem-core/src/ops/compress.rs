//! Compression and capped decompression. Every decompressor stops at its
//! `max_output_bytes` (at most the server's max_output_bytes), so a bomb
//! costs memory bounded by the cap, never by what the stream claims.
//!
//! Every decompressor reads the whole input: concatenated frames (zstd, lz4)
//! or members (gzip) all decode, the cap holds over all of them together,
//! and bytes after the last complete frame that are not a frame are
//! `INPUT_CORRUPT`, as is a stream cut anywhere before its end.

use std::io::Write;

use super::CHUNK;
use crate::cancel::Ctx;
use crate::error::{Error, Result};
use crate::limits::{DEFAULT_DECOMPRESS_OUTPUT_BYTES, Limits, read_capped, read_capped_into};
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
            "LZ4-compresses the input into one LZ4 frame (the format the lz4 command line tool reads) of independent \
             64 KiB blocks, with a content checksum.",
            Vec::new(),
            compress_lz4,
        ),
        Op::bytes(
            "decompress.lz4",
            "Decompresses LZ4 frames (concatenated frames allowed, skippable frames skipped), capped at \
             max_output_bytes.",
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
    // Fixed, not lz4_flex's `Auto` (which picks the block size from the size
    // of the first write): 64 KiB independent blocks whatever the input, as
    // docs/OPS.md promises; any decoder needs only a 64 KiB block buffer.
    let info = lz4_flex::frame::FrameInfo::new()
        .block_size(lz4_flex::frame::BlockSize::Max64KB)
        .block_mode(lz4_flex::frame::BlockMode::Independent)
        .content_checksum(true);
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    write_chunked(ctx, &mut enc, input, "lz4")?;
    Ok(Output::bytes(enc.finish().map_err(|e| internal("lz4", e))?))
}

/// Frame magic numbers (LZ4 frame format, lz4_Frame_format.md).
const LZ4_MAGIC: u32 = 0x184D_2204;
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_SKIPPABLE_MAGIC: std::ops::RangeInclusive<u32> = 0x184D_2A50..=0x184D_2A5F;
/// A legacy frame's largest compressed block, LZ4_COMPRESSBOUND(8 MiB): a
/// larger "block size" is the magic number of the next frame, as the lz4
/// tool reads it.
const LZ4_LEGACY_MAX_BLOCK: u32 = (8 << 20) + (8 << 20) / 255 + 16;

/// What the next frame of an lz4 input is, and its length in bytes.
#[derive(Debug, PartialEq, Eq)]
enum Lz4Frame {
    /// An LZ4 frame (or a legacy frame) to decode.
    Data(usize),
    /// A skippable frame (user data), skipped as the lz4 tool does.
    Skippable(usize),
}

fn lz4_truncated() -> Error {
    Error::corrupt("lz4: truncated frame")
}

/// The little-endian u32 at `at`, or a truncated-frame error.
fn le32(b: &[u8], at: usize) -> Result<u32> {
    match b.get(at..at.saturating_add(4)) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(lz4_truncated()),
    }
}

/// Walks the frame at the start of `rest` (header, block sizes, end mark,
/// checksums: no decoding) and returns its kind and exact length. The
/// decoder then gets exactly that frame, so a frame cut short (even at a
/// block boundary, which `lz4_flex`'s reader takes for the end) and bytes
/// after it are both seen here. `frames` is how many frames came before.
fn lz4_frame(rest: &[u8], frames: usize) -> Result<Lz4Frame> {
    let bad = || {
        if frames == 0 {
            Error::corrupt("lz4: not an LZ4 frame (bad magic number)")
        } else {
            Error::corrupt(format!("lz4: the {} bytes after frame {frames} are not an LZ4 frame", rest.len()))
        }
    };
    let magic = match le32(rest, 0) {
        Ok(m) => m,
        Err(_) => return Err(bad()),
    };
    let end = match magic {
        LZ4_MAGIC => {
            let (flg, _bd) = match rest.get(4..6) {
                Some(&[flg, bd]) => (flg, bd),
                _ => return Err(lz4_truncated()),
            };
            let block_checksums = flg & 0x10 != 0;
            // Header: magic, FLG, BD, content size (8, if flagged), dict id
            // (4, if flagged), header checksum (1).
            let mut at = 6 + if flg & 0x08 != 0 { 8 } else { 0 } + if flg & 0x01 != 0 { 4 } else { 0 } + 1;
            loop {
                let size = le32(rest, at)?;
                at += 4;
                if size == 0 {
                    break; // EndMark
                }
                let len = (size & 0x7FFF_FFFF) as usize + if block_checksums { 4 } else { 0 };
                at = at.saturating_add(len);
                if at > rest.len() {
                    return Err(lz4_truncated());
                }
            }
            at + if flg & 0x04 != 0 { 4 } else { 0 }
        }
        LZ4_LEGACY_MAGIC => {
            // Blocks of (compressed size, data) up to the end of the input
            // or the next frame's magic number.
            let mut at = 4;
            while at < rest.len() {
                let size = le32(rest, at)?;
                if size > LZ4_LEGACY_MAX_BLOCK {
                    break;
                }
                at = at.saturating_add(4 + size as usize);
            }
            at
        }
        m if LZ4_SKIPPABLE_MAGIC.contains(&m) => {
            let end = 8usize.saturating_add(le32(rest, 4)? as usize);
            if end > rest.len() {
                return Err(lz4_truncated());
            }
            return Ok(Lz4Frame::Skippable(end));
        }
        _ => return Err(bad()),
    };
    if end > rest.len() {
        return Err(lz4_truncated());
    }
    Ok(Lz4Frame::Data(end))
}

fn decompress_lz4(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    non_empty(input, "lz4")?;
    let cap = cap(params);
    let mut out = Vec::new();
    let mut rest = input;
    let mut frames = 0;
    while !rest.is_empty() {
        ctx.checkpoint()?;
        let len = match lz4_frame(rest, frames)? {
            Lz4Frame::Skippable(len) => len,
            Lz4Frame::Data(len) => {
                // Given exactly one frame that lz4_frame has walked to its
                // end mark (clippy.toml bans the decoder elsewhere).
                #[allow(clippy::disallowed_methods)]
                let mut dec = lz4_flex::frame::FrameDecoder::new(&rest[..len]);
                read_capped_into(ctx, &mut dec, cap, "lz4", &mut out)?;
                if !dec.get_ref().is_empty() {
                    return Err(Error::corrupt("lz4: frame ends before its end mark"));
                }
                len
            }
        };
        rest = &rest[len..];
        frames += 1;
    }
    Ok(Output::bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, Reason, Registry, StepRequest};

    const FORMATS: [&str; 3] = ["zstd", "gzip", "lz4"];

    fn run(op: &str, params: &[(&str, &str)], input: &[u8]) -> Result<Vec<u8>> {
        let reg = Registry::new(Limits::default(), false);
        let mut step = StepRequest::new(op);
        for (k, v) in params {
            step = step.param(*k, *v);
        }
        reg.run(&[step], input, &reg.ctx()).map(|o| o.data)
    }

    fn compress(fmt: &str, data: &[u8]) -> Vec<u8> {
        run(&format!("compress.{fmt}"), &[], data).unwrap()
    }

    fn decompress(fmt: &str, data: &[u8]) -> Result<Vec<u8>> {
        run(&format!("decompress.{fmt}"), &[], data)
    }

    fn reason(r: Result<Vec<u8>>) -> Option<Reason> {
        r.err().map(|e| e.reason())
    }

    #[test]
    fn concatenated_frames_all_decode() {
        for fmt in FORMATS {
            let mut two = compress(fmt, b"hello ");
            two.extend(compress(fmt, b""));
            two.extend(compress(fmt, b"world"));
            assert_eq!(decompress(fmt, &two).unwrap(), b"hello world", "{fmt}");
        }
        // What `lz4` and other streaming writers produce: many frames.
        let mut many = Vec::new();
        let mut want: Vec<u8> = Vec::new();
        for i in 0..300u32 {
            let part = i.to_string().repeat(i as usize % 7);
            many.extend(compress("lz4", part.as_bytes()));
            want.extend(part.as_bytes());
        }
        assert_eq!(decompress("lz4", &many).unwrap(), want);
    }

    #[test]
    fn lz4_skippable_frames_are_skipped() {
        let mut data = compress("lz4", b"ab");
        data.extend(0x184D_2A5Fu32.to_le_bytes());
        data.extend(3u32.to_le_bytes());
        data.extend(b"xyz");
        data.extend(compress("lz4", b"cd"));
        assert_eq!(decompress("lz4", &data).unwrap(), b"abcd");
        // A skippable frame that claims more than there is.
        let mut cut = compress("lz4", b"ab");
        cut.extend(0x184D_2A50u32.to_le_bytes());
        cut.extend(10u32.to_le_bytes());
        cut.extend(b"xyz");
        assert_eq!(reason(decompress("lz4", &cut)), Some(Reason::InputCorrupt));
    }

    #[test]
    fn trailing_garbage_is_input_corrupt() {
        for fmt in FORMATS {
            let good = compress(fmt, b"some data to compress");
            let magic = good[..4].to_vec();
            for tail in [&b"x"[..], b"\0", b"\0\0\0\0", b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", b"not compressed", &magic]
            {
                let mut data = good.clone();
                data.extend_from_slice(tail);
                assert_eq!(reason(decompress(fmt, &data)), Some(Reason::InputCorrupt), "{fmt} + {tail:?}");
            }
        }
    }

    /// Two frames (members) back to back, cut at every length: only the
    /// whole input and the exact end of the first frame decode.
    #[test]
    fn every_cut_is_corrupt_except_at_a_frame_end() {
        let first: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
        let second = b"second frame, second frame, second frame".to_vec();
        for fmt in FORMATS {
            let a = compress(fmt, &first);
            let b = compress(fmt, &second);
            let both = [a.clone(), b].concat();
            for cut in 1..both.len() {
                let got = decompress(fmt, &both[..cut]);
                if cut == a.len() {
                    assert_eq!(got.unwrap(), first, "{fmt}: the first frame alone");
                } else {
                    assert_eq!(reason(got), Some(Reason::InputCorrupt), "{fmt} cut at {cut} of {}", both.len());
                }
            }
            assert_eq!(decompress(fmt, &both).unwrap(), [first.clone(), second.clone()].concat());
        }
    }

    #[test]
    fn the_cap_holds_across_frames() {
        for fmt in FORMATS {
            let part = vec![b'z'; 600];
            let two = [compress(fmt, &part), compress(fmt, &part)].concat();
            let capped =
                |cap: usize| run(&format!("decompress.{fmt}"), &[("max_output_bytes", &cap.to_string())], &two);
            assert_eq!(reason(capped(1199)), Some(Reason::OutputTooLarge), "{fmt}");
            assert_eq!(capped(1200).unwrap().len(), 1200, "{fmt}");
        }
    }

    /// compress.lz4 writes what docs/OPS.md says: one frame of independent
    /// 64 KiB blocks with a content checksum, whatever the input size.
    #[test]
    fn compress_lz4_writes_independent_64k_blocks() {
        for len in [10usize, 64 << 10, (5 << 20) + 3] {
            let input: Vec<u8> = (0..len).map(|i| (i % 253) as u8 ^ (i >> 12) as u8).collect();
            let out = compress("lz4", &input);
            assert_eq!(lz4_frame(&out, 0).unwrap(), Lz4Frame::Data(out.len()), "one frame");
            let (flg, bd) = (out[4], out[5]);
            assert_eq!(flg & 0x20, 0x20, "independent blocks");
            assert_eq!(flg & 0x04, 0x04, "content checksum");
            assert_eq!(bd, 0x40, "64 KiB maximum block size");
            let mut at = 7 + if flg & 0x08 != 0 { 8 } else { 0 };
            let mut blocks = 0;
            loop {
                let size = le32(&out, at).unwrap();
                at += 4;
                if size == 0 {
                    break;
                }
                let block = (size & 0x7FFF_FFFF) as usize;
                assert!(block <= 64 << 10, "block of {block} bytes");
                at += block;
                blocks += 1;
            }
            assert_eq!(blocks, len.div_ceil(64 << 10), "{len} bytes");
            assert_eq!(decompress("lz4", &out).unwrap(), input);
        }
    }

    /// `lz4 -l`: the legacy frame, blocks up to the end of the input or
    /// the next frame's magic number.
    #[test]
    fn lz4_legacy_frames_decode() {
        let mut legacy = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for part in [&b"hello legacy "[..], b"world"] {
            let block = lz4_flex::block::compress(part);
            legacy.extend((block.len() as u32).to_le_bytes());
            legacy.extend(block);
        }
        assert_eq!(decompress("lz4", &legacy).unwrap(), b"hello legacy world");
        let then_modern = [legacy.clone(), compress("lz4", b"!")].concat();
        assert_eq!(decompress("lz4", &then_modern).unwrap(), b"hello legacy world!");
        for cut in [legacy.len() - 1, legacy.len() - 3, 6] {
            assert_eq!(reason(decompress("lz4", &legacy[..cut])), Some(Reason::InputCorrupt), "cut at {cut}");
        }
    }

    #[test]
    fn many_tiny_lz4_frames_decode() {
        let empty = compress("lz4", b"");
        let data = empty.repeat((1 << 20) / empty.len());
        assert_eq!(decompress("lz4", &data).unwrap(), b"");
    }
}
