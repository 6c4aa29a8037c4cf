package api

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// maxWatchIDs bounds one WatchJobs call by ids.
const maxWatchIDs = 1000

func (s *Service) getJob(ctx context.Context, req *tandemv1.GetJobRequest) (*tandemv1.GetJobResponse, error) {
	rec, err := s.Store.Get(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	j, err := s.Store.View(ctx, rec.Job, req.GetIncludeResult())
	if err != nil {
		return nil, err
	}
	return &tandemv1.GetJobResponse{Job: j}, nil
}

func (s *Service) watchJobs(req *tandemv1.WatchJobsRequest, stream tandemv1.JobService_WatchJobsServer) error {
	ctx := stream.Context()
	if len(req.GetJobIds()) == 0 {
		return s.watchQueue(ctx, req, stream)
	}
	if len(req.GetJobIds()) > maxWatchIDs {
		return apierr.InvalidRequest("job_ids", "job_ids: %d ids, more than %d", len(req.GetJobIds()), maxWatchIDs)
	}
	pending := map[string]bool{}
	for _, id := range req.GetJobIds() {
		if _, err := s.Store.Get(ctx, id); err != nil {
			return err
		}
		pending[id] = true
	}
	// A KV watch sends each key's current value first, then every change.
	w, err := s.Broker.Jobs.WatchFiltered(ctx, req.GetJobIds())
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return apierr.BrokerUnavailable(context.Canceled)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			rec, err := jobstore.Decode(e)
			if err != nil {
				return err
			}
			j, err := s.Store.View(ctx, rec.Job, req.GetIncludeResult())
			if err != nil {
				return err
			}
			if err := stream.Send(&tandemv1.WatchJobsResponse{Job: j}); err != nil {
				return err
			}
			if jobstore.Terminal(j.GetState()) {
				delete(pending, j.GetId())
			}
			if len(pending) == 0 {
				return nil
			}
		}
	}
}

// watchQueue streams every state change of a queue's jobs (from the core
// NATS events subject) until the client goes away.
func (s *Service) watchQueue(ctx context.Context, req *tandemv1.WatchJobsRequest, stream tandemv1.JobService_WatchJobsServer) error {
	q, err := s.queue(req.GetQueue())
	if err != nil {
		return err
	}
	ch := make(chan *nats.Msg, 1024)
	sub, err := s.Broker.NC.ChanSubscribe(broker.EventsSubject(q.Name), ch)
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// Once the subscription is registered, send headers: a client that waits
	// for them knows no later event is missed.
	if err := s.Broker.NC.FlushWithContext(ctx); err != nil {
		return apierr.BrokerUnavailable(err)
	}
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			j := &tandemv1.Job{}
			if err := proto.Unmarshal(m.Data, j); err != nil {
				continue
			}
			if req.GetIncludeResult() && j.GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
				if rec, err := s.Store.Get(ctx, j.GetId()); err == nil {
					if v, err := s.Store.View(ctx, rec.Job, true); err == nil {
						j = v
					}
				}
			}
			if err := stream.Send(&tandemv1.WatchJobsResponse{Job: j}); err != nil {
				return err
			}
		}
	}
}

// cancelJob moves a queued, retrying or running job to CANCELLED by CAS, then
// tells every orchestrator (core NATS) so the one running it cancels its
// compute call. A queued job's message is acked without running when pulled.
func (s *Service) cancelJob(ctx context.Context, req *tandemv1.CancelJobRequest) (*tandemv1.CancelJobResponse, error) {
	rec, err := s.Store.Mutate(ctx, req.GetJobId(), s.resultTTL, func(j *tandemv1.Job) (bool, error) {
		if jobstore.Terminal(j.GetState()) {
			return false, apierr.JobStateConflict(j.GetId(), j.GetState(), "cancel")
		}
		now := jobstore.Now()
		e := apierr.Proto(apierr.Cancelled("job cancelled by request"))
		if j.GetState() == tandemv1.JobState_JOB_STATE_RUNNING {
			for _, a := range j.GetAttempts() {
				if a.GetNumber() == j.GetAttempt() && a.FinishedAt == nil {
					a.FinishedAt, a.Error = now, e
				}
			}
		}
		j.State = tandemv1.JobState_JOB_STATE_CANCELLED
		j.FinishedAt = now
		j.LastError = e
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	_ = s.Broker.NC.Publish(broker.CancelSubject, []byte(rec.Job.GetId()))
	s.Store.PublishEvent(rec.Job)
	if rec.Job.GetPayloadSize() > uint64(s.Store.InlineLimit) {
		s.Store.DeletePayload(ctx, jobstore.PayloadObject(rec.Job.GetId()))
	}
	j, err := s.Store.View(ctx, rec.Job, false)
	if err != nil {
		return nil, err
	}
	return &tandemv1.CancelJobResponse{Job: j}, nil
}
