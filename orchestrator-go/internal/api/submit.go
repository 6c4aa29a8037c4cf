package api

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/telemetry"
	"github.com/tandem/tandem/orchestrator-go/internal/tracectx"
)

// Request limits (the payload limit comes from compute's ListOps).
const (
	maxAttemptsLimit = 100
	maxJobTimeout    = 24 * time.Hour
	maxBatchJobs     = 10_000
	// brokerTimeout bounds the JetStream calls of one submit.
	brokerTimeout = 10 * time.Second
	// queueFullRetry is the retry hint sent with QUEUE_FULL.
	queueFullRetry = time.Second
)

// prepared is a validated submit, ready to publish.
type prepared struct {
	q      config.Queue
	job    *tandemv1.Job
	msg    *nats.Msg
	object string
	span   trace.Span    // the submit's span (nil until the message is built)
	dedup  bool          // the idempotency key matched an earlier submit
	done   *tandemv1.Job // dedup hit whose record exists: nothing to publish
	err    error
}

// validate checks a request and builds the job record (state QUEUED).
func (s *Service) validate(ctx context.Context, req *tandemv1.SubmitJobRequest) (config.Queue, *tandemv1.Job, error) {
	q, err := s.queueFor(ctx, req.GetQueue(), auth.Submit)
	if err != nil {
		return q, nil, err
	}
	if err := ident.Text("idempotency_key", req.GetIdempotencyKey(), ident.MaxIdempotencyKey); err != nil {
		return q, nil, err
	}
	if err := ident.Labels(req.GetLabels()); err != nil {
		return q, nil, err
	}
	if err := ident.Steps(req.GetSteps()); err != nil {
		return q, nil, err
	}
	if req.GetMaxAttempts() > maxAttemptsLimit {
		return q, nil, apierr.InvalidRequest("max_attempts", "max_attempts: %d is above the limit of %d", req.GetMaxAttempts(), maxAttemptsLimit)
	}
	if t := req.GetTimeout(); t != nil && (t.AsDuration() < 0 || t.AsDuration() > maxJobTimeout) {
		return q, nil, apierr.InvalidRequest("timeout", "timeout: %s is outside [0, %s]", t.AsDuration(), maxJobTimeout)
	}
	if err := compute.Validate(req.GetSteps(), len(req.GetPayload()), s.Catalogue(ctx)); err != nil {
		return q, nil, err
	}
	maxAttempts := req.GetMaxAttempts()
	if maxAttempts == 0 {
		maxAttempts = uint32(q.MaxAttempts)
	}
	timeout := req.GetTimeout()
	if timeout.AsDuration() <= 0 {
		timeout = durationpb.New(q.JobTimeout)
	}
	now := jobstore.Now()
	return q, &tandemv1.Job{
		Queue:          q.Name,
		State:          tandemv1.JobState_JOB_STATE_QUEUED,
		Steps:          req.GetSteps(),
		MaxAttempts:    maxAttempts,
		IdempotencyKey: req.GetIdempotencyKey(),
		Labels:         req.GetLabels(),
		PayloadSize:    uint64(len(req.GetPayload())),
		CreatedAt:      now,
		UpdatedAt:      now,
		Timeout:        timeout,
	}, nil
}

