// Package telemetry sets up OpenTelemetry tracing for the orchestrator:
// spans are exported over OTLP/gRPC to the endpoint in the standard
// OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT variables
// (with the other standard OTEL_* variables honoured by the exporter), and
// tracing is off when neither is set: the tracer provider is then OTel's
// no-op one, and the only cost on the hot path is the W3C traceparent the
// job carries anyway.
//
// The W3C trace-context propagator is always installed, so a job's trace
// context travels in gRPC metadata and NATS headers whether or not spans
// are exported.
package telemetry

import (
	"context"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of the orchestrator's own spans.
const TracerName = "github.com/tandem/tandem/orchestrator-go"

// Enabled reports whether the environment asks for span export.
func Enabled() bool {
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup installs the propagator and, when Enabled, an OTLP exporter; the
// returned function flushes and stops it.
func Setup(ctx context.Context, service, instance string, log *slog.Logger) (func(context.Context) error, error) {
	InstallPropagator()
	if !Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracegrpc.New(ctx)
	if err != nil {
		return nil, err
	}
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL,
		semconv.ServiceName(service), semconv.ServiceInstanceID(instance)))
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	log.Info("tracing: exporting spans over OTLP", "service", service)
	return tp.Shutdown, nil
}

// InstallPropagator makes W3C trace context the global propagator.
func InstallPropagator() { otel.SetTextMapPropagator(propagation.TraceContext{}) }

// Tracer is the orchestrator's tracer (no-op unless Setup enabled export).
func Tracer() trace.Tracer { return otel.Tracer(TracerName) }

// natsCarrier adapts a NATS header to the propagator. Unlike HTTP headers,
// NATS header keys are case-sensitive and stored as given ("traceparent").
type natsCarrier nats.Header

func (c natsCarrier) Get(k string) string { return nats.Header(c).Get(k) }
func (c natsCarrier) Set(k, v string)     { nats.Header(c).Set(k, v) }
func (c natsCarrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// FromHeader returns ctx carrying the trace context of a NATS message.
func FromHeader(ctx context.Context, h nats.Header) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, natsCarrier(h))
}

// Traceparent is ctx's trace context as a W3C traceparent ("" if none).
func Traceparent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, c)
	return c["traceparent"]
}

// Job attributes on spans.
func JobAttrs(jobID, queue string, attempt uint32) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.String("tandem.job_id", jobID), attribute.String("tandem.queue", queue), attribute.Int("tandem.attempt", int(attempt))}
}
