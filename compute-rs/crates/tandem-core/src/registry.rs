//! The op registry and the pipeline runner: the public API for declaring
//! ops, the built-in ones and a team's own.
//!
//! # Your own ops
//!
//! An op is a name, a description, typed params ([`ParamSpec`]), an output
//! content type and a function `Fn(&Ctx, &Params, &[u8]) -> Result<Output>`.
//! Declare it with [`Op::bytes`] (or [`Op::json`]) and add it to the built-in
//! catalogue with [`Registry::with_op`]; `tandem_compute::run` then serves it
//! next to the built-in ops, with the same flags, limits, pool, metrics and
//! errors:
//!
//! ```
//! use tandem_core::{Ctx, Limits, Op, Output, ParamSpec, Params, Registry, Result, StepRequest};
//!
//! /// `acme.invert`: XOR every byte with `mask`.
//! fn invert(ctx: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
//!     let mask = params.int("mask") as u8; // declared below as 0..=255
//!     let mut out = Vec::with_capacity(input.len());
//!     for chunk in input.chunks(tandem_core::ops::CHUNK) {
//!         ctx.checkpoint()?; // stops a cancelled or expired call between chunks
//!         out.extend(chunk.iter().map(|b| b ^ mask));
//!     }
//!     Ok(Output::bytes(out))
//! }
//!
//! let op = Op::bytes(
//!     "acme.invert",
//!     "XORs every byte with mask (255: bitwise NOT).",
//!     vec![ParamSpec::int("mask", "XOR mask.", 255, 0, 255)],
//!     invert,
//! );
//! let registry = Registry::new(Limits::default(), false).with_op(op)?;
//! let steps = [StepRequest::new("acme.invert").param("mask", "15"), StepRequest::new("hash.sha256")];
//! let out = registry.run(&steps, b"abc", &registry.ctx())?;
//! assert_eq!(out.data.len(), 32);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What the runner does for every op, built-in or not
//!
//! - **Params** are validated before any step runs, against the op's
//!   [`ParamSpec`]s: unknown or missing ones, bad types and out-of-range
//!   values are refused with `PARAM_INVALID` / `PARAM_OUT_OF_RANGE` naming the
//!   step, the op, the param and the limit; absent ones get their default.
//!   The function only sees valid [`Params`].
//! - **Input size**: the whole request is at most
//!   [`Limits::max_request_bytes`] (the gRPC server refuses a larger one with
//!   `PAYLOAD_TOO_LARGE` before any op runs).
//! - **Output size**: every step's output is checked against
//!   [`Limits::max_output_bytes`] when the function returns
//!   (`OUTPUT_TOO_LARGE`). An op whose output can outgrow its input
//!   (decompression, expansion) must stop itself at the cap so its memory
//!   stays bounded: decode through [`read_capped`](crate::read_capped), or
//!   check `out.len()` against a cap as it grows and return
//!   [`Error::OutputTooLarge`].
//! - **Cancellation and deadlines**: a dropped call (client gone, deadline
//!   passed, server drain cut off) sets the cancel flag in [`Ctx`]; the runner
//!   checks it between steps, and a long op calls [`Ctx::checkpoint`] between
//!   chunks of its work ([`ops::CHUNK`], 1 MiB, is what
//!   the built-in ops use) and returns its error with `?`. Nothing else can
//!   stop a running op: its thread keeps its pool worker until it returns.
//! - **Panics** are caught ([`catch_panic`]) and answered `INTERNAL_ERROR`;
//!   the service keeps serving.
//! - **Errors** are [`Error`] values; the runner adds the step and op to each
//!   (`step 1 (acme.invert): …`, metadata `step` and `op`), and the error
//!   catalogue (`proto/tandem/v1/errors.proto`) gives its reason's gRPC code
//!   and retryability, exactly as for a built-in op. An op returns
//!   [`Error::InputCorrupt`] ([`Error::corrupt`]) for input it cannot read,
//!   [`Error::OpFailed`] for input it refuses for a reason of its own,
//!   [`Error::OutputTooLarge`] at its own cap, and [`Error::ParamInvalid`]
//!   for params valid alone but not together: all INVALID_ARGUMENT, never
//!   retried. It passes on what [`Ctx::checkpoint`] returned (`CANCELLED`,
//!   `TIMEOUT`). [`Error::Internal`] (INTERNAL, retried by the orchestrator)
//!   is for bugs.
//! - **Output content type**: [`Op::output_content_type`] is what ListOps
//!   advertises; [`Output::content_type`] is what the call answers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cancel::Ctx;
use crate::error::{Error, Quoted, Result};
use crate::limits::Limits;
use crate::ops;
use crate::params::{ParamSpec, Params};

