package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/audit"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

func (s *Service) getJob(ctx context.Context, req *tandemv1.GetJobRequest) (*tandemv1.GetJobResponse, error) {
	if err := ident.JobID("job_id", req.GetJobId()); err != nil {
		return nil, err
	}
	rec, err := s.Store.Get(ctx, req.GetJobId())
	if err != nil {
		return nil, err
	}
	if !auth.Can(ctx, rec.Job.GetQueue(), auth.Read) {
		return nil, apierr.JobNotFound(req.GetJobId()) // no existence leak
	}
	j, err := s.Store.View(ctx, rec.Job, req.GetIncludeResult())
	if err != nil {
		return nil, err
	}
	return &tandemv1.GetJobResponse{Job: j}, nil
}

// natsCallTimeout bounds each NATS call a watch makes: a watch lives as long
// as its client, but every KV get or flush inside it gets its own deadline.
const natsCallTimeout = 10 * time.Second

// resultCallTimeout bounds loading a result (possibly a large object).
const resultCallTimeout = 60 * time.Second

// Watch buffers. A queue watch keeps up to watchPendingMsgs events (or
// watchPendingBytes) waiting for a slow client; past that NATS drops events
// and the watch ends with RESOURCE_EXHAUSTED so the client re-syncs.
const (
	watchPendingMsgs  = 1 << 19
	watchPendingBytes = 256 << 20
	// watchResync is how often a watch by ids re-reads its pending records,
	// as a safety net for an event lost with its publisher (a crash between
	// the record write and the event).
	watchResync = 10 * time.Second
)

// WatchLimits overrides the watch buffers (tests).
type WatchLimits struct {
	PendingMsgs int // queue watch: events buffered before NATS drops (slow consumer)
	IDChanSize  int // watch by ids: events buffered before NATS drops (then re-sync)
}

func (s *Service) callCtx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, natsCallTimeout)
}

// view returns the job to send. Without include_result, or unless the job
// succeeded, the given copy (an event, or a record read at rev) minus result
// bytes. Otherwise the result is loaded: from the record (read again when j is
// an event, which carries no result bytes) and, if large, the object store.
func (s *Service) view(ctx context.Context, j *tandemv1.Job, rev uint64, isRecord, includeResult bool) (*tandemv1.Job, uint64, error) {
	if !includeResult || j.GetState() != tandemv1.JobState_JOB_STATE_SUCCEEDED {
		out, err := s.Store.View(ctx, j, false)
		return out, rev, err
	}
	cctx, cancel := context.WithTimeout(ctx, resultCallTimeout)
	defer cancel()
	if !isRecord && j.GetResultSize() > 0 {
		rec, err := s.Store.Get(cctx, j.GetId())
		if err != nil {
			return nil, 0, err
		}
		j, rev = rec.Job, rec.Rev
	}
	out, err := s.Store.View(cctx, j, true)
	return out, rev, err
}

