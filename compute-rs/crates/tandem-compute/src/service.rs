//! `tandem.v1.ComputeService`: validation, admission to the CPU pool,
//! deadlines, cancellation and metrics around `tandem_core::Registry`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use tandem_core::{CancelFlag, Ctx, Error, ParamType, PipelineOutput, Quoted, Registry, StepRequest, ident};
use tandem_proto::v1::{self, compute_service_server::ComputeService};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::pool::{self, Pool};
use crate::status;
use crate::telemetry::{self, CallSpan};

/// The ComputeService implementation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ComputeSvc {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    pool: Pool,
    metrics: Metrics,
    tracer: Arc<opentelemetry::global::BoxedTracer>,
}

/// Sets the cancel flag when the request future is dropped (client gone,
/// deadline hit), so the blocking work stops at its next checkpoint.
struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl ComputeSvc {
    /// The service for `registry`, running its ops on `pool`. Its spans go
    /// to the global tracer provider as it is now (see [`telemetry`]).
    pub fn new(registry: Registry, pool: Pool, metrics: Metrics) -> Self {
        let tracer = telemetry::tracer();
        ComputeSvc { inner: Arc::new(Inner { registry: Arc::new(registry), pool, metrics, tracer }) }
    }

    /// The ops served.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    fn record_ok(&self, out: &PipelineOutput) {
        let m = &self.inner.metrics;
        for s in &out.steps {
            m.op_runs.with_label_values(&[s.op, "OK"]).inc();
            m.op_seconds.with_label_values(&[s.op]).observe(s.duration.as_secs_f64());
            m.op_bytes_in.with_label_values(&[s.op]).inc_by(s.input_bytes);
            m.op_bytes_out.with_label_values(&[s.op]).inc_by(s.output_bytes);
        }
    }

    fn record_err(&self, e: &Error) {
        let m = &self.inner.metrics;
        if let Error::Step { op, .. } = e {
            // Only known op names become labels (bounded cardinality).
            let op = self.inner.registry.get(op.prefix()).ok().filter(|_| !op.is_cut()).map_or("unknown", |o| o.name);
            m.op_runs.with_label_values(&[op, e.code().as_str()]).inc();
            m.op_errors.with_label_values(&[op, e.reason().as_str()]).inc();
        }
        if matches!(e, Error::Overloaded { .. }) {
            m.rejected.inc();
        }
    }

    /// Admits a request to the pool (OVERLOADED at once when full) and waits
    /// for a worker. The slot counts in the in-flight gauge until dropped.
    async fn admit(&self, want: usize) -> Result<(pool::Slot, InFlight), Error> {
        let admitted = self.inner.pool.try_admit()?;
        let in_flight = InFlight::new(&self.inner.metrics.in_flight);
        let queued = InFlight::new(&self.inner.metrics.queued);
        let slot = self.inner.pool.wait_worker(admitted, want).await?;
        drop(queued);
        Ok((slot, in_flight))
    }

    /// Runs one pipeline through the pool, with a step span per step under
    /// `call` (when it is recorded).
    async fn run_one(
        &self,
        req: v1::TransformRequest,
        deadline: Option<Instant>,
        call: &CallSpan,
    ) -> Result<PipelineOutput, Error> {
        // Validate before taking a pool slot: bad requests never queue. The
        // identifiers first (prepare checks those of the steps).
        ident::check_job_id("job_id", &req.job_id)?;
        let steps = steps_from_proto(req.steps);
        self.inner.registry.prepare(&steps)?;
        check_deadline(deadline)?;
        let (slot, in_flight) = self.admit(1).await?;
        check_deadline(deadline)?;
        let cancel = CancelFlag::new();
        let _guard = CancelOnDrop(cancel.clone());
        let registry = self.inner.registry.clone();
        let input = req.input;
        let attempt = req.attempt;
        let mut spans = call.steps(Vec::new);
        pool::run_blocking(Some(slot), move || {
            // Counted until the work really ends, even if the caller left.
            let _in_flight = in_flight;
            let ctx = Ctx { limits: registry.limits(), cancel: Some(&cancel), deadline, attempt };
            let pipeline = registry.prepare(&steps)?;
            match &mut spans {
                Some(spans) => pipeline.run_observed(&ctx, &input, &mut |e| spans.observe(e)),
                None => pipeline.run(&ctx, &input),
            }
        })
        .await
    }

    /// Runs a batch: items are validated one by one, then the valid ones run
    /// on as many idle workers as the pool has (at least one).
    async fn run_batch(
        &self,
        items: Vec<v1::TransformRequest>,
        deadline: Option<Instant>,
        call: &CallSpan,
    ) -> Result<Vec<v1::TransformResult>, Error> {
        let max = self.inner.registry.limits().max_batch_items as usize;
        if items.len() > max {
            return Err(Error::RequestInvalid {
                field: "items".to_owned(),
                detail: format!("the batch has {} items, more than the limit of {max}", items.len()),
                limit: Some(max as u64),
                actual: Some(items.len() as u64),
            });
        }
        let mut results: Vec<Option<Result<PipelineOutput, Error>>> = Vec::with_capacity(items.len());
        let mut work: Vec<Item> = Vec::new();
        let mut job_ids = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let steps = steps_from_proto(item.steps);
            let valid = ident::check_job_id("job_id", &item.job_id).and_then(|()| self.inner.registry.prepare(&steps));
            match valid {
                Ok(_) => {
                    results.push(None);
                    let mut span_attrs = Vec::new();
                    if call.recording() {
                        span_attrs.push(KeyValue::new("tandem.batch.item", i as i64));
                        span_attrs.extend(telemetry::job_attributes(&item.job_id, item.attempt));
                    }
                    work.push(Item { index: i, steps, input: item.input, attempt: item.attempt, span_attrs });
                }
                Err(e) => results.push(Some(Err(e))),
            }
            job_ids.push(item.job_id);
        }
        if !work.is_empty() {
            check_deadline(deadline)?;
            let (slot, in_flight) = self.admit(self.inner.pool.workers()).await?;
            check_deadline(deadline)?;
            let width = slot.width().min(work.len()).max(1);
            let cancel = CancelFlag::new();
            let _guard = CancelOnDrop(cancel.clone());
            let registry = self.inner.registry.clone();
            let call = call.clone();
            let done = pool::run_blocking(Some(slot), move || {
                let _in_flight = in_flight;
                // Each thread takes the next unclaimed item, so slow items
                // do not leave the other workers idle.
                let next = AtomicUsize::new(0);
                let worker = || {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = work.get(k) else { return done };
                        let ctx =
                            Ctx { limits: registry.limits(), cancel: Some(&cancel), deadline, attempt: item.attempt };
                        let r = tandem_core::catch_panic(|| {
                            let pipeline = registry.prepare(&item.steps)?;
                            match call.steps(|| item.span_attrs.clone()) {
                                Some(mut spans) => pipeline.run_observed(&ctx, &item.input, &mut |e| spans.observe(e)),
                                None => pipeline.run(&ctx, &item.input),
                            }
                        });
                        done.push((item.index, r));
                    }
                };
                let mut out = Vec::with_capacity(work.len());
                std::thread::scope(|s| {
                    let helpers: Vec<_> = (1..width).map(|_| s.spawn(worker)).collect();
                    out.extend(worker());
                    for h in helpers {
                        match h.join() {
                            Ok(r) => out.extend(r),
                            Err(_) => {
                                return Err(Error::Internal { detail: "batch worker thread panicked".to_owned() });
                            }
                        }
                    }
                    Ok(())
                })?;
                Ok(out)
            })
            .await?;
            for (i, r) in done {
                results[i] = Some(r);
            }
        }
        Ok(results
            .into_iter()
            .zip(job_ids)
            .map(|(r, job_id)| {
                let r = r.unwrap_or_else(|| Err(Error::Internal { detail: "batch item lost".to_owned() }));
                match r {
                    Ok(out) => {
                        self.record_ok(&out);
                        v1::TransformResult { outcome: Some(v1::transform_result::Outcome::Response(response(out))) }
                    }
                    Err(e) => {
                        self.record_err(&e);
                        v1::TransformResult {
                            outcome: Some(v1::transform_result::Outcome::Error(status::to_proto(
                                &e,
                                &[("job_id", &job_id)],
                            ))),
                        }
                    }
                }
            })
            .collect())
    }

    fn finish<T>(&self, method: &str, start: Instant, r: Result<T, Status>) -> Result<Response<T>, Status> {
        let m = &self.inner.metrics;
        let code = match &r {
            Ok(_) => "OK",
            Err(s) => code_name(s.code()),
        };
        m.requests.with_label_values(&[method, code]).inc();
        m.request_seconds.with_label_values(&[method]).observe(start.elapsed().as_secs_f64());
        r.map(Response::new)
    }
}

