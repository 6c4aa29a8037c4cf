//! Server-side limits. Every number here bounds memory or time that an
//! untrusted request can cost; each is reported by ListOps. Also the one
//! capped reader ([`read_capped`]) that every decoder's output goes through.

use std::io::Read;

use crate::cancel::Ctx;
use crate::error::{Error, Result};

/// 64 MiB: the largest request the gRPC server accepts (after gRPC
/// decompression). Matches `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 64 << 20;
/// 256 MiB: the largest output one step may produce. Decompression stops at
/// this (or at the smaller `max_output_bytes` param), so a bomb costs at most
/// this much memory per request.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 256 << 20;
/// 64 MiB: what decompress ops allow when the request sets no
/// `max_output_bytes` param.
pub const DEFAULT_DECOMPRESS_OUTPUT_BYTES: u64 = 64 << 20;
/// 16 steps per pipeline is far more than any real pipeline needs.
pub const DEFAULT_MAX_STEPS: u32 = 16;
/// 4096 items per TransformBatch call.
pub const DEFAULT_MAX_BATCH_ITEMS: u32 = 4096;
/// 64 megapixels (8192 × 8192): 256 MiB as RGBA8.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 64 << 20;
/// 16384 px per side.
pub const DEFAULT_MAX_IMAGE_DIMENSION: u32 = 16384;

/// The limits in force for one registry (one server or one native module).
/// An op reads them from [`Ctx::limits`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message, after gRPC decompression
    /// (`PAYLOAD_TOO_LARGE`; enforced by the gRPC server before any op runs).
    pub max_request_bytes: u64,
    /// Largest output of any one step (`OUTPUT_TOO_LARGE`; checked by the
    /// runner when the op returns). Also the upper bound of every
    /// `max_output_bytes` param.
    pub max_output_bytes: u64,
    /// Steps per pipeline (`REQUEST_INVALID`).
    pub max_steps: u32,
    /// Items per TransformBatch call (`REQUEST_INVALID`).
    pub max_batch_items: u32,
    /// Pixels of a decoded image, from its header (`OUTPUT_TOO_LARGE`).
    pub max_image_pixels: u64,
    /// Width or height of a decoded image, from its header.
    pub max_image_dimension: u32,
    /// CPU workers (0 where there is no pool, e.g. the native module).
    pub workers: u32,
    /// Requests that may wait for a worker (0 where there is no pool).
    pub queue_depth: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_steps: DEFAULT_MAX_STEPS,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_image_dimension: DEFAULT_MAX_IMAGE_DIMENSION,
            workers: 0,
            queue_depth: 0,
        }
    }
}

impl Limits {
    /// Allocation cap handed to the image decoder: the pixel cap at 16-bit
    /// RGBA (8 bytes per pixel) plus 16 MiB of decoder slack.
    pub fn max_image_alloc(&self) -> u64 {
        self.max_image_pixels.saturating_mul(8).saturating_add(16 << 20)
    }
}

/// Reads `r` (a decoder) to its end, failing with `OUTPUT_TOO_LARGE` as soon
/// as more than `cap` bytes come out, so memory stays bounded by `cap`
/// whatever the input claims (a decompression bomb costs at most `cap`). It
/// calls [`Ctx::checkpoint`] every 64 KiB; a read error is `INPUT_CORRUPT`
/// ("`format`: error"). The error names the param `max_output_bytes`: give
/// an op that expands its input a param of that name, as the built-in
/// decompressors do, and pass its value (at most
/// [`Limits::max_output_bytes`]) as `cap`.
pub fn read_capped<R: Read>(ctx: &Ctx<'_>, r: R, cap: u64, format: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    read_capped_into(ctx, r, cap, format, &mut out)?;
    Ok(out)
}

/// Appends `r` to `out` up to the end of `r`, failing once `out` would hold
/// more than `cap` bytes (the cap counts what `out` already holds).
pub(crate) fn read_capped_into<R: Read>(
    ctx: &Ctx<'_>,
    mut r: R,
    cap: u64,
    format: &str,
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        ctx.checkpoint()?;
        let n = match r.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::corrupt(format!("{format}: {e}"))),
        };
        if n == 0 {
            return Ok(());
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