/// Content type of raw binary outputs.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Content type of structured (JSON) outputs.
pub const JSON: &str = "application/json";

/// Longest op name, in bytes (the orchestrator's limit too).
pub const MAX_OP_NAME_BYTES: usize = 128;

/// What one op produced: the bytes and their content type (what
/// `TransformResponse.content_type` says for the last step).
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The bytes.
    pub data: Vec<u8>,
    /// Usually the op's [`Op::output_content_type`]; an op whose content type
    /// depends on its params (`image.thumbnail`) sets the exact one here.
    pub content_type: &'static str,
}

impl Output {
    /// Raw bytes (`application/octet-stream`).
    pub fn bytes(data: Vec<u8>) -> Self {
        Output { data, content_type: OCTET_STREAM }
    }

    /// `value` as JSON (`application/json`). Fails (INTERNAL) only if
    /// `value` cannot be serialised.
    pub fn json(value: &impl serde::Serialize) -> Result<Self> {
        let data = serde_json::to_vec(value).map_err(|e| Error::Internal { detail: format!("json: {e}") })?;
        Ok(Output { data, content_type: JSON })
    }
}

/// The signature of an op function as a plain `fn` (what the built-in ops
/// are). [`Op::bytes`] also takes closures.
pub(crate) type RunFn = fn(&Ctx<'_>, &Params, &[u8]) -> Result<Output>;

/// The function of an op, shared by every clone of it.
type OpFn = dyn Fn(&Ctx<'_>, &Params, &[u8]) -> Result<Output> + Send + Sync;

/// One op: its description (what `ListOps` reports, `tandem.v1.OpSpec`) and
/// its function.
///
/// Build one with [`Op::bytes`] or [`Op::json`], adjust it with the
/// `with_*` methods and [`Op::debug_only`], and add it to a registry with
/// [`Registry::with_op`], which checks the whole definition. The fields can
/// be read anywhere; outside this crate they are set only through those
/// methods (fields may be added).
///
/// The function gets the call's context (limits, cancel flag, deadline,
/// attempt), the validated params and the step's input (the request input
/// for the first step, the previous step's output after that), and returns
/// the step's output or an error; see the [module docs](self) for what the
/// runner enforces around it. It runs on a pool worker thread (never on the
/// async I/O threads) and may block; it must be `Send + Sync` because calls
/// run it on many threads at once.
#[derive(Clone)]
#[non_exhaustive]
pub struct Op {
    /// Dot-separated tokens of `A-Z a-z 0-9 _ -`, at most
    /// [`MAX_OP_NAME_BYTES`], with a namespace: `acme.invert`. A team's op
    /// may not use a built-in namespace (`hash`, `compress`, ...).
    pub name: &'static str,
    /// One or two sentences: what it does and what it outputs.
    pub description: String,
    /// In the order ListOps lists them.
    pub params: Vec<ParamSpec>,
    /// What the output is: `application/octet-stream`, `application/json`,
    /// `image/*`, ...
    pub output_content_type: &'static str,
    /// Name and version of a structured output's encoding
    /// (`"acme.report.v1 (JSON)"`); empty for raw bytes.
    pub output_encoding: &'static str,
    /// Test-only op, served only with debug ops enabled.
    pub debug: bool,
    /// The op's own version, reported by ListOps (`OpSpec.version`); empty
    /// for the built-in ops, which are versioned with the service.
    pub version: &'static str,
    run: Arc<OpFn>,
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Op")
            .field("name", &self.name)
            .field("description", &self.description)
            .field("params", &self.params)
            .field("output_content_type", &self.output_content_type)
            .field("output_encoding", &self.output_encoding)
            .field("debug", &self.debug)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Op {
    /// An op whose output is raw bytes (`application/octet-stream`), served
    /// without debug ops. `run` is a `fn` or a closure (which may hold state
    /// of its own, e.g. a table built at startup).
    pub fn bytes<F>(name: &'static str, description: &str, params: Vec<ParamSpec>, run: F) -> Op
    where
        F: Fn(&Ctx<'_>, &Params, &[u8]) -> Result<Output> + Send + Sync + 'static,
    {
        Op {
            name,
            description: description.to_owned(),
            params,
            output_content_type: OCTET_STREAM,
            output_encoding: "",
            debug: false,
            version: "",
            run: Arc::new(run),
        }
    }

    /// An op whose output is JSON (`application/json`) in the named,
    /// versioned `encoding` (e.g. `"acme.report.v1 (JSON)"`); the function
    /// usually ends with [`Output::json`]. Within one encoding version, add
    /// fields only.
    pub fn json<F>(name: &'static str, description: &str, encoding: &'static str, params: Vec<ParamSpec>, run: F) -> Op
    where
        F: Fn(&Ctx<'_>, &Params, &[u8]) -> Result<Output> + Send + Sync + 'static,
    {
        Op { output_content_type: JSON, output_encoding: encoding, ..Op::bytes(name, description, params, run) }
    }

    /// Sets the advertised output content type (e.g. `"text/plain"`,
    /// `"image/*"`) and encoding name (empty for none).
    pub fn with_output(self, content_type: &'static str, encoding: &'static str) -> Op {
        Op { output_content_type: content_type, output_encoding: encoding, ..self }
    }

    /// Sets the version ListOps reports for this op.
    pub fn with_version(self, version: &'static str) -> Op {
        Op { version, ..self }
    }

    /// Marks the op test-only: served only when the registry serves debug
    /// ops (`--enable-debug-ops`), `UNKNOWN_OP` otherwise.
    pub fn debug_only(self) -> Op {
        Op { debug: true, ..self }
    }

    /// Checks the definition ([`Registry::with_op`] calls this).
    fn check(&self) -> std::result::Result<(), DefinitionError> {
        let err = |detail: String| DefinitionError { op: self.name.to_owned(), param: None, detail };
        check_op_name(self.name).map_err(err)?;
        if self.description.trim().is_empty() {
            return Err(err("the description is empty".to_owned()));
        }
        let ct = self.output_content_type;
        if !ct.contains('/') || ct.len() > 255 || !ct.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(format!("output content type {ct:?} is not a MIME type (type/subtype)")));
        }
        if self.params.len() > crate::params::MAX_PARAMS {
            return Err(err(format!("{} params, more than {}", self.params.len(), crate::params::MAX_PARAMS)));
        }
        for (i, p) in self.params.iter().enumerate() {
            let perr =
                |detail: String| DefinitionError { op: self.name.to_owned(), param: Some(p.name.to_owned()), detail };
            if self.params[..i].iter().any(|q| q.name == p.name) {
                return Err(perr("declared twice".to_owned()));
            }
            p.check().map_err(perr)?;
        }
        Ok(())
    }
}

/// Op names: dot-separated tokens of `A-Z a-z 0-9 _ -`, at least two.
fn check_op_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > MAX_OP_NAME_BYTES {
        return Err(format!("the name must be 1 to {MAX_OP_NAME_BYTES} bytes"));
    }
    let token_ok = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name.split('.').all(token_ok) {
        return Err("the name must be dot-separated tokens of A-Z a-z 0-9 _ - (none empty)".to_owned());
    }
    if !name.contains('.') {
        return Err("the name needs a namespace: \"team.op\"".to_owned());
    }
    Ok(())
}

/// Why [`Registry::with_op`] refused an op: a bug in its definition, found
/// at startup, before the server listens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("op {op:?}{}: {detail}", .param.as_ref().map(|p| format!(", param {p:?}")).unwrap_or_default())]
pub struct DefinitionError {
    /// The op's name.
    pub op: String,
    /// The param at fault, if it is one.
    pub param: Option<String>,
    /// What is wrong.
    pub detail: String,
}

/// A pipeline step as requested: op name and raw string params.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRequest {
    /// The op's name.
    pub op: String,
    /// Param values as sent, parsed by [`Registry::prepare`].
    pub params: BTreeMap<String, String>,
}

impl StepRequest {
    /// A step of `op` with no params.
    pub fn new(op: impl Into<String>) -> Self {
        StepRequest { op: op.into(), params: BTreeMap::new() }
    }
    /// Adds (or replaces) a param.
    pub fn param(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.params.insert(k.into(), v.into());
        self
    }
}

/// What one step cost (mirror of `tandem.v1.StepStats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepStats {
    /// The step's op name.
    pub op: &'static str,
    /// Bytes the step read.
    pub input_bytes: u64,
    /// Bytes the step produced.
    pub output_bytes: u64,
    /// How long the op ran.
    pub duration: Duration,
}

/// What [`Pipeline::run_observed`] reports around each step.
#[derive(Debug, Clone, Copy)]
pub enum StepEvent<'a> {
    /// The step is about to run.
    Start {
        /// The step's index, from 0.
        index: usize,
        /// Its op.
        op: &'static str,
        /// Bytes it reads.
        input_bytes: u64,
    },
    /// The step ended: what it cost, or its error (as the pipeline returns
    /// it, wrapped with the step). Not reported for a step that never
    /// started (cancelled or past its deadline before it).
    End {
        /// The step's index, from 0.
        index: usize,
        /// Its op.
        op: &'static str,
        /// Its stats, or its error.
        result: std::result::Result<&'a StepStats, &'a Error>,
    },
}

