//! The identifier limits every API edge checks, before anything else: op
//! names, param names and values, job ids. The same limits as the
//! orchestrator's (`orchestrator-go/internal/ident`, documented in
//! docs/ARCHITECTURE.md "Identifiers"), so a request gets the same answer
//! from the orchestrator, from compute and from `tandem._native`: a
//! violation is `REQUEST_INVALID` (INVALID_ARGUMENT) naming the field
//! (`steps[0].op`, `steps[0].params`, `steps[0].params[level]`, `job_id`)
//! and the limit, before any op is looked up.
//!
//! [`Registry::prepare`](crate::Registry::prepare) checks the steps; the
//! gRPC server checks `TransformRequest.job_id` with [`check_job_id`].

use crate::error::{Error, Quoted, Result};
use crate::params::{MAX_PARAM_NAME_BYTES, MAX_PARAM_VALUE_BYTES, MAX_PARAMS};
use crate::registry::{MAX_OP_NAME_BYTES, StepRequest};

/// Longest job id (`TransformRequest.job_id`), in bytes. Ids the
/// orchestrator makes are 26-character ULIDs.
pub const MAX_JOB_ID_BYTES: usize = 64;

/// The alphabet of job ids: one NATS subject token, one KV key segment.
pub const TOKEN_ALPHABET: &str = "A-Z a-z 0-9 _ -";
/// The alphabet of op names and param names.
pub const NAME_ALPHABET: &str = "A-Z a-z 0-9 _ - .";

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn is_name_byte(b: u8) -> bool {
    is_token_byte(b) || b == b'.'
}

fn bad(field: &str, detail: String, limit: usize, value: &str) -> Error {
    Error::IdentifierInvalid { field: field.to_owned(), detail, limit: limit as u64, value: Quoted::new(value) }
}

/// 1 to `max` bytes, each one `ok`.
fn check_bytes(field: &str, v: &str, max: usize, alphabet: &str, ok: fn(u8) -> bool) -> Result<()> {
    if v.is_empty() {
        return Err(bad(field, format!("must be 1 to {max} characters of {alphabet}, is empty"), max, v));
    }
    check_len(field, v, max)?;
    match v.bytes().position(|b| !ok(b)) {
        Some(i) => Err(bad(field, format!("character {i} is not one of {alphabet}"), max, v)),
        None => Ok(()),
    }
}

fn check_len(field: &str, v: &str, max: usize) -> Result<()> {
    if v.len() > max {
        return Err(bad(field, format!("is {} bytes, longer than {max}", v.len()), max, v));
    }
    Ok(())
}

/// An op name: 1 to [`MAX_OP_NAME_BYTES`] of [`NAME_ALPHABET`] in
/// dot-separated tokens (none empty: no leading, trailing or double dot).
pub fn check_op(field: &str, v: &str) -> Result<()> {
    check_bytes(field, v, MAX_OP_NAME_BYTES, NAME_ALPHABET, is_name_byte)?;
    if v.split('.').any(str::is_empty) {
        return Err(bad(field, "has an empty dot-separated token".to_owned(), MAX_OP_NAME_BYTES, v));
    }
    Ok(())
}

/// A param name: 1 to [`MAX_PARAM_NAME_BYTES`] of [`NAME_ALPHABET`].
pub fn check_param_name(field: &str, v: &str) -> Result<()> {
    check_bytes(field, v, MAX_PARAM_NAME_BYTES, NAME_ALPHABET, is_name_byte)
}

/// A param value: at most [`MAX_PARAM_VALUE_BYTES`] of UTF-8 (a `&str`
/// always is) without control characters (U+0000–U+001F, U+007F–U+009F);
/// empty is allowed. An op's [`ParamSpec`](crate::ParamSpec) may allow less.
pub fn check_param_value(field: &str, v: &str) -> Result<()> {
    check_len(field, v, MAX_PARAM_VALUE_BYTES)?;
    match v.char_indices().find(|(_, c)| c.is_control()) {
        Some((i, _)) => Err(bad(field, format!("has a control character at byte {i}"), MAX_PARAM_VALUE_BYTES, v)),
        None => Ok(()),
    }
}

/// A job id as `TransformRequest.job_id` carries it: empty (a direct call)
/// or 1 to [`MAX_JOB_ID_BYTES`] of [`TOKEN_ALPHABET`].
pub fn check_job_id(field: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        return Ok(());
    }
    check_bytes(field, v, MAX_JOB_ID_BYTES, TOKEN_ALPHABET, is_token_byte)
}

