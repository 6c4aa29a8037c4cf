package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/tracectx"
)

// deadLetter copies the job (record with last error and attempt history, plus
// the payload) to the dead-letter stream, then marks the record DEAD by CAS,
// then terminates the message — in that order, so a crash at any point leaves
// the job either still in its queue or in the dead-letter stream.
func (p *Pool) deadLetter(ctx context.Context, a *attempt, e *apierr.Error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.settle() {
		return
	}
	msg, rec, attempt, log := a.msg, a.rec, a.number, a.log
	cur := rec.Job
	if !a.owns(cur) {
		p.fenced(a, cur)
		return
	}
	dead := proto.Clone(cur).(*tandemv1.Job)
	if !a.started {
		p.applyStart(a, dead)
	}
	dead.State = tandemv1.JobState_JOB_STATE_DEAD
	dead.FinishedAt = jobstore.Now()
	dead.LastError = apierr.Proto(e)
	jobstore.CloseAttempt(dead, attempt, dead.LastError)
	m, err := jobstore.EncodeMsg(broker.DLQSubject(p.cfg.Name, dead.GetId()), dead, a.inline, a.object)
	if err != nil {
		log.Error("encoding dead letter failed", "error", err)
		_ = msg.NakWithDelay(time.Second)
		return
	}
	if tp := msg.Headers().Get(tracectx.Header); tp != "" {
		m.Header.Set(tracectx.Header, tp)
	}
	if _, err := p.Broker.JS().PublishMsg(ctx, m, jetstream.WithMsgID(fmt.Sprintf("dlq-%s-%d", dead.GetId(), attempt))); err != nil {
		log.Warn("dead-letter publish failed; retrying delivery", "error", err)
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
				p.fenced(a, fresh.Job)
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