/// The result of a whole pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOutput {
    /// The last step's output.
    pub data: Vec<u8>,
    /// The last step's content type.
    pub content_type: &'static str,
    /// One entry per step, in order.
    pub steps: Vec<StepStats>,
}

/// A validated pipeline, ready to run.
#[derive(Debug)]
pub struct Pipeline<'r> {
    steps: Vec<(&'r Op, Params)>,
}

impl Pipeline<'_> {
    /// Op names, in order.
    pub fn op_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.iter().map(|(op, _)| op.name)
    }

    /// Runs every step in order; each step's output is the next one's input.
    pub fn run(&self, ctx: &Ctx<'_>, input: &[u8]) -> Result<PipelineOutput> {
        self.run_observed(ctx, input, &mut |_| {})
    }

    /// [`Pipeline::run`], telling `observe` when each step starts and how
    /// it ended (e.g. to make a tracing span per step). `observe` runs on
    /// the calling thread, between steps: keep it cheap.
    pub fn run_observed(
        &self,
        ctx: &Ctx<'_>,
        input: &[u8],
        observe: &mut dyn FnMut(StepEvent<'_>),
    ) -> Result<PipelineOutput> {
        let mut stats = Vec::with_capacity(self.steps.len());
        let mut current: Option<Output> = None;
        for (index, (op, params)) in self.steps.iter().enumerate() {
            ctx.checkpoint()?;
            let data: &[u8] = current.as_ref().map_or(input, |o| &o.data);
            observe(StepEvent::Start { index, op: op.name, input_bytes: data.len() as u64 });
            let start = Instant::now();
            let limit = ctx.limits.max_output_bytes;
            let out = catch_panic(|| (op.run)(ctx, params, data)).and_then(|out| {
                if out.data.len() as u64 > limit {
                    return Err(Error::OutputTooLarge {
                        what: "output".to_owned(),
                        unit: "bytes",
                        param: None,
                        limit,
                        actual: Some(out.data.len() as u64),
                    });
                }
                Ok(out)
            });
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let e = e.in_step(index, op.name);
                    observe(StepEvent::End { index, op: op.name, result: Err(&e) });
                    return Err(e);
                }
            };
            stats.push(StepStats {
                op: op.name,
                input_bytes: data.len() as u64,
                output_bytes: out.data.len() as u64,
                duration: start.elapsed(),
            });
            if let Some(s) = stats.last() {
                observe(StepEvent::End { index, op: op.name, result: Ok(s) });
            }
            current = Some(out);
        }
        let out = current.ok_or_else(|| Error::RequestInvalid {
            field: "steps".to_owned(),
            detail: "the pipeline has no steps".to_owned(),
            limit: None,
            actual: None,
        })?;
        Ok(PipelineOutput { data: out.data, content_type: out.content_type, steps: stats })
    }
}

