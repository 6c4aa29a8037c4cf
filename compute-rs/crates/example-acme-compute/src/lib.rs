//! Example: a team's own ops in Rust, served by a compute binary of its own
//! (`acme-compute`, src/main.rs) next to every built-in op, with the same
//! flags, limits, pool, metrics, errors and drain as `tandem-compute`.
//!
//! Copy this crate, rename `acme` to your team, and put your ops in
//! [`ops`]. How to declare an op (params, output, limits, cancellation,
//! errors) is documented on `tandem_core::registry`.
#![forbid(unsafe_code)]

use tandem_core::{Ctx, Op, Output, ParamSpec, Params, Result};

/// Every op Acme adds to the built-in catalogue.
pub fn ops() -> Vec<Op> {
    vec![invert()]
}

/// `acme.invert`: XORs every byte with `mask` (an int param, 0 to 255,
/// default 255: every bit inverted). Output: raw bytes, as many as the
/// input. Inverting twice with the same mask gives the input back.
pub fn invert() -> Op {
    Op::bytes(
        "acme.invert",
        "XORs every byte of the input with mask (255, the default, inverts every bit). Output: as many bytes as the \
         input.",
        vec![ParamSpec::int("mask", "XOR mask, one byte.", 255, 0, 255)],
        run_invert,
    )
    .with_version("1.0.0")
}

fn run_invert(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    // Within 0..=255: the ParamSpec refused anything else before this ran.
    let mask = params.int("mask") as u8;
    let mut out = Vec::with_capacity(input.len());
    // In chunks, checking between them, so a cancelled call or one past its
    // deadline stops here instead of holding its pool worker.
    for chunk in input.chunks(tandem_core::ops::CHUNK) {
        ctx.checkpoint()?;
        out.extend(chunk.iter().map(|b| b ^ mask));
    }
    Ok(Output::bytes(out))
}

#[cfg(test)]
mod tests {
    use tandem_core::{Limits, Registry, StepRequest};

    #[test]
    fn inverts_and_round_trips() {
        let reg = Registry::new(Limits::default(), false).with_op(super::invert()).unwrap();
        let run = |steps: &[StepRequest], input: &[u8]| reg.run(steps, input, &reg.ctx()).unwrap().data;
        assert_eq!(run(&[StepRequest::new("acme.invert")], &[0x00, 0xff, 0x5a]), [0xff, 0x00, 0xa5]);
        assert_eq!(run(&[StepRequest::new("acme.invert").param("mask", "15")], &[0x00, 0xf0]), [0x0f, 0xff]);
        assert_eq!(run(&[StepRequest::new("acme.invert").param("mask", "0")], b"same"), b"same");
        let twice =
            [StepRequest::new("acme.invert").param("mask", "77"), StepRequest::new("acme.invert").param("mask", "77")];
        let input: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        assert_eq!(run(&twice, &input), input, "3 MiB: several chunks");
    }
}