/// Every identifier of a pipeline, step by step: the op name, the number of
/// params (at most [`MAX_PARAMS`]), each param name then its value (in name
/// order). Not their meaning: [`Registry::prepare`](crate::Registry::prepare)
/// looks the ops and params up afterwards.
pub fn check_steps(steps: &[StepRequest]) -> Result<()> {
    for (i, step) in steps.iter().enumerate() {
        check_op(&format!("steps[{i}].op"), &step.op)?;
        let field = format!("steps[{i}].params");
        if step.params.len() > MAX_PARAMS {
            return Err(Error::RequestInvalid {
                detail: format!("{field}: {} params, more than {MAX_PARAMS}", step.params.len()),
                field,
                limit: Some(MAX_PARAMS as u64),
                actual: Some(step.params.len() as u64),
            });
        }
        for (name, value) in &step.params {
            check_param_name(&field, name)?;
            // The name is valid here: at most 64 bytes of the name alphabet.
            check_param_value(&format!("{field}[{name}]"), value)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Code, Reason};

    /// The error is REQUEST_INVALID / INVALID_ARGUMENT naming `field`.
    fn refused(r: Result<()>, field: &str) -> Error {
        let e = r.expect_err(field);
        assert_eq!((e.reason(), e.code()), (Reason::RequestInvalid, Code::InvalidArgument), "{e}");
        assert_eq!(e.metadata()["field"], field, "{e}");
        e
    }

    fn one(op: &str, params: &[(&str, &str)]) -> Vec<StepRequest> {
        let mut s = StepRequest::new(op);
        for (k, v) in params {
            s = s.param(*k, *v);
        }
        vec![s]
    }

    #[test]
    fn op_names_at_the_limit() {
        let at = |n: usize| "x".repeat(n);
        assert!(check_steps(&one(&at(MAX_OP_NAME_BYTES - 1), &[])).is_ok());
        assert!(check_steps(&one(&at(MAX_OP_NAME_BYTES), &[])).is_ok());
        let e = refused(check_steps(&one(&at(MAX_OP_NAME_BYTES + 1), &[])), "steps[0].op");
        assert_eq!(
            e.to_string(),
            format!("steps[0].op: is 129 bytes, longer than 128 (got \"{}\"…(129 bytes))", at(64))
        );
        let md = e.metadata();
        assert_eq!((md["limit"].as_str(), md["actual"].as_str()), ("128", "129"));
        assert_eq!(md.len(), 3, "field, limit, actual: {md:?}");
        // Huge: still quoted, not echoed.
        let e = refused(check_steps(&one(&at(1 << 20), &[])), "steps[0].op");
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn op_names_of_hostile_characters() {
        for op in ["hash.*", "hash.>", "hash sha256", "../..", "hash/sha256", "hash.sha256\n", "\0", "hash.ш"] {
            let e = refused(check_op("steps[0].op", op), "steps[0].op");
            assert!(e.to_string().contains("is not one of A-Z a-z 0-9 _ - ."), "{op:?}: {e}");
        }
        for op in [".hash", "hash.", "hash..sha256", "."] {
            let e = refused(check_op("steps[0].op", op), "steps[0].op");
            assert!(e.to_string().contains("empty dot-separated token"), "{op:?}: {e}");
        }
        let e = refused(check_op("steps[0].op", ""), "steps[0].op");
        assert_eq!(e.to_string(), "steps[0].op: must be 1 to 128 characters of A-Z a-z 0-9 _ - ., is empty (got \"\")");
        assert_eq!(
            refused(check_op("steps[0].op", "a*b"), "steps[0].op").to_string(),
            "steps[0].op: character 1 is not one of A-Z a-z 0-9 _ - . (got \"a*b\")"
        );
        for op in ["a", "hash.sha256", "acme.ocr.v2", "A-b_c.9"] {
            assert!(check_op("op", op).is_ok(), "{op}");
        }
    }

    #[test]
    fn param_names_and_values_at_the_limit() {
        let name = |n: usize| "p".repeat(n);
        for n in [1, MAX_PARAM_NAME_BYTES - 1, MAX_PARAM_NAME_BYTES] {
            assert!(check_steps(&one("a", &[(&name(n), "1")])).is_ok(), "{n}");
        }
        let e = refused(check_steps(&one("a", &[(&name(MAX_PARAM_NAME_BYTES + 1), "1")])), "steps[0].params");
        assert_eq!(e.metadata()["limit"], "64");
        refused(check_steps(&one("a", &[("", "1")])), "steps[0].params");
        for bad_name in ["a b", "a*", "a>", "../..", "a\u{1}", "é"] {
            refused(check_steps(&one("a", &[(bad_name, "1")])), "steps[0].params");
        }

        let value = |n: usize| "v".repeat(n);
        for n in [0, MAX_PARAM_VALUE_BYTES - 1, MAX_PARAM_VALUE_BYTES] {
            assert!(check_steps(&one("a", &[("k", &value(n))])).is_ok(), "{n}");
        }
        let e = refused(check_steps(&one("a", &[("k", &value(MAX_PARAM_VALUE_BYTES + 1))])), "steps[0].params[k]");
        assert_eq!((e.metadata()["limit"].as_str(), e.metadata()["actual"].as_str()), ("4096", "4097"));
        // Free text is fine, control characters are not (C0, DEL, C1).
        assert!(check_steps(&one("a", &[("k", "abc é * > ../.. 😀")])).is_ok());
        for v in ["a\nb", "\0", "tab\there", "\u{7f}", "\u{85}", "\u{9f}"] {
            let e = refused(check_steps(&one("a", &[("k", v)])), "steps[0].params[k]");
            assert!(e.to_string().contains("control character at byte"), "{v:?}: {e}");
        }
        assert_eq!(
            refused(check_param_value("f", "ab\u{1}"), "f").to_string(),
            "f: has a control character at byte 2 (got \"ab\\u{1}\")"
        );
    }

    #[test]
    fn params_per_step_at_the_limit() {
        let many = |n: usize| {
            let mut s = StepRequest::new("a");
            for i in 0..n {
                s = s.param(format!("p{i}"), "1");
            }
            vec![StepRequest::new("hash.sha256"), s]
        };
        assert!(check_steps(&many(MAX_PARAMS - 1)).is_ok());
        assert!(check_steps(&many(MAX_PARAMS)).is_ok());
        let e = refused(check_steps(&many(MAX_PARAMS + 1)), "steps[1].params");
        assert_eq!(e.to_string(), "steps[1].params: 65 params, more than 64");
        assert_eq!(e.metadata()["limit"], "64");
    }

    #[test]
    fn job_ids() {
        for id in ["", "01KBXYZ0123456789ABCDEFGHJ", "a-b_C9", &"j".repeat(MAX_JOB_ID_BYTES)] {
            assert!(check_job_id("job_id", id).is_ok(), "{id:?}");
        }
        for id in ["a.b", "a b", "*", ">", "../..", "a\0", &"j".repeat(MAX_JOB_ID_BYTES + 1)] {
            refused(check_job_id("job_id", id), "job_id");
        }
    }

    /// The registry checks identifiers before it looks an op up: a name
    /// over the limit is REQUEST_INVALID, not UNKNOWN_OP; a later step's
    /// bad name wins over an earlier step's unknown op.
    #[test]
    fn the_registry_checks_identifiers_before_op_lookup() {
        let reg = crate::Registry::new(crate::Limits::default(), false);
        let run = |steps: &[StepRequest]| reg.run(steps, b"abc", &reg.ctx()).map(|_| ()).unwrap_err();
        assert_eq!(run(&one(&"x".repeat(128), &[])).reason(), Reason::UnknownOp);
        refused(Err(run(&one(&"x".repeat(129), &[]))), "steps[0].op");
        let steps = [StepRequest::new("nope.op"), StepRequest::new("hash.sha256").param("a b", "1")];
        refused(Err(run(&steps)), "steps[1].params");
        assert_eq!(run(&one("hash.sha256", &[(&"p".repeat(64), "1")])).reason(), Reason::ParamInvalid);
        refused(Err(run(&one("compress.zstd", &[("level", "3\n")]))), "steps[0].params[level]");
        // Identifiers first, then the step count.
        let mut steps = vec![StepRequest::new("hash.sha256"); 17];
        assert_eq!(run(&steps).metadata()["field"], "steps");
        steps[16] = StepRequest::new("hash.*");
        refused(Err(run(&steps)), "steps[16].op");
    }
}
