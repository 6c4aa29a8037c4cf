package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/fault"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/provider"
	"github.com/tandem/tandem/orchestrator-go/internal/telemetry"
	"github.com/tandem/tandem/orchestrator-go/internal/tracectx"
	"github.com/tandem/tandem/orchestrator-go/internal/workers"
)

// The job executor runs one delivery of a job message in three stages, each
// in its own function:
//
//	begin     decode, read the record (the message itself while none is
//	          written), skip finished jobs, start the attempt in memory;
//	          the RUNNING write waits runningAfter (start.go), so a short
//	          job's only write is its terminal one
//	execute   the step call with its deadline, in-progress acks, cancellation
//	classify  one table from what happened to what must happen (verdict)
//	report    the state write, event and ack/nak/term the verdict asks for
//	          (report.go, deadletter.go)
//
// Every path ends in exactly one of: ack, nak (with or without delay), term,
// or nothing (a fenced stale delivery, which AckWait redelivers).

// attempt is one delivery being executed.
type attempt struct {
	msg         jetstream.Msg
	spec        *tandemv1.Job // from the message
	inline      []byte        // inline payload
	object      string        // or the payload object
	rec         *jobstore.Record
	number      uint32
	maxAttempts uint32
	prevState   tandemv1.JobState // to return to when handed back
	log         *slog.Logger
	// jctx is cancelled by CancelJob (ErrJobCancelled) or the end of a drain (errDrain).
	jctx   context.Context
	cancel context.CancelCauseFunc
	span   trace.Span
	// lastProgress is when progress was last written to the record.
	lastProgress time.Time

	// mu guards rec, started and settled between the executing goroutine
	// and the delayed RUNNING write (start.go).
	mu sync.Mutex
	// started: the RUNNING write of this attempt is in the record.
	started bool
	// settled: the outcome is being written; no RUNNING write after it.
	settled bool
	// crashed: a simulated crash (fault injection) abandoned the attempt.
	crashed      bool
	runningTimer *time.Timer
	began        time.Time
}

// result is what execute got back.
type result struct {
	resp *tandemv1.TransformResponse
	err  error
}

// verdict is what an attempt's outcome asks the reporter to do.
type verdict int

const (
	verdictConfirmCancel verdict = iota // CancelJob wrote CANCELLED: confirm, ack
	verdictHandBack                     // not the job's fault: back to the queue, attempt not counted
	verdictSucceed                      // store the result, SUCCEEDED, ack
	verdictFail                         // permanent error: FAILED, ack
	verdictRetry                        // transient error: RETRYING, nak with backoff
	verdictDead                         // transient error, out of attempts: dead-letter, term
)

// outcome is a verdict with what it needs.
type outcome struct {
	verdict verdict
	delay   time.Duration
	err     *apierr.Error
	why     string
}