// prepare validates, claims the idempotency key and builds the message.
// Submit order (each step durable before the next): idempotency key → large
// payload → job message. The message is the commit point and the job's
// QUEUED record (GetJob reads it by its subject; the first worker or cancel
// to change the job writes the record in KV). A crash before it leaves at
// most an idempotency key, which a retried submit completes with the same
// job id.
// found, when not nil, holds the jobs of the batch's idempotency keys by
// queue and id, looked up beforehand (lookupKeys); a queue not in it is
// looked up here.
func (s *Service) prepare(ctx context.Context, req *tandemv1.SubmitJobRequest, found map[string]map[string]*tandemv1.Job) *prepared {
	if s.draining.Load() {
		return &prepared{err: apierr.ShuttingDown()}
	}
	if !s.Broker.Connected() {
		// Fail fast: a publish made while disconnected would wait in the
		// client's reconnect buffer and might land after we answered.
		return &prepared{err: apierr.BrokerUnavailable(errors.New("not connected"))}
	}
	q, job, err := s.validate(ctx, req)
	if err != nil {
		return &prepared{err: err}
	}
	p := &prepared{q: q, job: job}
	id := ulid.Make().String()
	if req.GetIdempotencyKey() != "" {
		claim, err := s.claimIdempotency(ctx, q, req, found[q.Name])
		if err != nil {
			return &prepared{err: err}
		}
		id = claim.id
		job.RequestHash = claim.hash
		if claim.done != nil {
			p.dedup, p.done = true, claim.done
			return p
		}
		if err := s.fault("submit.after_idem"); err != nil {
			return &prepared{err: err}
		}
	}
	job.Id = id
	payload := req.GetPayload()
	if len(payload) > s.Store.InlineLimit {
		obj, err := s.Store.PutPayload(ctx, id, payload)
		if err != nil {
			return &prepared{err: err}
		}
		p.object = obj
		if err := s.fault("submit.after_payload"); err != nil {
			return &prepared{err: err}
		}
	}
	msg, err := s.Store.NewJobMsg(broker.JobSubject(q.Name, id), jobstore.Spec(job), payload, p.object)
	if err != nil {
		return &prepared{err: apierr.Internal("encode job: %v", err)}
	}
	// The job's trace: a span for its submit (child of the caller's, when it
	// sent one), whose context every later span of the job descends from.
	sctx, span := telemetry.Tracer().Start(ctx, "tandem.job.submit", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(telemetry.JobAttrs(id, q.Name, 0)...))
	p.span = span
	tp := telemetry.Traceparent(sctx)
	if tp == "" {
		tp = tracectx.Incoming(ctx) // not traced and no caller trace: start one
	}
	msg.Header.Set(tracectx.Header, tp)
	p.msg = msg
	return p
}

// end ends the submit's span, marked failed when the submit failed.
func (p *prepared) end() {
	if p.span == nil {
		return
	}
	if p.err != nil {
		p.span.SetStatus(otelcodes.Error, apierr.From(p.err).Reason.String())
	}
	p.span.End()
}

func (s *Service) publishErr(ctx context.Context, p *prepared, err error) error {
	if broker.IsMaxMsgs(err) {
		if p.object != "" {
			s.Store.DeletePayload(ctx, p.object)
		}
		return apierr.QueueFull(p.q.Name, uint64(p.q.MaxDepth), queueFullRetry)
	}
	return apierr.BrokerUnavailable(err)
}

// prepareParallel is how many jobs of one SubmitJobs call are prepared at once.
const prepareParallel = 16

// accepted answers a submit whose message is stored: the message is the
// job's QUEUED record (a submit is one persisted write; the first worker or
// cancel to touch the job writes its record).
func (s *Service) accepted(p *prepared) *tandemv1.SubmitJobResponse {
	s.Metrics.Submitted.WithLabelValues(p.q.Name).Inc()
	return &tandemv1.SubmitJobResponse{Job: p.job, Deduplicated: p.dedup}
}

// withoutResult is a submit's answer: a job record minus its result bytes (a
// worker may have finished the job already; submits never return results).
func withoutResult(j *tandemv1.Job) *tandemv1.Job {
	if len(j.GetResult()) == 0 {
		return j
	}
	out := proto.Clone(j).(*tandemv1.Job)
	out.Result = nil
	return out
}

func (s *Service) submitOne(ctx context.Context, req *tandemv1.SubmitJobRequest) (*tandemv1.SubmitJobResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, brokerTimeout)
	defer cancel()
	p := s.prepare(ctx, req, nil)
	defer p.end()
	if p.err != nil {
		return nil, p.err
	}
	if p.done != nil {
		return &tandemv1.SubmitJobResponse{Job: p.done, Deduplicated: true}, nil
	}
	ack, err := s.Broker.JS().PublishMsg(ctx, p.msg, jetstream.WithMsgID(p.job.GetId()))
	if err != nil {
		return nil, s.publishErr(ctx, p, err)
	}
	if err := s.fault("submit.after_publish"); err != nil {
		return nil, err
	}
	if ack.Duplicate && p.job.GetIdempotencyKey() != "" {
		if err := s.duplicate(ctx, p); err != nil {
			return nil, err
		}
		if p.done != nil {
			return &tandemv1.SubmitJobResponse{Job: p.done, Deduplicated: true}, nil
		}
	}
	return s.accepted(p), nil
}

