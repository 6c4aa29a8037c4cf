package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
	"github.com/tandem/tandem/orchestrator-go/internal/fault"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// Running maps the ids of jobs running in this orchestrator to their cancel
// functions, so a cancel notice (from any orchestrator) stops the compute call.
type Running struct {
	mu sync.Mutex
	m  map[string]context.CancelCauseFunc
}

// NewRunning returns an empty registry.
func NewRunning() *Running { return &Running{m: map[string]context.CancelCauseFunc{}} }

func (r *Running) add(id string, c context.CancelCauseFunc) {
	r.mu.Lock()
	r.m[id] = c
	r.mu.Unlock()
}

func (r *Running) remove(id string) {
	r.mu.Lock()
	delete(r.m, id)
	r.mu.Unlock()
}

// ErrJobCancelled is the cancel cause of a job cancelled by CancelJob.
var ErrJobCancelled = errors.New("job cancelled")

// Cancel cancels the job's compute call if it runs here.
func (r *Running) Cancel(id string) bool {
	r.mu.Lock()
	c, ok := r.m[id]
	r.mu.Unlock()
	if ok {
		c(ErrJobCancelled)
	}
	return ok
}

// Backoff is the delay before attempt+1: full jitter over an exponential
// ceiling, uniform in [0, min(cap, base·2^(attempt-1))].
func Backoff(base, cap time.Duration, attempt uint32) time.Duration {
	ceil := cap
	if attempt < 40 {
		if d := base << (attempt - 1); d > 0 && d < cap {
			ceil = d
		}
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// handle runs one delivery of a job message. Every branch ends in exactly one
// of: ack, nak (with or without delay), term, or nothing (a fenced stale delivery).
func (p *Pool) handle(msg jetstream.Msg) {
	var jobID string
	defer func() {
		if r := recover(); r != nil {
			p.Log.Error("panic in worker; the job will be retried", "job_id", jobID, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			// The record may be RUNNING: redelivery (after the delay) starts a new attempt.
			_ = msg.NakWithDelay(Backoff(p.cfg.BackoffBase, p.cfg.BackoffCap, 1))
		}
	}()
	spec, inline, object, err := jobstore.DecodeMsg(msg.Headers(), msg.Data())
	if err != nil {
		p.Log.Error("undecodable job message terminated", "err", err, "subject", msg.Subject())
		_ = msg.Term()
		return
	}
	jobID = spec.GetId()
	traceparent := msg.Headers().Get(jobstore.HeaderTraceparent)
	log := p.Log.With("job_id", jobID)
	if id := jobstore.TraceID(traceparent); id != "" {
		log = log.With("trace_id", id)
	}
	ctx := context.Background()

	rec, err := p.Store.Get(ctx, jobID)
	var ae *apierr.Error
	if errors.As(err, &ae) && ae.Reason == tandemv1.ErrorReason_JOB_NOT_FOUND {
		// The submitter published and then died before writing the record
		// (or the record of a dead-lettered job expired before its retry):
		// the message is the truth.
		rec, err = p.Store.Create(ctx, jobstore.Spec(spec))
		if errors.Is(err, jobstore.ErrExists) {
			rec, err = p.Store.Get(ctx, jobID)
		}
	}
	if err != nil {
		log.Warn("cannot read job record; retrying delivery", "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	j := rec.Job
	// Attempts count from the base carried by the message: 0, or the attempt
	// number at which RetryDeadLetters re-enqueued the job (numbers continue).
	base := attemptBase(msg)
	maxAttempts := j.GetMaxAttempts() + base
	switch j.GetState() {
	case tandemv1.JobState_JOB_STATE_SUCCEEDED, tandemv1.JobState_JOB_STATE_FAILED,
		tandemv1.JobState_JOB_STATE_CANCELLED, tandemv1.JobState_JOB_STATE_DEAD:
		// Redelivery of a finished job: never run twice.
		_ = msg.Ack()
		return
	case tandemv1.JobState_JOB_STATE_RUNNING:
		// The previous attempt's worker died or stalled past AckWait.
		if j.GetAttempt() >= maxAttempts {
			lost := apierr.Timeout("attempt %d did not finish (worker lost or stalled past AckWait)", j.GetAttempt())
			p.deadLetter(ctx, msg, rec, j.GetAttempt(), lost, inline, object)
			return
		}
	}
	if !p.Compute.Ready() {
		_ = msg.NakWithDelay(500 * time.Millisecond)
		return
	}

	// Start the attempt: RUNNING with attempt+1, by CAS.
	prevState := j.GetState()
	if prevState == tandemv1.JobState_JOB_STATE_RUNNING {
		prevState = tandemv1.JobState_JOB_STATE_RETRYING
	}
	attempt := j.GetAttempt() + 1
	now := jobstore.Now()
	j.State = tandemv1.JobState_JOB_STATE_RUNNING
	j.Attempt = attempt
	if j.StartedAt == nil {
		j.StartedAt = now
	}
	j.Attempts = append(j.Attempts, &tandemv1.Attempt{Number: attempt, StartedAt: now, Worker: p.WorkerID})
	if err := p.Store.Update(ctx, rec); err != nil {
		// Someone changed it (a cancel, another delivery): look again later.
		log.Debug("could not start attempt", "err", err)
		_ = msg.NakWithDelay(100 * time.Millisecond)
		return
	}
	log = log.With("attempt", attempt)
	p.Store.PublishEvent(j, rec.Rev)
	if p.fault("worker.after_running") != nil {
		return // simulated crash: no ack, no nak; AckWait redelivers
	}

	timeout := p.cfg.JobTimeout
	if t := j.GetTimeout().AsDuration(); t > 0 {
		timeout = t
	}
	jctx, cancel := context.WithCancelCause(p.runCtx)
	defer cancel(nil)
	p.Running.add(jobID, cancel)
	defer p.Running.remove(jobID)
	callCtx, cancelTimeout := context.WithTimeout(jctx, timeout)
	defer cancelTimeout()

	// In-progress acks once the job has run a third of AckWait.
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
					_ = msg.InProgress()
				}
			}
		}
	}()

	start := time.Now()
	resp, callErr := p.transform(callCtx, msg, j, attempt, inline, object)
	close(stopBeat)
	<-beatDone
	op := ""
	if len(j.GetSteps()) > 0 {
		op = j.GetSteps()[0].GetOp()
	}
	p.Metrics.JobDuration.WithLabelValues(p.cfg.Name, op).Observe(time.Since(start).Seconds())

	switch cause := context.Cause(jctx); {
	case errors.Is(cause, ErrJobCancelled):
		// CancelJob already wrote CANCELLED; confirm and ack.
		p.finish(ctx, msg, rec, attempt, log, func(j *tandemv1.Job) outcome { return outcomeKeep })
		return
	case errors.Is(cause, errDrain):
		p.handBack(ctx, msg, rec, attempt, prevState, 0, log)
		return
	}
	if callErr == nil {
		if err := p.Store.AttachResult(ctx, j, resp.GetOutput(), resp.GetContentType()); err != nil {
			log.Warn("storing result failed; retrying", "err", err)
			p.handBack(ctx, msg, rec, attempt, prevState, time.Second, log)
			return
		}
		p.finish(ctx, msg, rec, attempt, log, func(j *tandemv1.Job) outcome {
			j.State = tandemv1.JobState_JOB_STATE_SUCCEEDED
			j.FinishedAt = jobstore.Now()
			j.LastError = nil
			closeAttempt(j, attempt, nil)
			return outcomeAck
		})
		if object != "" {
			p.Store.DeletePayload(ctx, object)
		}
		return
	}
	if compute.IsUnreachable(callErr) {
		// Compute was not reached: the attempt does not count.
		log.Warn("compute unreachable; job handed back", "err", callErr)
		p.handBack(ctx, msg, rec, attempt, prevState, time.Second, log)
		return
	}
	e := apierr.From(callErr)
	log = log.With("reason", e.Reason.String())
	if e.Reason == tandemv1.ErrorReason_OVERLOADED {
		// Compute refused to start it (its wait queue is full): back-pressure,
		// not a failure of the job, so the attempt does not count.
		delay := max(e.RetryAfter, Backoff(p.cfg.BackoffBase, p.cfg.BackoffCap, attempt))
		log.Info("compute overloaded; job handed back", "delay", delay.String())
		p.handBack(ctx, msg, rec, attempt, prevState, delay, log)
		return
	}
	if !apierr.Retryable(e) {
		log.Info("job failed permanently", "err", e.Message)
		p.finish(ctx, msg, rec, attempt, log, func(j *tandemv1.Job) outcome {
			j.State = tandemv1.JobState_JOB_STATE_FAILED
			j.FinishedAt = jobstore.Now()
			j.LastError = apierr.Proto(e)
			closeAttempt(j, attempt, j.LastError)
			return outcomeAck
		})
		if object != "" {
			p.Store.DeletePayload(ctx, object)
		}
		return
	}
	if attempt >= maxAttempts {
		log.Warn("job out of attempts: dead-lettered", "err", e.Message)
		p.deadLetter(ctx, msg, rec, attempt, e, inline, object)
		return
	}
	delay := Backoff(p.cfg.BackoffBase, p.cfg.BackoffCap, attempt)
	log.Info("job attempt failed; retrying", "err", e.Message, "delay", delay)
	p.finish(ctx, msg, rec, attempt, log, func(j *tandemv1.Job) outcome {
		j.State = tandemv1.JobState_JOB_STATE_RETRYING
		j.LastError = apierr.Proto(e)
		closeAttempt(j, attempt, j.LastError)
		return outcomeNakDelay
	}, delay)
	p.Metrics.Retries.WithLabelValues(p.cfg.Name).Inc()
}

// attemptBase reads the Tandem-Attempt-Base header of a job message.
func attemptBase(msg jetstream.Msg) uint32 {
	v := msg.Headers().Get(jobstore.HeaderAttemptBase)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

func (p *Pool) fault(point string) error {
	fault.Hit(point)
	if p.Fault == nil {
		return nil
	}
	return p.Fault(point)
}

func (p *Pool) transform(ctx context.Context, msg jetstream.Msg, j *tandemv1.Job, attempt uint32, inline []byte, object string) (resp *tandemv1.TransformResponse, err error) {
	payload, err := p.Store.LoadPayload(ctx, inline, object)
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
	op := ""
	if len(j.GetSteps()) > 0 {
		op = j.GetSteps()[0].GetOp()
	}
	start := time.Now()
	if tp := msg.Headers().Get(jobstore.HeaderTraceparent); tp != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, jobstore.HeaderTraceparent, tp)
	}
	resp, err = p.Compute.Transform(ctx, &tandemv1.TransformRequest{Steps: j.GetSteps(), Input: payload, JobId: j.GetId(), Attempt: attempt})
	p.Metrics.ComputeLatency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	p.Metrics.ComputeBytes.WithLabelValues(op, "in").Add(float64(len(payload)))
	if err == nil {
		p.Metrics.ComputeBytes.WithLabelValues(op, "out").Add(float64(len(resp.GetOutput())))
	}
	return resp, err
}