// watchJobs by ids serves from the per-job events subjects, not from a KV
// watch: subscribe to every id's events first, then read each record (its
// current state), then stream the events. A change made between the two is
// seen twice at worst (the KV revision carried by each event drops the older
// copy), never missed. Dropped events (slow consumer), a lost connection, and
// every watchResync, re-read the pending records.
func (s *Service) watchJobs(req *tandemv1.WatchJobsRequest, stream tandemv1.JobService_WatchJobsServer) error {
	ctx := stream.Context()
	if len(req.GetJobIds()) == 0 {
		return s.watchQueue(ctx, req, stream)
	}
	if err := ident.JobIDs("job_ids", req.GetJobIds()); err != nil {
		return err
	}
	var ids []string
	pending := map[string]bool{}
	for _, id := range req.GetJobIds() {
		if !pending[id] {
			pending[id] = true
			ids = append(ids, id)
		}
	}
	size := min(16384, 64+8*len(ids))
	if s.WatchLimits.IDChanSize > 0 {
		size = s.WatchLimits.IDChanSize
	}
	ch := make(chan *nats.Msg, size)
	subs := make([]*nats.Subscription, 0, len(ids))
	defer func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}()
	gen, conn := s.Broker.Disconnects(), s.Broker.Gen()
	for _, id := range ids {
		sub, err := s.Broker.NC().ChanSubscribe(broker.JobEventsFilter(id), ch)
		if err != nil {
			return apierr.BrokerUnavailable(err)
		}
		subs = append(subs, sub)
	}
	// Once the server has the subscriptions, every later change is an event.
	fctx, cancel := s.callCtx(ctx)
	err := s.Broker.NC().FlushWithContext(fctx)
	cancel()
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	if err := s.fault("watch.subscribed"); err != nil {
		return err
	}
	lastRev := make(map[string]uint64, len(ids))
	send := func(j *tandemv1.Job, rev uint64, isRecord bool) error {
		id := j.GetId()
		if !pending[id] || rev != 0 && rev <= lastRev[id] {
			return nil // finished already, or older than what was sent
		}
		if !auth.Can(ctx, j.GetQueue(), auth.Read) {
			return apierr.JobNotFound(id) // a queue the caller cannot read: as if absent
		}
		v, vrev, err := s.view(ctx, j, rev, isRecord, req.GetIncludeResult())
		if err != nil {
			return err
		}
		if vrev != 0 && vrev <= lastRev[id] {
			return nil
		}
		lastRev[id] = max(rev, vrev)
		if err := stream.Send(&tandemv1.WatchJobsResponse{Job: v}); err != nil {
			return err
		}
		if jobstore.Terminal(v.GetState()) {
			delete(pending, id)
		}
		return nil
	}
	resync := func() error {
		for _, id := range ids {
			if !pending[id] {
				continue
			}
			gctx, cancel := s.callCtx(ctx)
			rec, err := s.Store.Get(gctx, id)
			cancel()
			if err != nil {
				return err
			}
			if err := send(rec.Job, rec.Rev, true); err != nil {
				return err
			}
		}
		return nil
	}
	if !auth.FromContext(ctx).CanEvery(auth.Read) {
		// Check every id before sending anything: a job of a queue the
		// caller cannot read is NOT_FOUND, as if it did not exist.
		for _, id := range ids {
			gctx, cancel := s.callCtx(ctx)
			rec, err := s.Store.Get(gctx, id)
			cancel()
			if err != nil {
				return err
			}
			if !auth.Can(ctx, rec.Job.GetQueue(), auth.Read) {
				return apierr.JobNotFound(id)
			}
		}
	}
	if err := resync(); err != nil {
		return err
	}
	if err := s.fault("watch.synced"); err != nil {
		return err
	}
	dropped := 0
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastSync := time.Now()
	for len(pending) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m := <-ch:
			j := &tandemv1.Job{}
			if err := proto.Unmarshal(m.Data, j); err != nil {
				continue
			}
			if err := send(j, jobstore.EventRev(m), false); err != nil {
				return err
			}
		case <-tick.C:
			n := 0
			for _, sub := range subs {
				if d, err := sub.Dropped(); err == nil {
					n += d
				}
			}
			if s.Broker.Gen() != conn {
				// The subscriptions died with the old connection: the client
				// watches again (UNAVAILABLE is retryable) from the records.
				return apierr.BrokerUnavailable(errors.New("the connection to NATS was replaced; watch again"))
			}
			g := s.Broker.Disconnects()
			if n != dropped || g != gen || time.Since(lastSync) >= watchResync {
				if n != dropped || g != gen {
					s.Log.Debug("watch re-reading records", "dropped_events", n-dropped, "reconnected", g != gen)
				}
				dropped, gen, lastSync = n, g, time.Now()
				if err := resync(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// watchQueue streams every state change of a queue's jobs (from the core
// NATS events subjects) until the client goes away. Events wait in the
// subscription's buffer while the client is slow; if NATS has to drop any
// (slow consumer), or the connection to NATS was lost (events published
// meanwhile are gone), the watch ends with a status saying so, never silently.
func (s *Service) watchQueue(ctx context.Context, req *tandemv1.WatchJobsRequest, stream tandemv1.JobService_WatchJobsServer) error {
	q, err := s.queueFor(ctx, req.GetQueue(), auth.Read)
	if err != nil {
		return err
	}
	gen, conn := s.Broker.Disconnects(), s.Broker.Gen()
	sub, err := s.Broker.NC().SubscribeSync(broker.QueueEventsFilter(q.Name))
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	limit := watchPendingMsgs
	if s.WatchLimits.PendingMsgs > 0 {
		limit = s.WatchLimits.PendingMsgs
	}
	if err := sub.SetPendingLimits(limit, watchPendingBytes); err != nil {
		return apierr.BrokerUnavailable(err)
	}
	// Once the subscription is registered, send headers: a client that waits
	// for them knows no later event is missed.
	fctx, cancel := s.callCtx(ctx)
	err = s.Broker.NC().FlushWithContext(fctx)
	cancel()
	if err != nil {
		return apierr.BrokerUnavailable(err)
	}
	if err := stream.SendHeader(metadata.MD{}); err != nil {
		return err
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		m, err := sub.NextMsg(time.Second)
		if g := s.Broker.Disconnects(); g != gen || s.Broker.Gen() != conn {
			return apierr.New(tandemv1.ErrorReason_BROKER_UNAVAILABLE,
				fmt.Sprintf("watch of queue %q ended: the connection to NATS was lost, events in between may be missing; re-read the jobs (GetJob) and watch again", q.Name),
				apierr.KeyQueue, q.Name)
		}
		switch {
		case errors.Is(err, nats.ErrTimeout):
			continue
		case errors.Is(err, nats.ErrSlowConsumer):
			d, _ := sub.Dropped()
			s.Log.Warn("queue watch too slow: events dropped, watch ended", "queue", q.Name, "dropped", d)
			e := apierr.New(tandemv1.ErrorReason_OVERLOADED,
				fmt.Sprintf("watch of queue %q ended: the client fell behind by more than %d events and %d were dropped; re-read the jobs (GetJob) and watch again", q.Name, limit, d),
				apierr.KeyQueue, q.Name, apierr.KeyLimit, strconv.Itoa(limit), apierr.KeyActual, strconv.Itoa(d), apierr.KeyRetryAfterMs, "1000")
			e.RetryAfter = time.Second
			return e
		case err != nil:
			if ctx.Err() != nil {
				return nil
			}
			return apierr.BrokerUnavailable(err)
		}
		j := &tandemv1.Job{}
		if err := proto.Unmarshal(m.Data, j); err != nil {
			continue
		}
		v, _, err := s.view(ctx, j, 0, false, req.GetIncludeResult())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			v = j // the record may have expired meanwhile: send the event as is
		}
		if err := stream.Send(&tandemv1.WatchJobsResponse{Job: v}); err != nil {
			return err
		}
	}
}

// cancelJob moves a queued, retrying or running job to CANCELLED by CAS, then
// tells every orchestrator (core NATS) so the one running it cancels its
// compute call. A queued job's message is acked without running when pulled.
func (s *Service) cancelJob(ctx context.Context, req *tandemv1.CancelJobRequest) (*tandemv1.CancelJobResponse, error) {
	if err := ident.JobID("job_id", req.GetJobId()); err != nil {
		return nil, err
	}
	rec, err := s.Store.Mutate(ctx, req.GetJobId(), s.resultTTL, func(j *tandemv1.Job) (bool, error) {
		if !auth.Can(ctx, j.GetQueue(), auth.Read) {
			return false, apierr.JobNotFound(j.GetId()) // no existence leak
		}
		audit.SetQueue(ctx, j.GetQueue())
		if err := auth.Require(ctx, j.GetQueue(), auth.Cancel); err != nil {
			return false, err
		}
		if jobstore.Terminal(j.GetState()) {
			return false, apierr.JobStateConflict(j.GetId(), j.GetState(), "cancel")
		}
		now := jobstore.Now()
		e := apierr.Proto(apierr.Cancelled("job cancelled by request"))
		if j.GetState() == tandemv1.JobState_JOB_STATE_RUNNING {
			jobstore.CloseAttempt(j, j.GetAttempt(), e)
		}
		j.State = tandemv1.JobState_JOB_STATE_CANCELLED
		j.FinishedAt = now
		j.LastError = e
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	_ = s.Broker.NC().Publish(broker.CancelSubject, []byte(rec.Job.GetId()))
	s.Store.PublishEvent(rec.Job, rec.Rev)
	if rec.Job.GetPayloadSize() > uint64(s.Store.InlineLimit) {
		s.Store.DeletePayload(ctx, jobstore.PayloadObject(rec.Job.GetId()))
	}
	j, err := s.Store.View(ctx, rec.Job, false)
	if err != nil {
		return nil, err
	}
	return &tandemv1.CancelJobResponse{Job: j}, nil
}
