package api

import (
	"context"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
)

func (s *Service) queueInfo(ctx context.Context, name string) (*tandemv1.QueueInfo, error) {
	p, ok := s.Pools[name]
	if !ok {
		return nil, apierr.QueueNotFound(name)
	}
	cfg := p.Config()
	st := p.Stats()
	info := &tandemv1.QueueInfo{
		Name:               cfg.Name,
		Workers:            uint32(st.Workers),
		MinWorkers:         uint32(cfg.MinWorkers),
		MaxWorkers:         uint32(cfg.MaxWorkers),
		MaxAttempts:        uint32(cfg.MaxAttempts),
		JobTimeout:         durationpb.New(cfg.JobTimeout),
		MaxDepth:           uint64(cfg.MaxDepth),
		RateLimit:          cfg.RateLimit,
		CompletedPerSecond: st.CompletedPerSec,
	}
	ci, err := s.Broker.Queues()[name].Consumer(ctx, broker.ConsumerName)
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	cinfo, err := ci.Info(ctx)
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	info.Depth = cinfo.NumPending
	info.InFlight = uint64(cinfo.NumAckPending)
	info.Paused = cinfo.Paused
	dl, err := s.dlqCount(ctx, name)
	if err != nil {
		return nil, err
	}
	info.DeadLetters = dl
	s.Metrics.DLQSize.WithLabelValues(name).Set(float64(dl))
	return info, nil
}

func (s *Service) listQueues(ctx context.Context) (*tandemv1.ListQueuesResponse, error) {
	out := &tandemv1.ListQueuesResponse{}
	for _, name := range s.queueNames() {
		if !auth.Can(ctx, name, auth.Read) {
			continue // ListQueues lists the queues the caller can read
		}
		qi, err := s.queueInfo(ctx, name)
		if err != nil {
			return nil, err
		}
		out.Queues = append(out.Queues, qi)
	}
	return out, nil
}

func (s *Service) queueNames() []string {
	return slices.Sorted(maps.Keys(s.Pools)) // sorted for a stable answer
}

// pauseFor is how far ahead a paused consumer's pause ends (i.e. never, in practice).
const pauseFor = 100 * 365 * 24 * time.Hour

// setPaused pauses or resumes the queue's durable consumer on the server, so
// every orchestrator sharing it stops (or resumes) pulling; submits still queue.
func (s *Service) setPaused(ctx context.Context, queue string, paused bool) (*tandemv1.QueueInfo, error) {
	q, err := s.queueFor(ctx, queue, auth.Admin)
	if err != nil {
		return nil, err
	}
	queue = q.Name
	p := s.Pools[queue]
	stream := broker.QueueStream(queue)
	if paused {
		_, err = s.Broker.JS().PauseConsumer(ctx, stream, broker.ConsumerName, time.Now().Add(pauseFor))
	} else {
		_, err = s.Broker.JS().ResumeConsumer(ctx, stream, broker.ConsumerName)
	}
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	p.SetPaused(paused)
	return s.queueInfo(ctx, queue)
}
