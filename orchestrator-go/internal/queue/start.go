package queue

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/tracectx"
)

// Starting an attempt. The RUNNING write is deferred: an attempt writes
// RUNNING only once it has run for runningAfter (or reports progress), so a
// short job is one write at submit (its message) and one when it ends (the
// terminal record with its result). Until then the record (or the message,
// while no record exists) still says QUEUED or RETRYING with the previous
// attempt number, and the attempt is fenced by the record's revision: every
// write of the attempt is a CAS on the revision it read, so a cancel or
// another delivery that wrote first makes this one stale.
//
// What the deferral changes: an orchestrator killed during a short attempt
// leaves no trace of it, so the redelivery after AckWait runs the same
// attempt number again (the lost attempt is not counted, like a hand-back);
// an attempt that ran past runningAfter is recorded and counted as before.

// runningAfter is how long an attempt runs before its RUNNING write.
const runningAfter = 250 * time.Millisecond

// errCrashed is the cancel cause of an attempt abandoned by a simulated crash.
var errCrashed = errors.New("simulated crash (fault injection)")

// owns reports whether cur is still the record this attempt may write.
// Caller holds a.mu.
func (a *attempt) owns(cur *tandemv1.Job) bool {
	if a.started {
		return cur.GetState() == tandemv1.JobState_JOB_STATE_RUNNING && cur.GetAttempt() == a.number
	}
	return cur.GetAttempt()+1 == a.number && !jobstore.Terminal(cur.GetState())
}

// applyStart puts the attempt's start on j: RUNNING, the attempt number and
// its entry in the attempt history.
func (p *Pool) applyStart(a *attempt, j *tandemv1.Job) {
	began := jobstore.Timestamp(a.began)
	j.State = tandemv1.JobState_JOB_STATE_RUNNING
	j.Attempt = a.number
	if j.StartedAt == nil {
		j.StartedAt = began
	}
	j.Attempts = append(j.Attempts, &tandemv1.Attempt{Number: a.number, StartedAt: began, Worker: p.WorkerID,
		TraceId: tracectx.TraceID(a.msg.Headers().Get(tracectx.Header))})
}

// markRunning is the deferred RUNNING write (run by the attempt's timer).
func (p *Pool) markRunning(a *attempt) { p.writeStarted(context.Background(), a, nil) }

// writeStarted writes the attempt's RUNNING state (the first time) plus
// extra (e.g. progress) by CAS, unless the attempt is settling or fenced.
// Best effort: a write that fails leaves the job as it was, and the
// attempt's outcome write carries the start anyway.
func (p *Pool) writeStarted(ctx context.Context, a *attempt, extra func(*tandemv1.Job)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.settled || a.crashed || (a.started && extra == nil) {
		return
	}
	for range 3 {
		cur := a.rec.Job
		if !a.owns(cur) {
			return
		}
		next := proto.Clone(cur).(*tandemv1.Job)
		first := !a.started
		if first {
			p.applyStart(a, next)
		}
		if extra != nil {
			extra(next)
		}
		try := &jobstore.Record{Job: next, Rev: a.rec.Rev}
		err := p.Store.Update(ctx, try)
		if errors.Is(err, jobstore.ErrConflict) {
			fresh, gerr := p.Store.Get(ctx, cur.GetId())
			if gerr != nil {
				return
			}
			*a.rec = *fresh
			continue
		}
		if err != nil {
			a.log.Debug("RUNNING/progress write failed; the outcome write will carry it", "error", err)
			return
		}
		*a.rec = *try
		a.started = true
		p.Store.PublishEvent(next, try.Rev)
		if first && p.fault("worker.after_running") != nil {
			// Simulated crash right after the RUNNING write: nothing more
			// is written, acked or nakked; AckWait redelivers.
			a.crashed = true
			a.cancel(errCrashed)
		}
		return
	}
}

// settle marks the attempt as writing its outcome (no RUNNING write after
// this) and reports whether it may go on (not abandoned by a simulated
// crash). Caller holds a.mu.
func (a *attempt) settle() bool {
	a.settled = true
	if a.runningTimer != nil {
		a.runningTimer.Stop()
	}
	return !a.crashed
}
