package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/tracectx"
)

const (
	defaultDLQLimit = 100
	maxDLQLimit     = 1000
)

// deadLetter is one message of the dead-letter stream.
type deadLetter struct {
	seq     uint64
	trace   string        // traceparent
	job     *tandemv1.Job // the record as it was when it died
	payload []byte        // inline payload
	object  string        // or the payload object
}

func (s *Service) dlqCount(ctx context.Context, queue string) (uint64, error) {
	info, err := s.Broker.DLQ().Info(ctx, jetstream.WithSubjectFilter(broker.DLQFilter(queue)))
	if err != nil {
		return 0, apierr.BrokerUnavailable(err)
	}
	return uint64(len(info.State.Subjects)), nil
}

// scanDLQ reads a queue's dead letters in order, calling fn for each until it returns false.
func (s *Service) scanDLQ(ctx context.Context, queue string, fn func(deadLetter) bool) error {
	total, err := s.dlqCount(ctx, queue)
	if err != nil || total == 0 {
		return err
	}
	cons, err := s.Broker.DLQ().OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.DLQFilter(queue)}})
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return apierr.BrokerUnavailable(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return apierr.BrokerUnavailable(err)
			}
			j, payload, obj, err := jobstore.DecodeMsg(m.Headers(), m.Data())
			if err == nil && !fn(deadLetter{seq: md.Sequence.Stream, trace: m.Headers().Get(tracectx.Header), job: j, payload: payload, object: obj}) {
				return nil
			}
			if md.NumPending == 0 {
				return nil
			}
		}
		if n == 0 {
			return nil
		}
	}
}

func (s *Service) getDeadLetter(ctx context.Context, queue, id string) (*deadLetter, error) {
	m, err := s.Broker.DLQ().GetLastMsgForSubject(ctx, broker.DLQSubject(queue, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, apierr.DeadLetterNotFound(queue, id)
	}
	if err != nil {
		var ae *jetstream.APIError
		if errors.As(err, &ae) && ae.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, apierr.DeadLetterNotFound(queue, id)
		}
		return nil, apierr.BrokerUnavailable(err)
	}
	j, payload, obj, err := jobstore.DecodeMsg(m.Header, m.Data)
	if err != nil {
		return nil, apierr.Internal("dead letter %s: %v", id, err)
	}
	return &deadLetter{seq: m.Sequence, trace: m.Header.Get(tracectx.Header), job: j, payload: payload, object: obj}, nil
}

func (s *Service) listDeadLetters(ctx context.Context, req *tandemv1.ListDeadLettersRequest) (*tandemv1.ListDeadLettersResponse, error) {
	q, err := s.queueFor(ctx, req.GetQueue(), auth.Read)
	if err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = defaultDLQLimit
	}
	limit = min(limit, maxDLQLimit)
	total, err := s.dlqCount(ctx, q.Name)
	if err != nil {
		return nil, err
	}
	out := &tandemv1.ListDeadLettersResponse{Total: total}
	err = s.scanDLQ(ctx, q.Name, func(d deadLetter) bool {
		out.Jobs = append(out.Jobs, d.job)
		return len(out.Jobs) < limit
	})
	return out, err
}