func closeAttempt(j *tandemv1.Job, attempt uint32, e *tandemv1.Error) {
	for _, a := range j.GetAttempts() {
		if a.GetNumber() == attempt && a.FinishedAt == nil {
			a.FinishedAt = jobstore.Now()
			a.Error = e
		}
	}
}

type outcome int

const (
	outcomeAck      outcome = iota // terminal: ack the message
	outcomeNakDelay                // retry later
	outcomeKeep                    // no change wanted (already terminal elsewhere)
)

// finish applies the attempt's outcome by CAS, fenced by the attempt number:
// if the record moved on (a newer attempt, a cancel) this delivery is stale and
// must not overwrite it.
func (p *Pool) finish(ctx context.Context, msg jetstream.Msg, rec *jobstore.Record, attempt uint32, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}, apply func(j *tandemv1.Job) outcome, delay ...time.Duration) {
	for i := 0; i < 20; i++ {
		cur := rec.Job
		if cur.GetState() != tandemv1.JobState_JOB_STATE_RUNNING || cur.GetAttempt() != attempt {
			p.fenced(msg, cur, attempt, log)
			return
		}
		next := proto.Clone(cur).(*tandemv1.Job)
		oc := apply(next)
		if oc == outcomeKeep {
			p.fenced(msg, cur, attempt, log)
			return
		}
		try := &jobstore.Record{Job: next, Rev: rec.Rev}
		var ttl time.Duration
		if oc == outcomeAck {
			ttl = p.cfg.ResultTTL // terminal: the record expires with the result
		}
		err := p.Store.UpdateTTL(ctx, try, ttl)
		if errors.Is(err, jobstore.ErrConflict) {
			fresh, gerr := p.Store.Get(ctx, cur.GetId())
			if gerr != nil {
				break
			}
			*rec = *fresh
			continue
		}
		if err != nil {
			log.Warn("recording job outcome failed; delivery will be retried", "err", err)
			_ = msg.NakWithDelay(time.Second)
			return
		}
		*rec = *try
		p.Store.PublishEvent(next, try.Rev)
		switch oc {
		case outcomeAck:
			if p.fault("worker.before_ack") != nil {
				return
			}
			_ = msg.Ack()
			p.completions.add()
			p.Metrics.Completed.WithLabelValues(p.cfg.Name, outcomeLabel(next.GetState())).Inc()
		case outcomeNakDelay:
			d := time.Duration(0)
			if len(delay) > 0 {
				d = delay[0]
			}
			_ = msg.NakWithDelay(d)
		}
		return
	}
	_ = msg.NakWithDelay(time.Second)
}

