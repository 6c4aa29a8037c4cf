//! The built-in op catalogue (docs/OPS.md). Each module registers its ops in
//! `catalogue`.

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

/// The first name token of every built-in op: reserved for Tandem's own ops
/// ([`Registry::with_op`](crate::Registry::with_op) refuses them).
pub(crate) const NAMESPACES: [&str; 7] = ["chunk", "compress", "debug", "decompress", "hash", "image", "text"];

/// The built-in ops work through their input in chunks of this size and
/// call [`Ctx::checkpoint`](crate::Ctx::checkpoint) between chunks, so a
/// cancelled or expired call stops within about a millisecond (1 MiB ≈
/// 0.5 ms of sha256). A good default for a team's own ops too.
pub const CHUNK: usize = 1 << 20;
