// Package orchestrator wires the orchestrator together: broker, job store,
// compute client, one pool per queue, the gRPC server (JobService, health,
// reflection), metrics, and the drain on shutdown. main and the tests both
// start orchestrators through it.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"
	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/api"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/metrics"
	"github.com/tandem/tandem/orchestrator-go/internal/queue"
)

// ServiceName is the health-checked service name.
const ServiceName = "tandem.v1.JobService"

// ComputeServiceName is the compute service the orchestrator also serves
// (forwarded to compute), health-checked under its own name.
const ComputeServiceName = "tandem.v1.ComputeService"

// Options are the orchestrator's configuration plus test hooks.
type Options struct {
	Config *config.Config
	Logger *slog.Logger
	// Fault, when set, is called at named points of submit and worker paths
	// (see internal/fault); tests use it to simulate crashes.
	Fault func(point string) error
	// BreakerOpenFor overrides how long a compute breaker stays open.
	BreakerOpenFor time.Duration
	// WorkerID overrides the id recorded in each attempt.
	WorkerID string
	// WatchLimits overrides WatchJobs buffers (tests).
	WatchLimits api.WatchLimits
}

// Orchestrator is a running orchestrator.
type Orchestrator struct {
	cfg     *config.Config
	log     *slog.Logger
	Broker  *broker.Broker
	Store   *jobstore.Store
	Compute *compute.Client
	Metrics *metrics.Metrics
	Pools   map[string]*queue.Pool
	API     *api.Service

	grpc       *grpc.Server
	health     *health.Server
	lis        net.Listener
	metricsSrv *http.Server
	cancelSub  *nats.Subscription
	stopHealth chan struct{}
	wg         sync.WaitGroup
	once       sync.Once
}

// Start opens everything and starts serving.
func Start(ctx context.Context, o Options) (_ *Orchestrator, err error) {
	cfg := o.Config
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	workerID := o.WorkerID
	if workerID == "" {
		host, _ := os.Hostname()
		workerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), ulid.Make().String()[20:])
	}
	m := metrics.New()
	orc := &Orchestrator{cfg: cfg, log: log, Metrics: m, Pools: map[string]*queue.Pool{}, stopHealth: make(chan struct{})}
	defer func() {
		if err != nil {
			orc.closeAll()
		}
	}()
	orc.Broker, err = broker.Open(ctx, broker.Options{
		URL: cfg.NATSURL, Listen: cfg.NATSListen, DataDir: cfg.DataDir, Durability: cfg.Durability,
		Queues: cfg.Queues, Logger: log, Name: "tandem-orchestrator " + workerID, Replicas: cfg.StreamReplicas,
	})
	if err != nil {
		return nil, err
	}
	orc.Store = jobstore.New(orc.Broker)
	orc.Compute, err = compute.New(compute.Options{
		Endpoints: cfg.Compute, MaxMessageBytes: cfg.MaxMessageBytes, BreakerOpenFor: o.BreakerOpenFor, Logger: log,
		OnBreakerChange: func(ep string, st gobreaker.State) {
			m.BreakerState.WithLabelValues(ep).Set(float64(map[gobreaker.State]int{gobreaker.StateClosed: 0, gobreaker.StateHalfOpen: 1, gobreaker.StateOpen: 2}[st]))
		},
	})
	if err != nil {
		return nil, err
	}
	running := queue.NewRunning()
	deps := queue.Deps{Broker: orc.Broker, Store: orc.Store, Compute: orc.Compute, Metrics: m, Log: log, WorkerID: workerID, Running: running, Fault: o.Fault}
	for _, q := range cfg.Queues {
		p, err := queue.NewPool(ctx, deps, q)
		if err != nil {
			return nil, err
		}
		orc.Pools[q.Name] = p
	}
	orc.cancelSub, err = orc.Broker.NC.Subscribe(broker.CancelSubject, func(msg *nats.Msg) {
		if running.Cancel(string(msg.Data)) {
			log.Info("cancelling running job", "job_id", string(msg.Data))
		}
	})
	if err != nil {
		return nil, err
	}
	orc.API = &api.Service{Broker: orc.Broker, Store: orc.Store, Compute: orc.Compute, Metrics: m, Pools: orc.Pools, Log: log, Fault: o.Fault, WatchLimits: o.WatchLimits}

	orc.lis, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	orc.grpc = grpc.NewServer(grpc.MaxRecvMsgSize(cfg.MaxMessageBytes), grpc.MaxSendMsgSize(cfg.MaxMessageBytes))
	tandemv1.RegisterJobServiceServer(orc.grpc, orc.API)
	tandemv1.RegisterComputeServiceServer(orc.grpc, &api.ComputeProxy{Compute: orc.Compute})
	orc.health = health.NewServer()
	healthpb.RegisterHealthServer(orc.grpc, orc.health)
	reflection.Register(orc.grpc)
	orc.setHealth(false)

	for _, p := range orc.Pools {
		p.Start()
	}
	orc.wg.Add(1)
	go func() {
		defer orc.wg.Done()
		if err := orc.grpc.Serve(orc.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("gRPC server stopped", "err", err)
		}
	}()
	if cfg.MetricsListen != "" {
		mlis, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return nil, fmt.Errorf("--metrics-listen %s: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		orc.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		orc.wg.Add(1)
		go func() {
			defer orc.wg.Done()
			_ = orc.metricsSrv.Serve(mlis)
		}()
	}
	orc.wg.Add(1)
	go orc.watchHealth()
	log.Info("orchestrator started", "listen", orc.lis.Addr().String(), "nats", orc.Broker.ClientURL(), "compute", cfg.Compute, "queues", len(cfg.Queues), "worker", workerID)
	return orc, nil
}