/// Every op this process serves, built for one set of limits: the built-in
/// catalogue ([`Registry::new`]) plus any ops added with
/// [`Registry::with_op`]. Cheap to share (`Arc`), cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    limits: Limits,
    debug_ops: bool,
    /// Sorted by name.
    ops: Vec<Op>,
}

impl Registry {
    /// The built-in catalogue (docs/OPS.md) under `limits`; debug ops are
    /// served only when `debug_ops` is set.
    pub fn new(limits: Limits, debug_ops: bool) -> Self {
        let ops = ops::catalogue(&limits);
        Registry { limits, debug_ops, ops }
    }

    /// This registry plus `op`, served exactly like a built-in op.
    ///
    /// Refuses ([`DefinitionError`]) an op whose definition is wrong: a name
    /// that is not dot-separated tokens of `A-Z a-z 0-9 _ -` with a
    /// namespace, longer than [`MAX_OP_NAME_BYTES`], already served, or in a
    /// built-in namespace (`hash`, `compress`, `decompress`, `image`,
    /// `chunk`, `text`, `debug`: those are Tandem's, so a later release
    /// cannot add an op that collides with yours; use your team's name);
    /// an empty description; a content type that is not `type/subtype`; and
    /// any param that [`ParamSpec`] says is wrong (bad name, declared twice,
    /// more than 64, default outside its own range, ...).
    pub fn with_op(mut self, op: Op) -> std::result::Result<Self, DefinitionError> {
        op.check()?;
        let err = |detail: String| DefinitionError { op: op.name.to_owned(), param: None, detail };
        if self.ops.iter().any(|o| o.name == op.name) {
            return Err(err("an op of that name is already served".to_owned()));
        }
        let namespace = op.name.split('.').next().unwrap_or_default();
        if ops::NAMESPACES.contains(&namespace) {
            return Err(err(format!("namespace {namespace:?} is reserved for Tandem's built-in ops")));
        }
        let at = self.ops.partition_point(|o| o.name < op.name);
        self.ops.insert(at, op);
        Ok(self)
    }

