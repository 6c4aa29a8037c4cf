package queue

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// Reporting an attempt's outcome: every write is a CAS on the record, fenced
// by the attempt number, so a stalled worker can never overwrite a newer
// attempt or a cancel; each ends in exactly one ack, nak, term or nothing.

// report carries out an outcome's verdict.
func (p *Pool) report(a *attempt, res result, oc outcome) {
	ctx := context.Background()
	a.mu.Lock()
	j, crashed := a.rec.Job, a.crashed
	a.mu.Unlock()
	if crashed {
		return // a simulated crash: nothing more happens to this delivery
	}
	switch oc.verdict {
	case verdictConfirmCancel:
		// CancelJob already wrote CANCELLED; confirm and ack.
		p.finish(ctx, a, func(*tandemv1.Job) settle { return settleKeep }, 0)
	case verdictHandBack:
		if oc.err != nil {
			a.log.Info("job handed back; the attempt does not count", "why", oc.why, "delay", oc.delay.String(), "reason", oc.err.Reason.String(), "error", oc.err.Message)
		}
		p.handBack(ctx, a, oc.delay)
	case verdictSucceed:
		// The result goes on a scratch copy and into the record inside the
		// CAS loop, so a re-read after a conflict cannot lose it.
		scratch := &tandemv1.Job{Id: j.GetId(), Queue: j.GetQueue()}
		if err := p.Store.AttachResult(ctx, scratch, res.resp.GetOutput(), res.resp.GetContentType()); err != nil {
			a.log.Warn("storing result failed; retrying", "error", err)
			p.handBack(ctx, a, time.Second)
			return
		}
		p.finish(ctx, a, func(j *tandemv1.Job) settle {
			j.Result, j.ResultSize, j.ResultContentType = scratch.GetResult(), scratch.GetResultSize(), scratch.GetResultContentType()
			j.State = tandemv1.JobState_JOB_STATE_SUCCEEDED
			j.FinishedAt = jobstore.Now()
			j.LastError = nil
			jobstore.CloseAttempt(j, a.number, nil)
			return settleAck
		}, 0)
		p.Store.DeletePayload(ctx, a.object)
	case verdictFail:
		a.log.Info("job failed permanently", "reason", oc.err.Reason.String(), "error", oc.err.Message)
		p.finish(ctx, a, func(j *tandemv1.Job) settle {
			j.State = tandemv1.JobState_JOB_STATE_FAILED
			j.FinishedAt = jobstore.Now()
			j.LastError = apierr.Proto(oc.err)
			jobstore.CloseAttempt(j, a.number, j.LastError)
			return settleAck
		}, 0)
		p.Store.DeletePayload(ctx, a.object)
	case verdictDead:
		a.log.Warn("job out of attempts: dead-lettered", "reason", oc.err.Reason.String(), "error", oc.err.Message)
		p.deadLetter(ctx, a, oc.err)
	case verdictRetry:
		a.log.Info("job attempt failed; retrying", "reason", oc.err.Reason.String(), "error", oc.err.Message, "delay", oc.delay)
		p.finish(ctx, a, func(j *tandemv1.Job) settle {
			j.State = tandemv1.JobState_JOB_STATE_RETRYING
			j.LastError = apierr.Proto(oc.err)
			jobstore.CloseAttempt(j, a.number, j.LastError)
			return settleNakDelay
		}, oc.delay)
		p.Metrics.Retries.WithLabelValues(p.cfg.Name).Inc()
	}
}

// settle is how a written outcome settles the message.
type settle int

const (
	settleAck      settle = iota // terminal: ack the message
	settleNakDelay               // retry later
	settleKeep                   // no change wanted (already terminal elsewhere)
)

// finish applies the attempt's outcome by CAS, fenced by the attempt number:
// if the record moved on (a newer attempt, a cancel) this delivery is stale and
// must not overwrite it.
func (p *Pool) finish(ctx context.Context, a *attempt, apply func(j *tandemv1.Job) settle, delay time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.settle() {
		return
	}
	rec, msg := a.rec, a.msg
	for range 20 {
		cur := rec.Job
		if !a.owns(cur) {
			p.fenced(a, cur)
			return
		}
		next := proto.Clone(cur).(*tandemv1.Job)
		if !a.started {
			// The deferred RUNNING write never happened: the outcome write
			// carries the attempt's start too.
			p.applyStart(a, next)
		}
		st := apply(next)
		if st == settleKeep {
			// No write wanted (CancelJob already wrote CANCELLED): settle
			// the message by the record as it is now.
			if fresh, err := p.Store.Get(ctx, cur.GetId()); err == nil {
				cur = fresh.Job
			}
			p.fenced(a, cur)
			return
		}
		try := &jobstore.Record{Job: next, Rev: rec.Rev}
		var ttl time.Duration
		if st == settleAck {
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
			a.log.Warn("recording job outcome failed; delivery will be retried", "error", err)
			_ = msg.NakWithDelay(time.Second)
			return
		}
		*rec = *try
		p.Store.PublishEvent(next, try.Rev)
		switch st {
		case settleAck:
			if p.fault("worker.before_ack") != nil {
				return
			}
			_ = msg.Ack()
			p.completions.add()
			p.Metrics.Completed.WithLabelValues(p.cfg.Name, outcomeLabel(next.GetState())).Inc()
		case settleNakDelay:
			_ = msg.NakWithDelay(delay)
		}
		return
	}
	_ = msg.NakWithDelay(time.Second)
}

// fenced handles a delivery whose record moved on without it.
func (p *Pool) fenced(a *attempt, cur *tandemv1.Job) {
	_ = p.fault("worker.fenced")
	if jobstore.Terminal(cur.GetState()) {
		// Finished (e.g. cancelled): the message has no further use.
		_ = a.msg.Ack()
		if cur.GetState() == tandemv1.JobState_JOB_STATE_CANCELLED {
			p.completions.add()
			p.Metrics.Completed.WithLabelValues(p.cfg.Name, outcomeLabel(cur.GetState())).Inc()
		}
		return
	}
	// A newer attempt owns the message now: neither ack nor nak it.
	a.log.Info("stale attempt fenced off", "record_attempt", cur.GetAttempt(), "state", cur.GetState().String())
}

// handBack returns the message without counting the attempt: the record goes
// back to QUEUED/RETRYING with the attempt number it had.
func (p *Pool) handBack(ctx context.Context, a *attempt, delay time.Duration) {
	a.mu.Lock()
	if !a.started {
		// Nothing of the attempt was written: giving the message back is all.
		if a.settle() {
			_ = a.msg.NakWithDelay(delay)
		}
		a.mu.Unlock()
		return
	}
	a.mu.Unlock()
	p.finish(ctx, a, func(j *tandemv1.Job) settle {
		j.Attempt = a.number - 1
		if n := len(j.Attempts); n > 0 && j.Attempts[n-1].GetNumber() == a.number {
			j.Attempts = j.Attempts[:n-1]
		}
		j.State = a.prevState
		return settleNakDelay
	}, delay)
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
