//! The op registry and the pipeline runner.

use std::collections::BTreeMap;
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

/// What one op produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub data: Vec<u8>,
    pub content_type: &'static str,
}

impl Output {
    pub fn bytes(data: Vec<u8>) -> Self {
        Output { data, content_type: OCTET_STREAM }
    }
    pub fn json(value: &impl serde::Serialize) -> Result<Self> {
        let data = serde_json::to_vec(value).map_err(|e| Error::Internal { detail: format!("json: {e}") })?;
        Ok(Output { data, content_type: JSON })
    }
}

/// The function that runs an op.
pub type RunFn = fn(&Ctx<'_>, &Params, &[u8]) -> Result<Output>;

/// One op: its description (mirror of `tandem.v1.OpSpec`) and its code.
#[derive(Debug, Clone)]
pub struct Op {
    pub name: &'static str,
    pub description: String,
    pub params: Vec<ParamSpec>,
    pub output_content_type: &'static str,
    /// Name and version of a structured output's encoding; empty for raw bytes.
    pub output_encoding: &'static str,
    /// Test-only op, served only with debug ops enabled.
    pub debug: bool,
    pub run: RunFn,
}

impl Op {
    /// An op whose output is raw bytes (`application/octet-stream`), served
    /// without debug ops; structured or debug ops adjust the fields.
    pub fn bytes(name: &'static str, description: &str, params: Vec<ParamSpec>, run: RunFn) -> Op {
        Op {
            name,
            description: description.to_owned(),
            params,
            output_content_type: OCTET_STREAM,
            output_encoding: "",
            debug: false,
            run,
        }
    }
}

/// A pipeline step as requested: op name and raw string params.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepRequest {
    pub op: String,
    pub params: BTreeMap<String, String>,
}

impl StepRequest {
    pub fn new(op: impl Into<String>) -> Self {
        StepRequest { op: op.into(), params: BTreeMap::new() }
    }
    pub fn param(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.params.insert(k.into(), v.into());
        self
    }
}

/// What one step cost (mirror of `tandem.v1.StepStats`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepStats {
    pub op: &'static str,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub duration: Duration,
}

/// The result of a whole pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOutput {
    pub data: Vec<u8>,
    pub content_type: &'static str,
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
        let mut stats = Vec::with_capacity(self.steps.len());
        let mut current: Option<Output> = None;
        for (index, (op, params)) in self.steps.iter().enumerate() {
            ctx.checkpoint()?;
            let data: &[u8] = current.as_ref().map_or(input, |o| &o.data);
            let start = Instant::now();
            let out = catch_panic(|| (op.run)(ctx, params, data)).map_err(|e| e.in_step(index, op.name))?;
            let limit = ctx.limits.max_output_bytes;
            if out.data.len() as u64 > limit {
                return Err(Error::OutputTooLarge {
                    what: "output".to_owned(),
                    unit: "bytes",
                    param: None,
                    limit,
                    actual: Some(out.data.len() as u64),
                }
                .in_step(index, op.name));
            }
            stats.push(StepStats {
                op: op.name,
                input_bytes: data.len() as u64,
                output_bytes: out.data.len() as u64,
                duration: start.elapsed(),
            });
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

/// Every op this process serves, built for one set of limits.
#[derive(Debug, Clone)]
pub struct Registry {
    limits: Limits,
    debug_ops: bool,
    ops: Vec<Op>,
}

impl Registry {
    /// The full catalogue under `limits`; debug ops are served only when
    /// `debug_ops` is set.
    pub fn new(limits: Limits, debug_ops: bool) -> Self {
        let ops = ops::catalogue(&limits);
        Registry { limits, debug_ops, ops }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

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

    /// Validates every step (op known, params valid, count within limits)
    /// before anything runs.
    pub fn prepare(&self, steps: &[StepRequest]) -> Result<Pipeline<'_>> {
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