    /// The limits every op runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether debug (test-only) ops are served.
    pub fn debug_ops(&self) -> bool {
        self.debug_ops
    }

    /// The ops served, sorted by name (debug ops only when enabled).
    pub fn ops(&self) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(|op| self.debug_ops || !op.debug)
    }

    /// Looks up a served op.
    pub fn get(&self, name: &str) -> Result<&Op> {
        match self.ops.iter().find(|op| op.name == name) {
            Some(op) if op.debug && !self.debug_ops => {
                Err(Error::UnknownOp { op: Quoted::new(name), hint: " (debug ops are disabled on this server)" })
            }
            Some(op) => Ok(op),
            None => Err(Error::UnknownOp { op: Quoted::new(name), hint: "" }),
        }
    }

    /// Validates every step before anything runs: first the identifiers
    /// of every step against the limits every API edge checks
    /// ([`crate::ident::check_steps`], `REQUEST_INVALID`), then the step
    /// count, then each op (known) and its params (valid).
    pub fn prepare(&self, steps: &[StepRequest]) -> Result<Pipeline<'_>> {
        crate::ident::check_steps(steps)?;
        if steps.is_empty() {
            return Err(Error::RequestInvalid {
                field: "steps".to_owned(),
                detail: "the pipeline has no steps (at least one is required)".to_owned(),
                limit: None,
                actual: Some(0),
            });
        }
        let max = self.limits.max_steps as usize;
        if steps.len() > max {
            return Err(Error::RequestInvalid {
                field: "steps".to_owned(),
                detail: format!("the pipeline has {} steps, more than the limit of {max}", steps.len()),
                limit: Some(max as u64),
                actual: Some(steps.len() as u64),
            });
        }
        let mut out = Vec::with_capacity(steps.len());
        for (index, step) in steps.iter().enumerate() {
            let op = self.get(&step.op).map_err(|e| e.in_step(index, &step.op))?;
            let params = Params::parse(&op.params, step.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| e.in_step(index, op.name))?;
            out.push((op, params));
        }
        Ok(Pipeline { steps: out })
    }

    /// Validates and runs a pipeline.
    pub fn run(&self, steps: &[StepRequest], input: &[u8], ctx: &Ctx<'_>) -> Result<PipelineOutput> {
        self.prepare(steps)?.run(ctx, input)
    }

    /// A context for this registry's limits with no deadline.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx::new(&self.limits)
    }
}