// handle runs one delivery of a job message.
func (p *Pool) handle(msg jetstream.Msg) {
	var jobID string
	defer func() {
		if r := recover(); r != nil {
			p.Log.Error("panic in worker; the job will be retried", "job_id", jobID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			// The record may be RUNNING: redelivery (after the delay) starts a new attempt.
			_ = msg.NakWithDelay(Backoff(p.cfg.BackoffBase, p.cfg.BackoffCap, 1))
		}
	}()
	a, ok := p.begin(msg, &jobID)
	if !ok {
		return
	}
	defer a.cancel(nil)
	defer a.span.End()
	p.Running.add(jobID, a.cancel)
	defer p.Running.remove(jobID)
	res := p.execute(a)
	oc := p.classify(a, res)
	if oc.err != nil {
		a.span.SetStatus(otelcodes.Error, oc.err.Reason.String()+": "+oc.err.Message)
	}
	p.report(a, res, oc)
}

// begin reads (or repairs) the record and starts the attempt. It returns
// false when the delivery was settled without running (finished job, lost
// attempt out of attempts, compute not ready, CAS lost).
func (p *Pool) begin(msg jetstream.Msg, jobID *string) (*attempt, bool) {
	spec, inline, object, err := jobstore.DecodeMsg(msg.Headers(), msg.Data())
	if err != nil {
		p.Log.Error("undecodable job message terminated", "error", err, "subject", msg.Subject())
		_ = msg.Term()
		return nil, false
	}
	*jobID = spec.GetId()
	log := p.Log.With("job_id", *jobID)
	if id := tracectx.TraceID(msg.Headers().Get(tracectx.Header)); id != "" {
		log = log.With("trace_id", id)
	}
	ctx := context.Background()
	rec, err := p.Store.Record(ctx, *jobID)
	if jobstore.IsNotFound(err) {
		// No record yet: the message in hand is the job's QUEUED record
		// (Rev 0: the attempt's first write creates the record).
		rec, err = jobstore.QueuedRecord(spec), nil
	}
	if err != nil {
		log.Warn("cannot read job record; retrying delivery", "error", err)
		_ = msg.NakWithDelay(time.Second)
		return nil, false
	}
	j := rec.Job
	a := &attempt{msg: msg, spec: spec, inline: inline, object: object, rec: rec, log: log,
		maxAttempts: j.GetMaxAttempts() + attemptBase(msg)}
	switch {
	case jobstore.Terminal(j.GetState()):
		// Redelivery of a finished job: never run twice.
		_ = msg.Ack()
		return nil, false
	case j.GetState() == tandemv1.JobState_JOB_STATE_RUNNING && j.GetAttempt() >= a.maxAttempts:
		// The previous attempt's worker died or stalled past AckWait, and it was the last.
		a.number = j.GetAttempt()
		a.started = true
		a.log = log.With("attempt", a.number)
		p.deadLetter(ctx, a, apierr.Timeout("attempt %d did not finish (worker lost or stalled past AckWait)", j.GetAttempt()))
		return nil, false
	}
	if p.needsCompute(j) && !p.Compute.Ready() {
		_ = msg.NakWithDelay(500 * time.Millisecond)
		return nil, false
	}

	a.prevState = j.GetState()
	if a.prevState == tandemv1.JobState_JOB_STATE_RUNNING {
		a.prevState = tandemv1.JobState_JOB_STATE_RETRYING
	}
	a.number = j.GetAttempt() + 1
	a.began = time.Now()
	// The attempt's span: a child of the job's submit span (its context
	// travels in the message header), parent of the step calls' spans.
	_, span := telemetry.Tracer().Start(telemetry.FromHeader(context.Background(), msg.Headers()), "tandem.job.attempt",
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(telemetry.JobAttrs(*jobID, p.cfg.Name, a.number)...))
	a.span = span
	a.log = log.With("attempt", a.number)
	if sc := span.SpanContext(); sc.IsSampled() {
		a.log = a.log.With("span_id", sc.SpanID().String())
	}
	if p.fault("worker.after_start") != nil {
		span.End()
		return nil, false // simulated crash before any write: AckWait redelivers, the attempt uncounted
	}
	jctx, cancel := context.WithCancelCause(p.runCtx)
	a.jctx, a.cancel = trace.ContextWithSpan(jctx, span), cancel
	a.runningTimer = time.AfterFunc(runningAfter, func() { p.markRunning(a) })
	return a, true
}

// execute makes the step call under the job's deadline, sending in-progress
// acks while it runs.
func (p *Pool) execute(a *attempt) result {
	j := a.rec.Job
	timeout := p.cfg.JobTimeout
	if t := j.GetTimeout().AsDuration(); t > 0 {
		timeout = t
	}
	callCtx, cancelTimeout := context.WithTimeout(a.jctx, timeout)
	defer cancelTimeout()

	// In-progress acks every third of AckWait while the call runs.
	stopBeat := make(chan struct{})
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		t := time.NewTicker(broker.AckWait(p.cfg.JobTimeout) / 3)
		defer t.Stop()
		for {
			select {
			case <-stopBeat:
				return
			case <-t.C:
				if p.fault("worker.heartbeat") == nil {
					_ = a.msg.InProgress()
				}
			}
		}
	}()
	start := time.Now()
	resp, err := p.transform(callCtx, a)
	close(stopBeat)
	<-beatDone
	p.Metrics.JobDuration.WithLabelValues(p.cfg.Name, firstOp(j)).Observe(time.Since(start).Seconds())
	return result{resp: resp, err: err}
}

// classify is the one table from what happened to an attempt to its verdict.
func (p *Pool) classify(a *attempt, res result) outcome {
	switch cause := context.Cause(a.jctx); {
	case errors.Is(cause, ErrJobCancelled):
		return outcome{verdict: verdictConfirmCancel}
	case errors.Is(cause, errDrain):
		return outcome{verdict: verdictHandBack, why: "draining"}
	}
	if res.err == nil {
		return outcome{verdict: verdictSucceed}
	}
	if provider.IsUnreachable(res.err) {
		// No provider was reached (compute down or hung, no live worker for
		// the op): an outage, not the job's fault.
		return outcome{verdict: verdictHandBack, delay: time.Second, err: apierr.From(res.err), why: "provider unreachable"}
	}
	e := apierr.From(res.err)
	switch {
	case e.Remote && e.Reason == tandemv1.ErrorReason_SHUTTING_DOWN:
		// An op worker draining for shutdown gave the step back.
		return outcome{verdict: verdictHandBack, err: e, why: "worker draining"}
	case e.Reason == tandemv1.ErrorReason_OVERLOADED:
		// Compute refused to start it (its wait queue is full): back-pressure,
		// not a failure of the job.
		return outcome{verdict: verdictHandBack, delay: max(e.RetryAfter, Backoff(p.cfg.BackoffBase, p.cfg.BackoffCap, a.number)), err: e, why: "compute overloaded"}
	case !apierr.Retryable(e):
		return outcome{verdict: verdictFail, err: e}
	case a.number >= a.maxAttempts:
		return outcome{verdict: verdictDead, err: e}
	}
	return outcome{verdict: verdictRetry, err: e, delay: Backoff(p.cfg.BackoffBase, p.cfg.BackoffCap, a.number)}
}