// fenced handles a delivery whose record moved on without it.
func (p *Pool) fenced(msg jetstream.Msg, cur *tandemv1.Job, attempt uint32, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}) {
	_ = p.fault("worker.fenced")
	if jobstore.Terminal(cur.GetState()) {
		// Finished (e.g. cancelled): the message has no further use.
		_ = msg.Ack()
		if cur.GetState() == tandemv1.JobState_JOB_STATE_CANCELLED {
			p.completions.add()
			p.Metrics.Completed.WithLabelValues(p.cfg.Name, outcomeLabel(cur.GetState())).Inc()
		}
		return
	}
	// A newer attempt owns the message now: neither ack nor nak it.
	log.Info("stale attempt fenced off", "record_attempt", cur.GetAttempt(), "state", cur.GetState().String())
}

// handBack returns the message without counting the attempt: the record goes
// back to QUEUED/RETRYING with the attempt number it had.
func (p *Pool) handBack(ctx context.Context, msg jetstream.Msg, rec *jobstore.Record, attempt uint32, prevState tandemv1.JobState, delay time.Duration, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}) {
	p.finish(ctx, msg, rec, attempt, log, func(j *tandemv1.Job) outcome {
		j.Attempt = attempt - 1
		if n := len(j.Attempts); n > 0 && j.Attempts[n-1].GetNumber() == attempt {
			j.Attempts = j.Attempts[:n-1]
		}
		j.State = prevState
		return outcomeNakDelay
	}, delay)
}

