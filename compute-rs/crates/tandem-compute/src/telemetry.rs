//! OpenTelemetry spans: a server span per Transform/TransformBatch call,
//! child of the caller's W3C `traceparent` (gRPC metadata), and a child span
//! per pipeline step. Exported over OTLP/gRPC to the endpoint in the
//! standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
//! variables (the exporter honours the other standard `OTEL_EXPORTER_OTLP_*`
//! and `OTEL_BSP_*` variables), exactly like the orchestrator's
//! `internal/telemetry`.
//!
//! With neither variable set nothing is installed: no exporter, no
//! background thread, no span built; a call only reads the caller's trace
//! context, so its log lines still show the caller's `trace_id` and
//! `span_id`.
//!
//! This build has no TLS: an endpoint must be plaintext (`http://…`, or
//! schemeless with `OTEL_EXPORTER_OTLP_INSECURE=true`); an `https://` one is
//! refused at startup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tandem_core::{Error, Quoted, StepEvent};
use tonic::metadata::MetadataMap;

/// `service.name` of the spans, and the instrumentation scope.
pub const SERVICE_NAME: &str = "tandem-compute";
/// Name of the server span of a Transform or TransformBatch call.
pub const TRANSFORM_SPAN: &str = "tandem.compute.transform";
/// Name of the span of one pipeline step.
pub const STEP_SPAN: &str = "tandem.compute.step";

/// The variables that turn export on (either one, non-empty).
pub const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];

/// Set once [`Telemetry::init`] installed an exporter.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether the environment asks for span export.
pub fn enabled() -> bool {
    ENDPOINT_VARS.iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// The installed exporter, if any: [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// When [`enabled`], builds the OTLP/gRPC exporter and a batching
    /// tracer provider and makes it the global one; otherwise does nothing.
    /// Call it inside the tokio runtime that serves (the exporter's gRPC
    /// channel runs there).
    pub fn init() -> Result<Telemetry, String> {
        if !enabled() {
            return Ok(Telemetry::default());
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build().map_err(|e| {
            format!(
                "OpenTelemetry OTLP exporter: {e} (this build exports over plaintext gRPC only, without TLS: \
                     use an http:// endpoint, or a schemeless one with OTEL_EXPORTER_OTLP_INSECURE=true)"
            )
        })?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(SERVICE_NAME)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
        global::set_tracer_provider(provider.clone());
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Telemetry { provider: Some(provider) })
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter (waits at
    /// most `timeout`). Call it after the server drained, while the runtime
    /// still runs.
    pub fn shutdown(self, timeout: std::time::Duration) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown_with_timeout(timeout)
        {
            tracing::warn!(error = %e, "OpenTelemetry: flushing spans on shutdown failed");
        }
    }
}

/// The tracer of the calls (the global provider's: no-op unless
/// [`Telemetry::init`] installed an exporter).
pub fn tracer() -> Arc<global::BoxedTracer> {
    let scope =
        opentelemetry::InstrumentationScope::builder(SERVICE_NAME).with_version(env!("CARGO_PKG_VERSION")).build();
    Arc::new(global::tracer_provider().tracer_with_scope(scope))
}

/// Reads W3C trace context from gRPC request metadata.
struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The caller's trace context from `traceparent` (and `tracestate`); an
/// empty context when absent or malformed (then the call starts a trace).
pub fn extract(md: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&MetadataExtractor(md))
}

/// The server span of one call, in a context the step spans use as their
/// parent. Ended (with its outcome) by [`CallSpan::ok`] or
/// [`CallSpan::failed`]; dropped without either, it ends as is (the call
/// was dropped: cancelled, cut off).
#[derive(Debug, Clone)]
pub struct CallSpan {
    cx: Context,
    tracer: Arc<global::BoxedTracer>,
}