// targets resolves the job ids a retry/purge applies to.
func (s *Service) targets(ctx context.Context, queue string, ids []string, all bool) ([]*deadLetter, error) {
	if err := ident.JobIDs("job_ids", ids); err != nil {
		return nil, err
	}
	var out []*deadLetter
	if len(ids) == 0 {
		if !all {
			return nil, apierr.InvalidRequest("job_ids", "job_ids: give job ids, or all = true")
		}
		err := s.scanDLQ(ctx, queue, func(d deadLetter) bool { out = append(out, &d); return true })
		return out, err
	}
	for _, id := range ids {
		d, err := s.getDeadLetter(ctx, queue, id)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// retryDeadLetters re-enqueues dead jobs with fresh attempts: attempt numbers
// continue (so they stay unique), and max_attempts counts again from the last
// one (the message carries that base). Per job: record DEAD → QUEUED by CAS, publish the job message (Msg-Id derived
// from the dead letter's sequence, so a repeated retry is deduplicated), then
// remove the dead letter. A crash in between leaves the dead letter in place
// and a repeated RetryDeadLetters completes it.
func (s *Service) retryDeadLetters(ctx context.Context, req *tandemv1.RetryDeadLettersRequest) (*tandemv1.RetryDeadLettersResponse, error) {
	q, err := s.queueFor(ctx, req.GetQueue(), auth.Admin)
	if err != nil {
		return nil, err
	}
	dls, err := s.targets(ctx, q.Name, req.GetJobIds(), req.GetAll())
	if err != nil {
		return nil, err
	}
	out := &tandemv1.RetryDeadLettersResponse{}
	for _, d := range dls {
		id := d.job.GetId()
		base := d.job.GetAttempt()
		rec, err := s.Store.Mutate(ctx, id, nil, func(j *tandemv1.Job) (bool, error) {
			base = j.GetAttempt()
			switch j.GetState() {
			case tandemv1.JobState_JOB_STATE_QUEUED:
				return false, nil // an earlier retry got this far
			case tandemv1.JobState_JOB_STATE_DEAD:
			default:
				return false, apierr.JobStateConflict(id, j.GetState(), "retry a dead letter")
			}
			j.State = tandemv1.JobState_JOB_STATE_QUEUED
			j.FinishedAt = nil
			j.StartedAt = nil
			return true, nil
		})
		var ae *apierr.Error
		if errors.As(err, &ae) && ae.Reason == tandemv1.ErrorReason_JOB_NOT_FOUND {
			// The record expired: recreate it from the dead letter.
			fresh := jobstore.Spec(d.job)
			fresh.LastError, fresh.Attempts, fresh.Attempt = d.job.GetLastError(), d.job.GetAttempts(), d.job.GetAttempt()
			rec, err = s.Store.Create(ctx, fresh)
			if errors.Is(err, jobstore.ErrExists) {
				rec, err = s.Store.Get(ctx, id) // a concurrent retry recreated it
			}
		}
		if err != nil {
			return nil, err
		}
		msg, err := jobstore.EncodeMsg(broker.JobSubject(q.Name, d.job.GetId()), jobstore.Spec(d.job), d.payload, d.object)
		if err != nil {
			return nil, apierr.Internal("encode job: %v", err)
		}
		msg.Header.Set(jobstore.HeaderAttemptBase, strconv.FormatUint(uint64(base), 10))
		if d.trace != "" {
			msg.Header.Set(tracectx.Header, d.trace)
		}
		if _, err := s.Broker.JS().PublishMsg(ctx, msg, jetstream.WithMsgID(fmt.Sprintf("%s-retry-%d", id, d.seq))); err != nil {
			if broker.IsMaxMsgs(err) {
				return nil, apierr.QueueFull(q.Name, uint64(q.MaxDepth), queueFullRetry)
			}
			return nil, apierr.BrokerUnavailable(err)
		}
		if err := s.Broker.DLQ().DeleteMsg(ctx, d.seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			s.Log.Warn("removing retried dead letter failed", "job_id", id, "error", err)
		}
		s.Store.PublishEvent(rec.Job, rec.Rev) // the record as written above: no second read
		out.RetriedJobIds = append(out.RetriedJobIds, id)
	}
	return out, nil
}

func (s *Service) purgeDeadLetters(ctx context.Context, req *tandemv1.PurgeDeadLettersRequest) (*tandemv1.PurgeDeadLettersResponse, error) {
	q, err := s.queueFor(ctx, req.GetQueue(), auth.Admin)
	if err != nil {
		return nil, err
	}
	dls, err := s.targets(ctx, q.Name, req.GetJobIds(), req.GetAll())
	if err != nil {
		return nil, err
	}
	var n uint64
	for _, d := range dls {
		if err := s.Broker.DLQ().DeleteMsg(ctx, d.seq); err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			return nil, apierr.BrokerUnavailable(err)
		}
		s.Store.DeletePayload(ctx, d.object)
		n++
	}
	return &tandemv1.PurgeDeadLettersResponse{Purged: n}, nil
}