/// One valid batch item waiting for a worker.
struct Item {
    index: usize,
    steps: Vec<StepRequest>,
    input: Vec<u8>,
    attempt: u32,
    /// Attributes of its step spans.
    span_attrs: Vec<KeyValue>,
}

/// Counts a request in a gauge while alive.
#[derive(Debug)]
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn check_deadline(deadline: Option<Instant>) -> Result<(), Error> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(Error::Timeout { started: false }),
        _ => Ok(()),
    }
}

fn steps_from_proto(steps: Vec<v1::Step>) -> Vec<StepRequest> {
    steps.into_iter().map(|s| StepRequest { op: s.op, params: s.params.into_iter().collect() }).collect()
}

fn response(out: PipelineOutput) -> v1::TransformResponse {
    v1::TransformResponse {
        output: out.data,
        content_type: out.content_type.to_owned(),
        steps: out
            .steps
            .into_iter()
            .map(|s| v1::StepStats {
                op: s.op.to_owned(),
                input_bytes: s.input_bytes,
                output_bytes: s.output_bytes,
                duration_micros: s.duration.as_micros() as u64,
            })
            .collect(),
    }
}

/// Parses the `grpc-timeout` header ("100m", "5S", ...) into a deadline.
pub fn grpc_deadline(md: &MetadataMap) -> Option<Instant> {
    let raw = md.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(d)
}