impl CallSpan {
    /// Starts the server span of `method` (`Transform`, `TransformBatch`),
    /// child of the trace context in `md`.
    pub fn start(
        tracer: &Arc<global::BoxedTracer>,
        method: &'static str,
        md: &MetadataMap,
        attrs: impl FnOnce() -> Vec<KeyValue>,
    ) -> CallSpan {
        let parent = extract(md);
        if !EXPORTING.load(Ordering::Relaxed) {
            return CallSpan { cx: parent, tracer: tracer.clone() };
        }
        let mut attributes = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "tandem.v1.ComputeService"),
            KeyValue::new("rpc.method", method),
        ];
        attributes.extend(attrs());
        let span = tracer
            .span_builder(TRANSFORM_SPAN)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer.as_ref(), &parent);
        CallSpan { cx: parent.with_span(span), tracer: tracer.clone() }
    }

    /// Whether the span is recorded (exported); step spans are made only then.
    pub fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// The trace id and span id for log lines: this span's when exporting,
    /// else the caller's (from its traceparent); empty strings when there is
    /// no trace context at all.
    pub fn ids(&self) -> (String, String) {
        let sc = self.cx.span().span_context().clone();
        if sc.is_valid() {
            (sc.trace_id().to_string(), sc.span_id().to_string())
        } else {
            (String::new(), String::new())
        }
    }

    /// Ends the span as successful, with `attrs`.
    pub fn ok(&self, attrs: impl FnOnce() -> Vec<KeyValue>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attributes(attrs());
        span.set_status(Status::Ok);
        span.end();
    }

    /// Ends the span as failed with `e`.
    pub fn failed(&self, e: &Error) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attributes(error_attributes(e));
        span.set_status(Status::error(e.to_string()));
        span.end();
    }

    /// A step observer making one [`STEP_SPAN`] per step, children of this
    /// span, or `None` when this span is not recorded. `attrs` go on every
    /// step span (e.g. the batch item).
    pub fn steps(&self, attrs: impl FnOnce() -> Vec<KeyValue>) -> Option<StepSpans> {
        self.recording().then(|| StepSpans { call: self.clone(), attrs: attrs(), current: None })
    }
}

/// The attributes of a failure: the reason and the gRPC code.
fn error_attributes(e: &Error) -> Vec<KeyValue> {
    vec![
        KeyValue::new("tandem.error.reason", e.reason().as_str()),
        KeyValue::new("rpc.grpc.status_code", e.code() as i64),
    ]
}

/// Makes the step spans of one pipeline run (see [`CallSpan::steps`]).
pub struct StepSpans {
    call: CallSpan,
    attrs: Vec<KeyValue>,
    current: Option<Context>,
}

impl StepSpans {
    /// Handles one event of [`tandem_core::Pipeline::run_observed`].
    pub fn observe(&mut self, event: StepEvent<'_>) {
        match event {
            StepEvent::Start { index, op, input_bytes } => {
                let mut attributes = vec![
                    KeyValue::new("tandem.op", op),
                    KeyValue::new("tandem.step", index as i64),
                    KeyValue::new("tandem.input_bytes", input_bytes as i64),
                ];
                attributes.extend(self.attrs.iter().cloned());
                let tracer = self.call.tracer.as_ref();
                let span = tracer
                    .span_builder(STEP_SPAN)
                    .with_kind(SpanKind::Internal)
                    .with_attributes(attributes)
                    .start_with_context(tracer, &self.call.cx);
                self.current = Some(self.call.cx.with_span(span));
            }
            StepEvent::End { result, .. } => {
                let Some(cx) = self.current.take() else { return };
                let span = cx.span();
                match result {
                    Ok(stats) => {
                        span.set_attribute(KeyValue::new("tandem.output_bytes", stats.output_bytes as i64));
                        span.set_status(Status::Ok);
                    }
                    Err(e) => {
                        span.set_attributes(error_attributes(e));
                        span.set_status(Status::error(e.to_string()));
                    }
                }
                span.end();
            }
        }
    }
}

/// The job attributes of a call (as the orchestrator names them).
pub fn job_attributes(job_id: &str, attempt: u32) -> Vec<KeyValue> {
    let mut attrs = vec![KeyValue::new("tandem.attempt", i64::from(attempt))];
    if !job_id.is_empty() {
        attrs.push(KeyValue::new("tandem.job_id", Quoted::new(job_id).to_string()));
    }
    attrs
}
