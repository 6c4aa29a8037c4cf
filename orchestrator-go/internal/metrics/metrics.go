// Package metrics holds the orchestrator's Prometheus metrics, on a registry
// of its own so several orchestrators can live in one test process.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are every metric the orchestrator exports.
type Metrics struct {
	Registry       *prometheus.Registry
	Submitted      *prometheus.CounterVec   // queue
	Completed      *prometheus.CounterVec   // queue, outcome
	Retries        *prometheus.CounterVec   // queue
	DeadLettered   *prometheus.CounterVec   // queue
	JobDuration    *prometheus.HistogramVec // queue, op (first step's op)
	ComputeLatency *prometheus.HistogramVec // op
	ComputeBytes   *prometheus.CounterVec   // op, direction
	QueueDepth     *prometheus.GaugeVec     // queue
	InFlight       *prometheus.GaugeVec     // queue
	Workers        *prometheus.GaugeVec     // queue
	DLQSize        *prometheus.GaugeVec     // queue
	BreakerState   *prometheus.GaugeVec     // endpoint: 0 closed, 1 half-open, 2 open
	StepLatency    *prometheus.HistogramVec // op, outcome: steps on op workers
	StepBytes      *prometheus.CounterVec   // op, direction
	LiveWorkers    *prometheus.GaugeVec     // op
}

// New registers every metric on a fresh registry.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	m := &Metrics{Registry: r}
	m.Submitted = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_jobs_submitted_total", Help: "Jobs accepted by SubmitJob/SubmitJobs."}, []string{"queue"})
	m.Completed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_jobs_completed_total", Help: "Jobs that reached a terminal state, by outcome."}, []string{"queue", "outcome"})
	m.Retries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_job_retries_total", Help: "Attempts that failed and were scheduled for retry."}, []string{"queue"})
	m.DeadLettered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_jobs_dead_lettered_total", Help: "Jobs moved to the dead-letter stream."}, []string{"queue"})
	m.JobDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tandem_job_duration_seconds", Help: "Duration of one attempt, by queue and first op.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}, []string{"queue", "op"})
	m.ComputeLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tandem_compute_call_seconds", Help: "Latency of compute Transform calls, by first op.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18)}, []string{"op"})
	m.ComputeBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_compute_bytes_total", Help: "Bytes sent to / received from compute, by first op."}, []string{"op", "direction"})
	m.QueueDepth = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_queue_depth", Help: "Jobs waiting to be pulled."}, []string{"queue"})
	m.InFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_queue_in_flight", Help: "Jobs running in this orchestrator."}, []string{"queue"})
	m.Workers = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_queue_workers", Help: "Current worker limit of the queue's pool in this orchestrator."}, []string{"queue"})
	m.DLQSize = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_queue_dead_letters", Help: "Jobs in the queue's dead-letter stream."}, []string{"queue"})
	m.StepLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tandem_worker_step_seconds", Help: "Latency of steps run on op workers, by op and outcome.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 20)}, []string{"op", "outcome"})
	m.StepBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_worker_step_bytes_total", Help: "Bytes sent to / received from op workers, by op."}, []string{"op", "direction"})
	m.LiveWorkers = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_op_workers", Help: "Live op workers serving each registered op."}, []string{"op"})
	m.BreakerState = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tandem_compute_breaker_state", Help: "Circuit breaker state per compute endpoint: 0 closed, 1 half-open, 2 open."}, []string{"endpoint"})
	for _, c := range []prometheus.Collector{m.Submitted, m.Completed, m.Retries, m.DeadLettered, m.JobDuration, m.ComputeLatency, m.ComputeBytes, m.QueueDepth, m.InFlight, m.Workers, m.DLQSize, m.BreakerState, m.StepLatency, m.StepBytes, m.LiveWorkers} {
		f(c)
	}
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}