/// The W3C trace id from a `traceparent` header, if well-formed (else "").
pub fn trace_id(md: &MetadataMap) -> String {
    let cx = telemetry::extract(md);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() { sc.trace_id().to_string() } else { String::new() }
}

fn code_name(code: tonic::Code) -> &'static str {
    tandem_core::Code::ALL.get(code as usize).map_or("UNKNOWN", |c| c.as_str())
}

fn param_type(t: ParamType) -> v1::ParamType {
    match t {
        ParamType::Int => v1::ParamType::Int,
        ParamType::Enum => v1::ParamType::Enum,
        ParamType::Bool => v1::ParamType::Bool,
        ParamType::String => v1::ParamType::String,
    }
}

/// The ListOps answer for a registry.
pub fn list_ops(registry: &Registry) -> v1::ListOpsResponse {
    let l = registry.limits();
    v1::ListOpsResponse {
        ops: registry
            .ops()
            .map(|op| v1::OpSpec {
                name: op.name.to_owned(),
                description: op.description.clone(),
                params: op
                    .params
                    .iter()
                    .map(|p| v1::ParamSpec {
                        name: p.name.to_owned(),
                        r#type: param_type(p.ty) as i32,
                        description: p.description.clone(),
                        default_value: p.default.clone(),
                        required: p.required,
                        min: p.min,
                        max: p.max,
                        choices: p.choices.iter().map(|c| (*c).to_owned()).collect(),
                    })
                    .collect(),
                output_content_type: op.output_content_type.to_owned(),
                output_encoding: op.output_encoding.to_owned(),
                debug: op.debug,
                provider: "compute".to_owned(),
                live_workers: 0,
                version: op.version.to_owned(),
            })
            .collect(),
        limits: Some(v1::Limits {
            max_request_bytes: l.max_request_bytes,
            max_output_bytes: l.max_output_bytes,
            max_steps: l.max_steps,
            max_batch_items: l.max_batch_items,
            max_image_pixels: l.max_image_pixels,
            max_image_dimension: l.max_image_dimension,
            workers: l.workers,
            queue_depth: l.queue_depth,
        }),
    }
}

