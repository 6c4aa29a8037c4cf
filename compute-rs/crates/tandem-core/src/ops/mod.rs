//! The op catalogue. Each module registers its ops in [`catalogue`].

use crate::limits::Limits;
use crate::registry::Op;

mod chunk;
mod compress;
mod debug;
mod hash;
pub mod image;
mod text;

/// Every op (debug ones included), sorted by name.
pub(crate) fn catalogue(limits: &Limits) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(hash::ops());
    ops.extend(compress::ops(limits));
    ops.extend(image::ops(limits));
    ops.extend(chunk::ops());
    ops.extend(text::ops());
    ops.extend(debug::ops());
    ops.sort_by_key(|op| op.name);
    ops
}

/// Hashes/compressors take input in chunks of this size so long inputs
/// check for cancellation often (1 MiB ≈ 0.5 ms of sha256).
pub(crate) const CHUNK: usize = 1 << 20;
