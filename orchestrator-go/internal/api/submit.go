package api

import (
	"context"
	"errors"
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
	q, err := s.queue(req.GetQueue())
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
// payload → job message → job record. The message is the commit point: a
// crash before it leaves at most an idempotency key, which a retried submit
// completes with the same job id; a crash after it leaves a job the worker
// finishes (it creates the record from the message when missing).
func (s *Service) prepare(ctx context.Context, req *tandemv1.SubmitJobRequest) *prepared {
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
		claim, err := s.claimIdempotency(ctx, q, req, id)
		if err != nil {
			return &prepared{err: err}
		}
		id, p.dedup = claim.id, claim.dedup
		if claim.done != nil {
			p.done = claim.done
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
	msg, err := s.Store.NewJobMsg(broker.QueueSubject(q.Name), jobstore.Spec(job), payload, p.object)
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

// record writes the QUEUED record after the message; if a worker got there
// first (it creates the record from the message), the current record wins.
func (s *Service) record(ctx context.Context, p *prepared) (*tandemv1.SubmitJobResponse, error) {
	rec, err := s.Store.Create(ctx, p.job)
	if errors.Is(err, jobstore.ErrExists) {
		rec, err = s.Store.Get(ctx, p.job.GetId())
	}
	if err != nil {
		return nil, err
	}
	s.Metrics.Submitted.WithLabelValues(p.q.Name).Inc()
	return &tandemv1.SubmitJobResponse{Job: withoutResult(rec.Job), Deduplicated: p.dedup}, nil
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
	p := s.prepare(ctx, req)
	defer p.end()
	if p.err != nil {
		return nil, p.err
	}
	if p.done != nil {
		return &tandemv1.SubmitJobResponse{Job: p.done, Deduplicated: true}, nil
	}
	if _, err := s.Broker.JS().PublishMsg(ctx, p.msg, jetstream.WithMsgID(p.job.GetId())); err != nil {
		return nil, s.publishErr(ctx, p, err)
	}
	if err := s.fault("submit.after_publish"); err != nil {
		return nil, err
	}
	return s.record(ctx, p)
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
	ps := make([]*prepared, len(req.GetJobs()))
	for i, r := range req.GetJobs() {
		ps[i] = s.prepare(ctx, r)
	}
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
	// 2. Job records.
	recFuts := make([]jetstream.PubAckFuture, len(ps))
	recData := make([][]byte, len(ps))
	for i, p := range ps {
		if p.err != nil || p.done != nil {
			continue
		}
		data, err := proto.Marshal(p.job)
		if err != nil {
			p.err = apierr.Internal("encode job: %v", err)
			continue
		}
		recData[i] = data
		f, err := s.Broker.JS().PublishAsync(broker.JobKVSubject(p.job.GetId()), data, jetstream.WithExpectLastSequencePerSubject(0))
		if err != nil {
			recFuts[i] = nil
			continue // the sync fallback below writes it
		}
		recFuts[i] = f
	}
	out := &tandemv1.SubmitJobsResponse{Results: make([]*tandemv1.SubmitJobsResult, len(ps))}
	for i, p := range ps {
		if p.err == nil && p.done == nil && recData[i] != nil {
			ok := false
			if f := recFuts[i]; f != nil {
				select {
				case <-f.Ok():
					ok = true
				case <-f.Err():
				case <-ctx.Done():
				}
			}
			if ok {
				s.Metrics.Submitted.WithLabelValues(p.q.Name).Inc()
				p.done = p.job
			} else {
				// Exists (a worker wrote it first) or the async write failed: settle it synchronously.
				r, err := s.record(ctx, p)
				if err != nil {
					p.err = err
				} else {
					p.done = r.GetJob()
				}
			}
		}
		if p.err != nil {
			out.Results[i] = &tandemv1.SubmitJobsResult{Outcome: &tandemv1.SubmitJobsResult_Error{Error: apierr.Proto(p.err)}}
			continue
		}
		out.Results[i] = &tandemv1.SubmitJobsResult{Outcome: &tandemv1.SubmitJobsResult_Submitted{
			Submitted: &tandemv1.SubmitJobResponse{Job: p.done, Deduplicated: p.dedup}}}
	}
	return out, nil
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
		case <-f.Ok():
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