#[tonic::async_trait]
impl ComputeService for ComputeSvc {
    async fn transform(
        &self,
        request: Request<v1::TransformRequest>,
    ) -> Result<Response<v1::TransformResponse>, Status> {
        let start = Instant::now();
        let deadline = grpc_deadline(request.metadata());
        let req = request.get_ref();
        let job_id = req.job_id.clone();
        let call = CallSpan::start(&self.inner.tracer, "Transform", request.metadata(), || {
            let mut attrs = telemetry::job_attributes(&job_id, req.attempt);
            attrs.push(KeyValue::new("tandem.steps", req.steps.len() as i64));
            attrs.push(KeyValue::new("tandem.input_bytes", req.input.len() as i64));
            attrs
        });
        let (trace_id, span_id) = call.ids();
        let req = request.into_inner();
        let span = tracing::info_span!(
            "transform",
            trace_id = %trace_id,
            span_id = %span_id,
            job_id = %Quoted::new(&job_id),
            attempt = req.attempt
        );
        let r = async {
            let r = self.run_one(req, deadline, &call).await;
            match r {
                Ok(out) => {
                    self.record_ok(&out);
                    call.ok(|| vec![KeyValue::new("tandem.output_bytes", out.data.len() as i64)]);
                    tracing::debug!(
                        bytes_out = out.data.len(),
                        micros = start.elapsed().as_micros() as u64,
                        "transform ok"
                    );
                    Ok(response(out))
                }
                Err(e) => {
                    self.record_err(&e);
                    call.failed(&e);
                    tracing::info!(reason = e.reason().as_str(), error = %e, "transform failed");
                    Err(status::to_status(&e, &[("job_id", &job_id)]))
                }
            }
        }
        .instrument(span)
        .await;
        self.finish("Transform", start, r)
    }

    async fn transform_batch(
        &self,
        request: Request<v1::TransformBatchRequest>,
    ) -> Result<Response<v1::TransformBatchResponse>, Status> {
        let start = Instant::now();
        let deadline = grpc_deadline(request.metadata());
        let items = request.get_ref().items.len();
        let call = CallSpan::start(&self.inner.tracer, "TransformBatch", request.metadata(), || {
            vec![KeyValue::new("tandem.batch.items", items as i64)]
        });
        let (trace_id, span_id) = call.ids();
        let items = request.into_inner().items;
        let span =
            tracing::info_span!("transform_batch", trace_id = %trace_id, span_id = %span_id, items = items.len());
        let r = async {
            match self.run_batch(items, deadline, &call).await {
                Ok(results) => {
                    let failed = results
                        .iter()
                        .filter(|r| matches!(r.outcome, Some(v1::transform_result::Outcome::Error(_))))
                        .count();
                    call.ok(|| vec![KeyValue::new("tandem.batch.failed_items", failed as i64)]);
                    Ok(v1::TransformBatchResponse { results })
                }
                Err(e) => {
                    self.record_err(&e);
                    call.failed(&e);
                    tracing::info!(reason = e.reason().as_str(), error = %e, "batch failed");
                    Err(status::to_status(&e, &[]))
                }
            }
        }
        .instrument(span)
        .await;
        self.finish("TransformBatch", start, r)
    }

    async fn list_ops(&self, _request: Request<v1::ListOpsRequest>) -> Result<Response<v1::ListOpsResponse>, Status> {
        let start = Instant::now();
        let r = Ok(list_ops(&self.inner.registry));
        self.finish("ListOps", start, r)
    }
}