// submitBatch publishes every accepted job with async publishes, checks every
// future (republishing with the same Msg-Id once on failure), then writes the
// records, also asynchronously (KV create = publish expecting no prior value).
func (s *Service) submitBatch(ctx context.Context, req *tandemv1.SubmitJobsRequest) (*tandemv1.SubmitJobsResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*brokerTimeout)
	defer cancel()
	if len(req.GetJobs()) > maxBatchJobs {
		return nil, apierr.InvalidRequest("jobs", "jobs: %d jobs in one call, more than %d", len(req.GetJobs()), maxBatchJobs)
	}
	found, err := s.lookupKeys(ctx, req.GetJobs())
	if err != nil {
		return nil, err
	}
	// Preparing may write (a large payload): a few at a time.
	ps := make([]*prepared, len(req.GetJobs()))
	var wg sync.WaitGroup
	sem := make(chan struct{}, prepareParallel)
	for i, r := range req.GetJobs() {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ps[i] = s.prepare(ctx, r, found)
		}()
	}
	wg.Wait()
	defer func() {
		for _, p := range ps {
			p.end()
		}
	}()
	// 1. Job messages.
	futs := make([]jetstream.PubAckFuture, len(ps))
	for i, p := range ps {
		if p.err != nil || p.done != nil {
			continue
		}
		f, err := s.Broker.JS().PublishMsgAsync(p.msg, jetstream.WithMsgID(p.job.GetId()))
		if err != nil {
			p.err = s.publishErr(ctx, p, err)
			continue
		}
		futs[i] = f
	}
	s.awaitAll(ctx, ps, futs, func(p *prepared) (*jetstream.PubAck, error) {
		return s.Broker.JS().PublishMsg(ctx, p.msg, jetstream.WithMsgID(p.job.GetId()))
	}, s.publishErr)
	if err := s.fault("submit.after_publish"); err != nil {
		return nil, err
	}
	out := &tandemv1.SubmitJobsResponse{Results: make([]*tandemv1.SubmitJobsResult, len(ps))}
	for i, p := range ps {
		if p.err != nil {
			out.Results[i] = &tandemv1.SubmitJobsResult{Outcome: &tandemv1.SubmitJobsResult_Error{Error: apierr.Proto(p.err)}}
			continue
		}
		r := &tandemv1.SubmitJobResponse{Job: p.done, Deduplicated: true}
		if p.done == nil {
			r = s.accepted(p)
		}
		out.Results[i] = &tandemv1.SubmitJobsResult{Outcome: &tandemv1.SubmitJobsResult_Submitted{Submitted: r}}
	}
	return out, nil
}

// lookupKeys finds the jobs the batch's idempotency keys name, with batched
// reads per queue (queues that do not exist are left to validation).
func (s *Service) lookupKeys(ctx context.Context, reqs []*tandemv1.SubmitJobRequest) (map[string]map[string]*tandemv1.Job, error) {
	ids := map[string][]string{}
	for _, r := range reqs {
		if r.GetIdempotencyKey() == "" {
			continue
		}
		q := r.GetQueue()
		if q == "" {
			q = config.DefaultQueue
		}
		if _, ok := s.Broker.Queues()[q]; ok {
			ids[q] = append(ids[q], derivedID(q, r.GetIdempotencyKey()))
		}
	}
	found := map[string]map[string]*tandemv1.Job{}
	for q, list := range ids {
		m, err := s.Store.FindInQueue(ctx, q, list)
		if err != nil {
			return nil, err
		}
		found[q] = m
	}
	return found, nil
}

// awaitAll waits for every future; a failed one is retried once synchronously
// (same Msg-Id, so a publish that did land is deduplicated).
func (s *Service) awaitAll(ctx context.Context, ps []*prepared, futs []jetstream.PubAckFuture,
	retry func(*prepared) (*jetstream.PubAck, error), onErr func(context.Context, *prepared, error) error) {
	for i, f := range futs {
		if f == nil {
			continue
		}
		p := ps[i]
		select {
		case ack := <-f.Ok():
			if ack.Duplicate && p.job.GetIdempotencyKey() != "" {
				if err := s.duplicate(ctx, p); err != nil {
					p.err = err
				}
			}
			continue
		case err := <-f.Err():
			if broker.IsMaxMsgs(err) {
				p.err = onErr(ctx, p, err)
				continue
			}
		case <-ctx.Done():
			p.err = apierr.From(ctx.Err())
			continue
		}
		if _, err := retry(p); err != nil {
			p.err = onErr(ctx, p, err)
		}
	}
}
