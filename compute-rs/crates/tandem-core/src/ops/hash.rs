//! Digests. Every hash op outputs the raw digest bytes (not hex); integer
//! digests (xxh3_64, crc32c) are big-endian, the order `xxhsum` and
//! `crc32c` tools print.

use sha2::Digest;

use super::CHUNK;
use crate::cancel::Ctx;
use crate::error::Result;
use crate::params::Params;
use crate::registry::{Op, Output, RunFn};

pub(crate) fn ops() -> Vec<Op> {
    vec![
        op("hash.sha256", "SHA-256 digest of the input: 32 raw bytes (not hex).", sha256),
        op("hash.blake3", "BLAKE3 digest of the input: 32 raw bytes (not hex).", blake3),
        op("hash.xxh3_64", "XXH3 64-bit hash (seed 0) of the input: 8 raw bytes, big-endian.", xxh3_64),
        op("hash.crc32c", "CRC-32C (Castagnoli) of the input: 4 raw bytes, big-endian.", crc32c),
    ]
}

fn op(name: &'static str, description: &str, run: RunFn) -> Op {
    Op::bytes(name, description, Vec::new(), run)
}

fn sha256(ctx: &Ctx<'_>, _: &Params, input: &[u8]) -> Result<Output> {
    let mut h = sha2::Sha256::new();
    for chunk in input.chunks(CHUNK) {
        ctx.checkpoint()?;
        h.update(chunk);
    }
    Ok(Output::bytes(h.finalize().to_vec()))
}

fn blake3(ctx: &Ctx<'_>, _: &Params, input: &[u8]) -> Result<Output> {
    let mut h = ::blake3::Hasher::new();
    for chunk in input.chunks(CHUNK) {
        ctx.checkpoint()?;
        h.update(chunk);
    }
    Ok(Output::bytes(h.finalize().as_bytes().to_vec()))
}

fn xxh3_64(ctx: &Ctx<'_>, _: &Params, input: &[u8]) -> Result<Output> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for chunk in input.chunks(CHUNK) {
        ctx.checkpoint()?;
        h.update(chunk);
    }
    Ok(Output::bytes(h.digest().to_be_bytes().to_vec()))
}

fn crc32c(ctx: &Ctx<'_>, _: &Params, input: &[u8]) -> Result<Output> {
    let mut crc = 0u32;
    for chunk in input.chunks(CHUNK) {
        ctx.checkpoint()?;
        crc = ::crc32c::crc32c_append(crc, chunk);
    }
    Ok(Output::bytes(crc.to_be_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use crate::{Limits, Registry, StepRequest};

    fn run(op: &str, input: &[u8]) -> Vec<u8> {
        let r = Registry::new(Limits::default(), false);
        r.run(&[StepRequest::new(op)], input, &r.ctx()).unwrap().data
    }

    #[test]
    fn known_digests() {
        assert_eq!(run("hash.sha256", b"abc")[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_eq!(run("hash.sha256", b"abc").len(), 32);
        // CRC-32C check value (RFC 3720 / iSCSI): "123456789" -> 0xE3069283.
        assert_eq!(run("hash.crc32c", b"123456789"), [0xe3, 0x06, 0x92, 0x83]);
        // XXH3-64 of the empty input, seed 0.
        assert_eq!(run("hash.xxh3_64", b""), 0x2d06_8005_38d3_94c2u64.to_be_bytes());
        assert_eq!(run("hash.blake3", b"").len(), 32);
    }
}
