// Package api implements tandem.v1.JobService on top of the broker, the job
// store and the queue pools. Every handler returns errors through apierr.Status.
package api

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/audit"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/fault"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/metrics"
	"github.com/tandem/tandem/orchestrator-go/internal/queue"
	"github.com/tandem/tandem/orchestrator-go/internal/workers"
)

// Service is the JobService implementation.
type Service struct {
	tandemv1.UnimplementedJobServiceServer

	Broker  *broker.Broker
	Store   *jobstore.Store
	Compute *compute.Client
	Metrics *metrics.Metrics
	Pools   map[string]*queue.Pool
	Log     *slog.Logger
	// Fault, when set, is called at named points of a submit (tests only); a
	// non-nil error aborts the submit there, as a crash would.
	Fault func(point string) error
	// WatchLimits overrides WatchJobs buffers (tests); zero values: defaults.
	WatchLimits WatchLimits

	draining atomic.Bool
	workers  atomic.Pointer[workers.Registry]
}

// SetWorkers makes the op-worker registry known (once NATS is connected).
func (s *Service) SetWorkers(r *workers.Registry) { s.workers.Store(r) }

// Catalogue is every op a job may use: compute's ListOps answer plus the
// ops registered by op workers, each marked with its provider; nil while
// compute has never answered.
func (s *Service) Catalogue(ctx context.Context) *tandemv1.ListOpsResponse {
	c := s.Compute.Ops(ctx)
	r := s.workers.Load()
	if r == nil || c == nil {
		// Without compute's answer validation checks structure only (compute
		// validates again when the job runs).
		return c
	}
	reg := r.Ops()
	if len(reg) == 0 {
		return c
	}
	out := &tandemv1.ListOpsResponse{Limits: c.GetLimits()}
	for _, o := range c.GetOps() {
		o = proto.Clone(o).(*tandemv1.OpSpec)
		if o.Provider == "" {
			o.Provider = "compute"
		}
		out.Ops = append(out.Ops, o)
	}
	out.Ops = append(out.Ops, reg...)
	return out
}

// ListWorkers implements JobService.
func (s *Service) ListWorkers(ctx context.Context, _ *tandemv1.ListWorkersRequest) (*tandemv1.ListWorkersResponse, error) {
	r := s.workers.Load()
	if r == nil {
		return &tandemv1.ListWorkersResponse{}, nil
	}
	return &tandemv1.ListWorkersResponse{Workers: r.List()}, nil
}

// SetDraining makes new submits fail with SHUTTING_DOWN.
func (s *Service) SetDraining() { s.draining.Store(true) }

func (s *Service) fault(point string) error { return fault.At(s.Fault, point) }

func (s *Service) queue(name string) (config.Queue, error) {
	if name == "" {
		name = config.DefaultQueue
	} else if err := ident.Queue("queue", name); err != nil {
		return config.Queue{}, err
	}
	p, ok := s.Pools[name]
	if !ok {
		return config.Queue{}, apierr.QueueNotFound(name)
	}
	return p.Config(), nil
}

// queueFor resolves a queue the caller needs scope on: the name is checked,
// then the scope (before the lookup, so a caller without rights learns
// nothing about which queues exist), then the queue.
func (s *Service) queueFor(ctx context.Context, name string, scope auth.Scope) (config.Queue, error) {
	if name == "" {
		name = config.DefaultQueue
	} else if err := ident.Queue("queue", name); err != nil {
		return config.Queue{}, err
	}
	if err := auth.Require(ctx, name, scope); err != nil {
		return config.Queue{}, err
	}
	return s.queue(name)
}

// resultTTL is the TTL of a job's terminal record: its queue's result_ttl.
func (s *Service) resultTTL(j *tandemv1.Job) time.Duration {
	if p, ok := s.Pools[j.GetQueue()]; ok {
		return p.Config().ResultTTL
	}
	return config.DefaultQueueSettings(j.GetQueue()).ResultTTL
}

func wrap[T any](v T, err error) (T, error) {
	if err != nil {
		var zero T
		return zero, apierr.Status(err)
	}
	return v, nil
}

// SubmitJob implements JobService.
func (s *Service) SubmitJob(ctx context.Context, req *tandemv1.SubmitJobRequest) (*tandemv1.SubmitJobResponse, error) {
	return wrap(s.submitOne(ctx, req))
}

// SubmitJobs implements JobService.
func (s *Service) SubmitJobs(ctx context.Context, req *tandemv1.SubmitJobsRequest) (*tandemv1.SubmitJobsResponse, error) {
	return wrap(s.submitBatch(ctx, req))
}

// GetJob implements JobService.
func (s *Service) GetJob(ctx context.Context, req *tandemv1.GetJobRequest) (*tandemv1.GetJobResponse, error) {
	return wrap(s.getJob(ctx, req))
}

// WatchJobs implements JobService.
func (s *Service) WatchJobs(req *tandemv1.WatchJobsRequest, stream tandemv1.JobService_WatchJobsServer) error {
	return apierr.Status(s.watchJobs(req, stream))
}

// CancelJob implements JobService.
func (s *Service) CancelJob(ctx context.Context, req *tandemv1.CancelJobRequest) (*tandemv1.CancelJobResponse, error) {
	return wrap(s.cancelJob(ctx, req))
}

// ListDeadLetters implements JobService.
func (s *Service) ListDeadLetters(ctx context.Context, req *tandemv1.ListDeadLettersRequest) (*tandemv1.ListDeadLettersResponse, error) {
	return wrap(s.listDeadLetters(ctx, req))
}

// RetryDeadLetters implements JobService.
func (s *Service) RetryDeadLetters(ctx context.Context, req *tandemv1.RetryDeadLettersRequest) (*tandemv1.RetryDeadLettersResponse, error) {
	return wrap(s.retryDeadLetters(ctx, req))
}

// PurgeDeadLetters implements JobService.
func (s *Service) PurgeDeadLetters(ctx context.Context, req *tandemv1.PurgeDeadLettersRequest) (*tandemv1.PurgeDeadLettersResponse, error) {
	return wrap(s.purgeDeadLetters(ctx, req))
}

// ListQueues implements JobService.
func (s *Service) ListQueues(ctx context.Context, req *tandemv1.ListQueuesRequest) (*tandemv1.ListQueuesResponse, error) {
	return wrap(s.listQueues(ctx))
}

// ListAudit implements JobService: admin on every queue.
func (s *Service) ListAudit(ctx context.Context, req *tandemv1.ListAuditRequest) (*tandemv1.ListAuditResponse, error) {
	if err := auth.RequireEvery(ctx, auth.Admin); err != nil {
		return nil, apierr.Status(err)
	}
	return wrap(audit.List(ctx, s.Broker.Audit(), req))
}

// PauseQueue implements JobService.
func (s *Service) PauseQueue(ctx context.Context, req *tandemv1.PauseQueueRequest) (*tandemv1.PauseQueueResponse, error) {
	q, err := s.setPaused(ctx, req.GetQueue(), true)
	return wrap(&tandemv1.PauseQueueResponse{Queue: q}, err)
}

// ResumeQueue implements JobService.
func (s *Service) ResumeQueue(ctx context.Context, req *tandemv1.ResumeQueueRequest) (*tandemv1.ResumeQueueResponse, error) {
	q, err := s.setPaused(ctx, req.GetQueue(), false)
	return wrap(&tandemv1.ResumeQueueResponse{Queue: q}, err)
}
