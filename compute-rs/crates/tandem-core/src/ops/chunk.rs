//! `chunk.fastcdc`: content-defined chunking (FastCDC 2020) with a BLAKE3
//! fingerprint per chunk.

use fastcdc::v2020::{self, FastCDC};
use serde::Serialize;

use crate::cancel::Ctx;
use crate::error::{Error, Quoted, Result};
use crate::params::{ParamSpec, Params};
use crate::registry::{Op, Output};

/// Output encoding of chunk.fastcdc.
pub const ENCODING: &str = "tandem.chunks.v1 (JSON)";

pub(crate) fn ops() -> Vec<Op> {
    vec![Op::json(
        "chunk.fastcdc",
        "Splits the input into content-defined chunks (FastCDC 2020). Output: JSON {\"chunks\": \
         [{\"offset\", \"length\", \"blake3\" (hex)}]}, covering the input exactly, in order.",
        ENCODING,
        vec![
            ParamSpec::int(
                "min_size",
                "Smallest chunk in bytes (except the last; an odd value is rounded down to even).",
                16 << 10,
                i64::from(v2020::MINIMUM_MIN),
                i64::from(v2020::MINIMUM_MAX),
            ),
            ParamSpec::int(
                "avg_size",
                "Target average chunk size in bytes.",
                64 << 10,
                i64::from(v2020::AVERAGE_MIN),
                i64::from(v2020::AVERAGE_MAX),
            ),
            ParamSpec::int(
                "max_size",
                "Largest chunk in bytes.",
                256 << 10,
                i64::from(v2020::MAXIMUM_MIN),
                i64::from(v2020::MAXIMUM_MAX),
            ),
        ],
        fastcdc,
    )]
}

#[derive(Serialize)]
struct Chunk {
    offset: u64,
    length: u64,
    blake3: String,
}

#[derive(Serialize)]
struct Chunks {
    chunks: Vec<Chunk>,
}

fn fastcdc(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let min = params.int("min_size");
    let avg = params.int("avg_size");
    let max = params.int("max_size");
    if !(min <= avg && avg <= max) {
        return Err(Error::ParamInvalid {
            param: Quoted::new("avg_size"),
            detail: format!("sizes must satisfy min_size ≤ avg_size ≤ max_size (got {min}, {avg}, {max})"),
        });
    }
    let mut chunks = Vec::new();
    for c in FastCDC::new(input, min as u32, avg as u32, max as u32) {
        ctx.checkpoint()?;
        let hash = blake3::hash(&input[c.offset..c.offset + c.length]);
        chunks.push(Chunk { offset: c.offset as u64, length: c.length as u64, blake3: hash.to_hex().to_string() });
    }
    Output::json(&Chunks { chunks })
}
