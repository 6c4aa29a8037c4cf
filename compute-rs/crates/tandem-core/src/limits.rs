//! Server-side limits. Every number here bounds memory or time that an
//! untrusted request can cost; each is reported by ListOps.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_request_bytes: u64,
    pub max_output_bytes: u64,
    pub max_steps: u32,
    pub max_batch_items: u32,
    pub max_image_pixels: u64,
    pub max_image_dimension: u32,
    /// CPU workers (0 where there is no pool, e.g. the native module).
    pub workers: u32,
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