/// Runs `f`, turning a panic into `Error::Internal` (the caller keeps
/// serving; the panic message is kept for the logs and the error).
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    // The one catch_unwind (clippy.toml bans it elsewhere).
    #[allow(clippy::disallowed_methods)]
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    match caught {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(Error::Internal { detail: format!("op panicked: {msg}") })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Reason;

    fn xor(_: &Ctx<'_>, params: &Params, input: &[u8]) -> Result<Output> {
        let mask = params.int("mask") as u8;
        Ok(Output::bytes(input.iter().map(|b| b ^ mask).collect()))
    }

    fn invert() -> Op {
        Op::bytes("acme.invert", "XORs every byte with mask.", vec![ParamSpec::int("mask", "Mask.", 255, 0, 255)], xor)
    }

    fn refused(op: Op) -> DefinitionError {
        Registry::new(Limits::default(), true).with_op(op).unwrap_err()
    }

    #[test]
    fn the_builtin_catalogue_passes_its_own_checks() {
        let reg = Registry::new(Limits::default(), true);
        let mut namespaces: Vec<&str> = Vec::new();
        for op in reg.ops() {
            op.check().unwrap_or_else(|e| panic!("{e}"));
            let ns = op.name.split('.').next().unwrap();
            if !namespaces.contains(&ns) {
                namespaces.push(ns);
            }
        }
        namespaces.sort_unstable();
        assert_eq!(namespaces, ops::NAMESPACES, "NAMESPACES is exactly the built-in namespaces");
    }

    #[test]
    fn added_ops_run_like_builtin_ones() {
        let table: Vec<u8> = (0..=255u8).rev().collect();
        let lookup = Op::bytes("acme.lookup", "Maps bytes through a table.", Vec::new(), move |ctx, _, input| {
            ctx.checkpoint()?;
            Ok(Output::bytes(input.iter().map(|b| table[*b as usize]).collect()))
        })
        .with_version("1.2.0");
        let reg = Registry::new(Limits::default(), false)
            .with_op(invert())
            .unwrap()
            .with_op(lookup)
            .unwrap()
            .with_op(Op::bytes("acme.probe", "Test only.", Vec::new(), xor).debug_only())
            .unwrap();
        let names: Vec<&str> = reg.ops().map(|o| o.name).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
        assert!(names.contains(&"acme.invert") && names.contains(&"acme.lookup") && names.contains(&"hash.sha256"));
        assert!(!names.contains(&"acme.probe"), "debug-only ops follow the registry's debug setting");
        assert_eq!(reg.get("acme.probe").unwrap_err().reason(), Reason::UnknownOp);
        assert_eq!(reg.get("acme.lookup").unwrap().version, "1.2.0");

        let steps = [StepRequest::new("acme.invert").param("mask", "15"), StepRequest::new("acme.lookup")];
        let out = reg.run(&steps, &[0x00, 0xf0], &reg.ctx()).unwrap();
        assert_eq!(out.data, [0xf0, 0x00]);
        assert_eq!(out.steps.iter().map(|s| s.op).collect::<Vec<_>>(), ["acme.invert", "acme.lookup"]);

        let e = reg.run(&[StepRequest::new("acme.invert").param("mask", "256")], b"", &reg.ctx()).unwrap_err();
        assert_eq!(e.to_string(), "step 0 (acme.invert): param \"mask\" = 256 is out of range [0, 255]");
        assert_eq!(e.metadata()["limit"], "[0, 255]");

        // The output cap holds for added ops as for built-in ones.
        let small = Limits { max_output_bytes: 3, ..Limits::default() };
        let reg = Registry::new(small, false).with_op(invert()).unwrap();
        assert!(reg.run(&[StepRequest::new("acme.invert")], b"abc", &reg.ctx()).is_ok());
        let e = reg.run(&[StepRequest::new("acme.invert")], b"abcd", &reg.ctx()).unwrap_err();
        assert_eq!(e.reason(), Reason::OutputTooLarge);
        assert_eq!((e.metadata()["op"].as_str(), e.metadata()["limit"].as_str()), ("acme.invert", "3"));
    }

    /// `run_observed` reports a start and an end for every step that ran,
    /// in order, with the stats the output reports, and the error of the
    /// step that failed (then nothing after it).
    #[test]
    fn run_observed_reports_every_step() {
        let reg = Registry::new(Limits { max_output_bytes: 40, ..Limits::default() }, true);
        let mut seen = Vec::new();
        let steps = [StepRequest::new("hash.sha256"), StepRequest::new("hash.crc32c")];
        let out = reg
            .prepare(&steps)
            .unwrap()
            .run_observed(&reg.ctx(), b"abc", &mut |e| {
                seen.push(match e {
                    StepEvent::Start { index, op, input_bytes } => format!("start {index} {op} {input_bytes}"),
                    StepEvent::End { index, op, result: Ok(s) } => format!("end {index} {op} {}", s.output_bytes),
                    StepEvent::End { index, op, result: Err(e) } => format!("fail {index} {op} {}", e.reason()),
                })
            })
            .unwrap();
        assert_eq!(
            seen,
            ["start 0 hash.sha256 3", "end 0 hash.sha256 32", "start 1 hash.crc32c 32", "end 1 hash.crc32c 4"]
        );
        assert_eq!(out.steps.len(), 2);

        let mut seen = Vec::new();
        let steps = [
            StepRequest::new("debug.sleep").param("ms", "0"),
            StepRequest::new("compress.lz4"),
            StepRequest::new("debug.panic"),
        ];
        let e = reg
            .prepare(&steps)
            .unwrap()
            .run_observed(&reg.ctx(), &(0..30).collect::<Vec<u8>>(), &mut |e| {
                seen.push(match e {
                    StepEvent::Start { index, .. } => format!("start {index}"),
                    StepEvent::End { index, result, .. } => {
                        format!("end {index} {:?}", result.err().map(Error::reason))
                    }
                })
            })
            .unwrap_err();
        // The lz4 frame of 30 incompressible bytes is over the 40-byte output cap.
        assert_eq!(e.reason(), Reason::OutputTooLarge);
        assert_eq!(seen, ["start 0", "end 0 None", "start 1", "end 1 Some(OutputTooLarge)"]);
    }

    #[test]
    fn op_failed_and_panics_in_added_ops() {
        let picky = Op::bytes("acme.picky", "Refuses odd lengths.", Vec::new(), |_, _, input| {
            if input.len() % 2 == 1 {
                return Err(Error::OpFailed { detail: format!("input is {} bytes, not even", input.len()) });
            }
            Ok(Output::bytes(input.to_vec()))
        });
        let undeclared = Op::bytes("acme.buggy", "Reads a param it never declared.", Vec::new(), |_, p, _| {
            Ok(Output::bytes(vec![p.int("nope") as u8]))
        });
        let reg = Registry::new(Limits::default(), false).with_op(picky).unwrap().with_op(undeclared).unwrap();
        let e = reg.run(&[StepRequest::new("hash.sha256"), StepRequest::new("acme.picky")], b"", &reg.ctx());
        assert!(e.is_ok(), "32 bytes are even");
        let e = reg.run(&[StepRequest::new("acme.picky")], b"abc", &reg.ctx()).unwrap_err();
        assert_eq!(e.to_string(), "step 0 (acme.picky): input is 3 bytes, not even");
        assert_eq!(e.reason(), Reason::OpFailed);
        assert_eq!(e.code(), crate::Code::InvalidArgument);
        let e = reg.run(&[StepRequest::new("acme.buggy")], b"", &reg.ctx()).unwrap_err();
        assert_eq!(e.reason(), Reason::InternalError);
    }

    #[test]
    fn bad_definitions_are_refused() {
        let named = |name: &'static str| Op { name, ..invert() };
        for (name, want) in [
            ("invert", "namespace"),
            ("acme..invert", "tokens"),
            ("acme.in vert", "tokens"),
            ("acme.invert*", "tokens"),
            ("", "1 to 128"),
            ("hash.md5", "reserved"),
            ("debug.mine", "reserved"),
            ("decompress.brotli", "reserved"),
        ] {
            let e = refused(named(name));
            assert!(e.detail.contains(want), "{name:?}: {e}");
            assert_eq!(e.param, None);
        }
        let long: &'static str = Box::leak(format!("acme.{}", "x".repeat(123)).into_boxed_str());
        assert!(Registry::new(Limits::default(), false).with_op(named(long)).is_ok(), "128 bytes is fine");
        let longer: &'static str = Box::leak(format!("acme.{}", "x".repeat(124)).into_boxed_str());
        assert!(refused(named(longer)).detail.contains("1 to 128"));

        let reg = Registry::new(Limits::default(), false).with_op(invert()).unwrap();
        let e = reg.with_op(invert()).unwrap_err();
        assert!(e.detail.contains("already served"), "{e}");
        assert_eq!(e.to_string(), "op \"acme.invert\": an op of that name is already served");

        assert!(refused(Op { description: " ".to_owned(), ..invert() }).detail.contains("description"));
        assert!(refused(invert().with_output("text", "")).detail.contains("MIME"));

        let with_params = |params: Vec<ParamSpec>| refused(Op { params, ..invert() });
        let p = |n: &'static str| ParamSpec::int(n, "", 0, 0, 1);
        for (params, want) in [
            (vec![p("a"), p("a")], "declared twice"),
            (vec![p("")], "1 to 64"),
            (vec![p("a b")], "A-Z"),
            (vec![ParamSpec::int("n", "", 300, 0, 255)], "default"),
            (vec![ParamSpec::int("n", "", 0, 1, 0)], "min 1 is more than max 0"),
            (vec![ParamSpec::choice("c", "", "x", &[])], "at least one choice"),
            (vec![ParamSpec::choice("c", "", "x", &["a", "b"])], "default"),
            (vec![ParamSpec::choice("c", "", "a", &["a", "a"])], "twice"),
            (vec![ParamSpec::choice("c", "", "a", &["a", ""])], "choice"),
            (vec![ParamSpec::string("s", "", "", 4097)], "max"),
            (vec![ParamSpec::string("s", "", "toolong", 3)], "default"),
            (vec![ParamSpec { default: "1".to_owned(), ..p("r").required() }], "required"),
        ] {
            let e = with_params(params);
            assert!(e.detail.contains(want), "want {want:?}: {e}");
            assert!(e.param.is_some(), "{e}");
        }
        let many: Vec<ParamSpec> =
            (0..65).map(|i| ParamSpec::int(Box::leak(format!("p{i}").into_boxed_str()), "", 0, 0, 1)).collect();
        assert!(with_params(many).detail.contains("more than 64"));
        // At the edges: fine.
        let ok = vec![
            ParamSpec::string("s", "", "", 4096),
            ParamSpec::int("r", "", 0, 0, 1).required(),
            ParamSpec::boolean("b", "", true),
            ParamSpec::int("one", "", 7, 7, 7),
        ];
        assert!(Registry::new(Limits::default(), false).with_op(Op { params: ok, ..invert() }).is_ok());
    }
}