// deadLetter copies the job (record with last error and attempt history, plus
// the payload) to the dead-letter stream, then marks the record DEAD by CAS,
// then terminates the message — in that order, so a crash at any point leaves
// the job either still in its queue or in the dead-letter stream.
func (p *Pool) deadLetter(ctx context.Context, msg jetstream.Msg, rec *jobstore.Record, attempt uint32, e *apierr.Error, inline []byte, object string) {
	log := p.Log.With("job_id", rec.Job.GetId(), "attempt", attempt)
	cur := rec.Job
	if cur.GetAttempt() != attempt || cur.GetState() != tandemv1.JobState_JOB_STATE_RUNNING {
		p.fenced(msg, cur, attempt, log)
		return
	}
	dead := proto.Clone(cur).(*tandemv1.Job)
	dead.State = tandemv1.JobState_JOB_STATE_DEAD
	dead.FinishedAt = jobstore.Now()
	dead.LastError = apierr.Proto(e)
	closeAttempt(dead, attempt, dead.LastError)
	m, err := jobstore.EncodeMsg(broker.DLQSubject(p.cfg.Name, dead.GetId()), dead, inline, object)
	if err != nil {
		log.Error("encoding dead letter failed", "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if tp := msg.Headers().Get(jobstore.HeaderTraceparent); tp != "" {
		m.Header.Set(jobstore.HeaderTraceparent, tp)
	}
	if _, err := p.Broker.JS().PublishMsg(ctx, m, jetstream.WithMsgID(fmt.Sprintf("dlq-%s-%d", dead.GetId(), attempt))); err != nil {
		log.Warn("dead-letter publish failed; retrying delivery", "err", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	try := &jobstore.Record{Job: dead, Rev: rec.Rev}
	if err := p.Store.UpdateTTL(ctx, try, p.cfg.ResultTTL); err != nil {
		if errors.Is(err, jobstore.ErrConflict) {
			if fresh, gerr := p.Store.Get(ctx, cur.GetId()); gerr == nil {
				// Fenced (e.g. cancelled meanwhile): drop the copy we just made.
				if fresh.Job.GetState() != tandemv1.JobState_JOB_STATE_DEAD {
					_ = p.Broker.DLQ().Purge(ctx, jetstream.WithPurgeSubject(broker.DLQSubject(p.cfg.Name, dead.GetId())))
				}
				p.fenced(msg, fresh.Job, attempt, log)
				return
			}
		}
		_ = msg.NakWithDelay(time.Second)
		return
	}
	p.Store.PublishEvent(dead, try.Rev)
	_ = msg.Term()
	p.completions.add()
	p.Metrics.Completed.WithLabelValues(p.cfg.Name, "dead").Inc()
	p.Metrics.DeadLettered.WithLabelValues(p.cfg.Name).Inc()
}

func outcomeLabel(s tandemv1.JobState) string {
	switch s {
	case tandemv1.JobState_JOB_STATE_SUCCEEDED:
		return "succeeded"
	case tandemv1.JobState_JOB_STATE_FAILED:
		return "failed"
	case tandemv1.JobState_JOB_STATE_DEAD:
		return "dead"
	case tandemv1.JobState_JOB_STATE_CANCELLED:
		return "cancelled"
	}
	return "other"
}
