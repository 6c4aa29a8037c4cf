//! Test-only ops, served only with `--enable-debug-ops` (`debug_ops=True`
//! natively). Each passes its input through unchanged when it does not fail.

use std::time::{Duration, Instant};

use crate::cancel::Ctx;
use crate::error::{Code, Error, Result};
use crate::params::{ParamSpec, Params};
use crate::registry::{Op, Output, RunFn};

pub(crate) fn ops() -> Vec<Op> {
    let codes: Vec<&'static str> = Code::ALL.iter().filter(|c| **c != Code::Ok).map(|c| c.as_str()).collect();
    vec![
        op(
            "debug.sleep",
            "Sleeps for ms milliseconds without using CPU (stops early when the call is cancelled or its deadline passes).",
            vec![ParamSpec::int("ms", "Milliseconds to sleep.", 1000, 0, 600_000)],
            sleep,
        ),
        op(
            "debug.burn",
            "Keeps one CPU busy for ms milliseconds (stops early when the call is cancelled or its deadline passes).",
            vec![ParamSpec::int("ms", "Milliseconds of CPU to burn.", 100, 0, 600_000)],
            burn,
        ),
        op(
            "debug.fail",
            "Fails with reason INJECTED_FAULT and the chosen gRPC code, optionally only while the job's attempt \
             number is at most until_attempt.",
            vec![
                ParamSpec { choices: codes, ..ParamSpec::choice("code", "gRPC status code name.", "UNAVAILABLE", &[]) },
                ParamSpec::int(
                    "until_attempt",
                    "Fail only while TransformRequest.attempt ≤ this (0: always fail).",
                    0,
                    0,
                    1_000_000,
                ),
                ParamSpec::string("message", "Text of the error.", "injected fault", 1024),
            ],
            fail,
        ),
        op("debug.panic", "Panics inside the op (the service answers INTERNAL and keeps serving).", Vec::new(), panic),
    ]
}

fn op(name: &'static str, description: &str, params: Vec<ParamSpec>, run: RunFn) -> Op {
    Op::bytes(name, description, params, run).debug_only()
}

fn pass(input: &[u8]) -> Result<Output> {
    Ok(Output::bytes(input.to_vec()))
}

fn sleep(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let until = Instant::now() + Duration::from_millis(params.int("ms") as u64);
    loop {
        ctx.checkpoint()?;
        let now = Instant::now();
        if now >= until {
            return pass(input);
        }
        std::thread::sleep((until - now).min(Duration::from_millis(5)));
    }
}

fn burn(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let until = Instant::now() + Duration::from_millis(params.int("ms") as u64);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < until {
        ctx.checkpoint()?;
        for _ in 0..10_000 {
            x = x.rotate_left(5) ^ x.wrapping_mul(0x0100_0000_01b3);
        }
        std::hint::black_box(x);
    }
    pass(input)
}

fn fail(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
    let until = params.int("until_attempt");
    if until == 0 || i64::from(ctx.attempt) <= until {
        let code = Code::from_name(params.str("code")).unwrap_or(Code::Unavailable);
        return Err(Error::InjectedFault { code, message: params.str("message").to_owned() });
    }
    pass(input)
}

fn panic(_: &Ctx<'_>, _: &Params, _: &[u8]) -> Result<Output> {
    panic!("debug.panic was asked to panic");
}