// Addr is the gRPC listen address.
func (o *Orchestrator) Addr() string { return o.lis.Addr().String() }

func (o *Orchestrator) setHealth(serving bool) { o.setHealths(serving, serving) }

// setHealths sets the JobService (and overall) status, and the ComputeService
// status, which needs compute only (it is forwarded, NATS plays no part).
func (o *Orchestrator) setHealths(jobs, compute bool) {
	st := func(ok bool) healthpb.HealthCheckResponse_ServingStatus {
		if ok {
			return healthpb.HealthCheckResponse_SERVING
		}
		return healthpb.HealthCheckResponse_NOT_SERVING
	}
	o.health.SetServingStatus("", st(jobs))
	o.health.SetServingStatus(ServiceName, st(jobs))
	o.health.SetServingStatus(ComputeServiceName, st(compute))
}

// watchHealth reports JobService NOT_SERVING while NATS is disconnected or
// every compute breaker is open, ComputeService while every breaker is open.
func (o *Orchestrator) watchHealth() {
	defer o.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	last := -1
	for {
		compute := o.Compute.Ready()
		jobs := compute && o.Broker.Connected()
		if v := map[bool]int{false: 0, true: 1}[jobs] + 2*map[bool]int{false: 0, true: 1}[compute]; v != last {
			o.setHealths(jobs, compute)
			last = v
		}
		select {
		case <-o.stopHealth:
			return
		case <-t.C:
		}
	}
}

// Shutdown drains: health NOT_SERVING, new submits refused, pools stop
// pulling, running jobs get drainTimeout to finish (then are handed back),
// the gRPC server stops, the connection is flushed, the embedded server stops.
func (o *Orchestrator) Shutdown(drainTimeout time.Duration) {
	o.once.Do(func() {
		o.log.Info("draining", "timeout", drainTimeout.String())
		close(o.stopHealth)
		o.setHealth(false)
		o.API.SetDraining()
		var wg sync.WaitGroup
		for _, p := range o.Pools {
			wg.Add(1)
			go func() { defer wg.Done(); p.Drain(drainTimeout) }()
		}
		wg.Wait()
		stopped := make(chan struct{})
		go func() { o.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			o.grpc.Stop() // open WatchJobs streams
		}
		if o.metricsSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = o.metricsSrv.Shutdown(ctx)
			cancel()
		}
		o.wg.Wait()
		o.closeAll()
		o.log.Info("drained")
	})
}

func (o *Orchestrator) closeAll() {
	if o.cancelSub != nil {
		_ = o.cancelSub.Unsubscribe()
	}
	if o.grpc != nil {
		o.grpc.Stop()
	} else if o.lis != nil {
		_ = o.lis.Close()
	}
	if o.Compute != nil {
		o.Compute.Close()
	}
	if o.Broker != nil {
		o.Broker.Close()
	}
}