func firstOp(j *tandemv1.Job) string {
	if len(j.GetSteps()) > 0 {
		return j.GetSteps()[0].GetOp()
	}
	return ""
}

func (p *Pool) fault(point string) error { return fault.At(p.Fault, point) }

// needsCompute reports whether any step of j runs on compute.
func (p *Pool) needsCompute(j *tandemv1.Job) bool {
	for _, st := range j.GetSteps() {
		if p.Workers == nil || !p.Workers.Serves(st.GetOp()) {
			return true
		}
	}
	return false
}

// transform loads the payload and runs the pipeline: each run of
// consecutive compute steps in one compute call, each worker step on a live
// worker of its op; the bytes between steps stay here.
func (p *Pool) transform(ctx context.Context, a *attempt) (resp *tandemv1.TransformResponse, err error) {
	j := a.rec.Job
	payload, err := p.Store.LoadPayload(ctx, j.GetId(), a.inline, a.object)
	if err != nil {
		return nil, err
	}
	defer func() {
		// A panic in the call path is a bug: retried as INTERNAL_ERROR.
		if r := recover(); r != nil {
			p.Log.Error("panic during job", "job_id", j.GetId(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, apierr.Internal("panic while running job: %v", r)
		}
	}()
	if err := p.fault("worker.before_compute"); err != nil {
		return nil, err
	}
	// Step calls carry the attempt span's context: compute's through the
	// gRPC stats handler, op workers' in the StepRequest.
	tp := telemetry.Traceparent(ctx)
	if tp == "" {
		tp = a.msg.Headers().Get(tracectx.Header)
	}
	steps := j.GetSteps()
	data, contentType := payload, ""
	for i := 0; i < len(steps); {
		if p.Workers != nil && p.Workers.Serves(steps[i].GetOp()) {
			idx := i
			out, err := p.Workers.Call(ctx, workers.Step{JobID: j.GetId(), Attempt: a.number, Index: i, Step: steps[i], Input: data,
				Traceparent: tp, InlineLimit: p.Store.InlineLimit,
				OnProgress: func(f float64, m string) { p.progress(ctx, a, idx, f, m) }})
			if err != nil {
				return nil, err
			}
			data, contentType = out.Data, out.ContentType
			i++
			continue
		}
		k := i
		for k < len(steps) && (p.Workers == nil || !p.Workers.Serves(steps[k].GetOp())) {
			k++
		}
		r, err := p.callCompute(ctx, steps[i:k], data, j.GetId(), a.number)
		if err != nil {
			return nil, offsetStep(err, i)
		}
		data, contentType = r.GetOutput(), r.GetContentType()
		i = k
	}
	return &tandemv1.TransformResponse{Output: data, ContentType: contentType}, nil
}

// offsetStep renumbers the step a compute error names from its segment to the pipeline.
func offsetStep(err error, offset int) error {
	if offset == 0 {
		return err
	}
	e := apierr.From(err)
	if v, ok := e.Metadata[apierr.KeyStep]; ok {
		if n, perr := strconv.Atoi(v); perr == nil {
			md := maps.Clone(e.Metadata)
			md[apierr.KeyStep] = strconv.Itoa(n + offset)
			c := *e
			c.Metadata = md
			if provider.IsUnreachable(err) {
				return fmt.Errorf("%w: %w", provider.ErrUnreachable, &c)
			}
			return &c
		}
	}
	return err
}

func (p *Pool) callCompute(ctx context.Context, steps []*tandemv1.Step, input []byte, jobID string, attempt uint32) (*tandemv1.TransformResponse, error) {
	op := steps[0].GetOp()
	start := time.Now()
	resp, err := p.Compute.Transform(ctx, &tandemv1.TransformRequest{Steps: steps, Input: input, JobId: jobID, Attempt: attempt})
	p.Metrics.ComputeLatency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	p.Metrics.ComputeBytes.WithLabelValues(op, "in").Add(float64(len(input)))
	if err == nil {
		p.Metrics.ComputeBytes.WithLabelValues(op, "out").Add(float64(len(resp.GetOutput())))
	}
	return resp, err
}

// progressEvery bounds how often a step's progress is written to the record.
const progressEvery = time.Second

// progress records a running step's progress in the job record (at most
// once per progressEvery, fenced like every write of the attempt) and
// announces it. Called from the executing goroutine only, so a.rec stays
// the executor's own current copy.
func (p *Pool) progress(ctx context.Context, a *attempt, step int, fraction float64, message string) {
	if time.Since(a.lastProgress) < progressEvery && fraction < 1 {
		return
	}
	a.lastProgress = time.Now()
	p.writeStarted(ctx, a, func(j *tandemv1.Job) {
		j.Progress = &tandemv1.Progress{Step: uint32(step), Fraction: fraction, Message: message, UpdatedAt: jobstore.Now()}
	})
}
