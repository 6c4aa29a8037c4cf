// Package orchestrator wires the orchestrator together: broker, job store,
// compute client, one pool per queue, the gRPC server (JobService, health,
// reflection), metrics, and the drain on shutdown. main and the tests both
// start orchestrators through it.
package orchestrator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"
	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/api"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/audit"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/dashboard"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/metrics"
	"github.com/tandem/tandem/orchestrator-go/internal/queue"
	"github.com/tandem/tandem/orchestrator-go/internal/ratelimit"
	"github.com/tandem/tandem/orchestrator-go/internal/sealing"
	"github.com/tandem/tandem/orchestrator-go/internal/telemetry"
	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
	"github.com/tandem/tandem/orchestrator-go/internal/workers"
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
	Workers *workers.Registry
	// Tokens is the token cache (nil when --auth is off).
	Tokens *auth.Store
	Audit  *audit.Log
	access *access

	dash     *dashboard.Server
	dashSrv  *http.Server
	dashLis  net.Listener
	dashConn *grpc.ClientConn
	// inproc is an in-memory listener of the gRPC server: the dashboard's
	// own calls, which need no TLS.
	inproc    *bufconn.Listener
	inprocSrv *grpc.Server

	// ServerTLS is the TLS of the gRPC port and the dashboard (nil: off).
	ServerTLS  *tlsconf.Server
	computeTLS *tlsconf.Client
	token      *compute.TokenFile
	keys       *sealing.Keyring

	grpc       *grpc.Server
	health     *health.Server
	lis        net.Listener
	metricsSrv *http.Server
	stopHealth chan struct{}
	wg         sync.WaitGroup
	once       sync.Once

	fault         func(string) error
	workerID      string
	running       *queue.Running
	ready         atomic.Bool
	startMu       sync.Mutex
	stopping      bool
	healthMu      sync.Mutex
	healthLast    int
	healthStopped bool
	bgOnce        sync.Once
	bg            context.Context
	bgCancel      context.CancelFunc
}

// Start opens everything and starts serving. The gRPC server (health
// NOT_SERVING) listens before NATS is connected: when the first connection
// attempt fails, Start returns and keeps connecting in the background with
// backoff, and JobService calls answer UNAVAILABLE / BROKER_UNAVAILABLE until
// it is up (in a compose or Kubernetes start order the broker may well come
// up after the orchestrator).
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
	// The trace context travels in NATS headers and gRPC metadata whether or
	// not spans are exported (main sets export up: internal/telemetry).
	telemetry.InstallPropagator()
	m := metrics.New()
	orc := &Orchestrator{cfg: cfg, log: log, Metrics: m, Pools: map[string]*queue.Pool{}, stopHealth: make(chan struct{}), healthLast: -1,
		fault: o.Fault, workerID: workerID, running: queue.NewRunning()}
	defer func() {
		if err != nil {
			orc.closeAll()
		}
	}()
	exposed, err := config.CheckExposure(cfg)
	if err != nil {
		return nil, err
	}
	for _, e := range exposed {
		log.Warn("INSECURE: --insecure given; running exposed without TLS and authentication, anyone who can reach the port can use it", "exposure", e)
	}
	if err := orc.loadSecurity(); err != nil {
		return nil, err
	}
	natsOpts, err := broker.SecurityOptions(cfg.Security, log)
	if err != nil {
		return nil, err
	}
	orc.Broker, err = broker.New(broker.Options{
		URL: cfg.NATSURL, Listen: cfg.NATSListen, DataDir: cfg.DataDir, Durability: cfg.Durability,
		Queues: cfg.Queues, Logger: log, Name: "tandem-orchestrator " + workerID, Replicas: cfg.StreamReplicas,
		AuditMaxAge:   cfg.AuditMaxAge,
		ClientOptions: natsOpts,
	})
	if err != nil {
		return nil, err
	}
	orc.Audit = audit.NewLog(orc.Broker, log)
	orc.access = &access{auth: cfg.Auth, limiter: ratelimit.New(cfg.RateLimit, cfg.RateBurst, 0), audit: orc.Audit, log: log}
	if cfg.Auth {
		// Registered before the first connection: every connection re-watches.
		orc.Tokens = auth.NewStore(log)
		orc.Tokens.Watch(orc.Broker)
		orc.access.tokens = orc.Tokens
	}
	orc.Compute, err = compute.New(compute.Options{
		Endpoints: cfg.Compute, MaxMessageBytes: cfg.MaxMessageBytes, BreakerOpenFor: o.BreakerOpenFor, Logger: log,
		TLS: orc.computeTLS, Token: orc.token,
		OnBreakerChange: func(ep string, st gobreaker.State) {
			m.BreakerState.WithLabelValues(ep).Set(float64(map[gobreaker.State]int{gobreaker.StateClosed: 0, gobreaker.StateHalfOpen: 1, gobreaker.StateOpen: 2}[st]))
		},
	})
	if err != nil {
		return nil, err
	}
	orc.API = &api.Service{Broker: orc.Broker, Compute: orc.Compute, Metrics: m, Log: log, Fault: o.Fault, WatchLimits: o.WatchLimits}

	orc.lis, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", cfg.Listen, err)
	}
	sopts := []grpc.ServerOption{grpc.MaxRecvMsgSize(cfg.MaxMessageBytes), grpc.MaxSendMsgSize(cfg.MaxMessageBytes),
		grpc.StatsHandler(otelgrpc.NewServerHandler(otelgrpc.WithFilter(filters.Not(filters.HealthCheck())))),
		grpc.ChainUnaryInterceptor(orc.gateUnary, orc.access.unary), grpc.ChainStreamInterceptor(orc.gateStream, orc.access.stream)}
	orc.health = health.NewServer()
	register := func(srv *grpc.Server) *grpc.Server {
		tandemv1.RegisterJobServiceServer(srv, orc.API)
		tandemv1.RegisterComputeServiceServer(srv, &api.ComputeProxy{Compute: orc.Compute, Jobs: orc.API})
		healthpb.RegisterHealthServer(srv, orc.health)
		reflection.Register(srv)
		return srv
	}
	if cfg.DashboardListen != "" {
		// The dashboard's own calls: the same services and interceptors, in
		// memory, without TLS.
		orc.inprocSrv = register(grpc.NewServer(sopts...))
	}
	if orc.ServerTLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(orc.ServerTLS.Config())))
	}
	orc.grpc = register(grpc.NewServer(sopts...))
	orc.setHealth(false)
	orc.wg.Add(1)
	go func() {
		defer orc.wg.Done()
		if err := orc.grpc.Serve(orc.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("gRPC server stopped", "error", err)
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
	if cfg.DashboardListen != "" {
		orc.inproc = bufconn.Listen(1 << 20)
		orc.wg.Add(1)
		go func() {
			defer orc.wg.Done()
			_ = orc.inprocSrv.Serve(orc.inproc)
		}()
		if err := orc.startDashboard(cfg.DashboardListen); err != nil {
			return nil, err
		}
	}
	orc.wg.Add(1)
	go orc.watchHealth()

	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	cerr := orc.Broker.Connect(cctx)
	cancel()
	if cerr == nil {
		if err := orc.finishStart(ctx); err != nil {
			return nil, err
		}
	} else {
		log.Warn("nats not reachable at start; serving NOT_SERVING and connecting in the background", "url", orc.Broker.URL(), "error", cerr)
		orc.wg.Add(1)
		go func() {
			defer orc.wg.Done()
			if orc.Broker.ConnectLoop(orc.bgCtx()) != nil {
				return // shut down before NATS came up
			}
			if err := orc.finishStart(orc.bgCtx()); err != nil {
				log.Error("start after connecting to NATS failed", "error", err)
			}
		}()
	}
	log.Info("orchestrator started", "listen", orc.lis.Addr().String(), "nats", orc.Broker.URL(), "compute", cfg.Compute, "queues", len(cfg.Queues), "worker", workerID,
		"tls", orc.ServerTLS != nil, "mtls", cfg.TLSClientCA != "", "auth", cfg.Auth, "rate_limit", cfg.RateLimit, "compute_tls", orc.computeTLS != nil, "encryption", orc.keys.String())
	return orc, nil
}

// loadSecurity loads the TLS files, the compute token and the keyring.
func (o *Orchestrator) loadSecurity() error {
	sec := o.cfg.Security
	var err error
	if sec.TLS() {
		if o.ServerTLS, err = tlsconf.NewServer(sec.TLSCert, sec.TLSKey, sec.TLSClientCA, o.log); err != nil {
			return err
		}
	}
	if sec.ComputeCA != "" || sec.ComputeCert != "" {
		if o.computeTLS, err = tlsconf.NewClient(sec.ComputeCA, sec.ComputeCert, sec.ComputeKey, "--compute-ca/--compute-cert/--compute-key", o.log); err != nil {
			return err
		}
	}
	if sec.ComputeTokenFile != "" {
		if o.computeTLS == nil {
			for _, ep := range o.cfg.Compute {
				if !config.Loopback(strings.TrimPrefix(ep, "dns:///")) {
					o.log.Warn("the compute token is sent without TLS (no --compute-ca or --compute-cert)", "endpoint", ep)
				}
			}
		}
		if o.token, err = compute.NewTokenFile(sec.ComputeTokenFile, o.computeTLS != nil, o.log); err != nil {
			return err
		}
	}
	if o.keys, err = sealing.Load(sec.EncryptionKeyFile, string(sec.EncryptionKeys)); err != nil {
		return err
	}
	return nil
}

// startDashboard serves the web dashboard; it calls this orchestrator's own
// JobService over gRPC (in memory, through the same interceptors as any
// other client).
func (o *Orchestrator) startDashboard(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--dashboard-listen %s: %w", addr, err)
	}
	if o.ServerTLS != nil {
		lis = tls.NewListener(lis, o.ServerTLS.Config())
	}
	conn, err := grpc.NewClient("passthrough:///tandem-dashboard", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return o.inproc.DialContext(ctx) }))
	if err != nil {
		_ = lis.Close()
		return err
	}
	opts := dashboard.Options{
		// The chart's sampler reads every queue in-process, as the
		// orchestrator itself; each page shows only what its caller's token reads.
		Sample: func(ctx context.Context) ([]*tandemv1.QueueInfo, error) {
			r, err := o.API.ListQueues(auth.WithPrincipal(ctx, auth.System()), &tandemv1.ListQueuesRequest{})
			return r.GetQueues(), err
		},
	}
	if o.cfg.Auth {
		opts.Check = func(token string) error {
			p, _, err := o.Tokens.Authenticate([]string{"Bearer " + token})
			if err != nil {
				return apierr.Status(err)
			}
			if !p.ReadsAny() {
				return apierr.Status(apierr.PermissionDenied(auth.Read.String(), "*"))
			}
			return nil
		}
	}
	d, err := dashboard.New(tandemv1.NewJobServiceClient(conn), o.Metrics.Registry, o.log, opts)
	if err != nil {
		_ = lis.Close()
		_ = conn.Close()
		return err
	}
	o.dashLis, o.dash, o.dashConn = lis, d, conn
	o.dashSrv = dashboard.Serve(lis, d.Handler())
	o.log.Info("dashboard serving", "listen", lis.Addr().String())
	return nil
}

// DashboardAddr is the dashboard's address ("" when off).
func (o *Orchestrator) DashboardAddr() string {
	if o.dashLis == nil {
		return ""
	}
	return o.dashLis.Addr().String()
}

// bgCtx is cancelled when the orchestrator shuts down.
func (o *Orchestrator) bgCtx() context.Context {
	o.bgOnce.Do(func() { o.bg, o.bgCancel = context.WithCancel(context.Background()) })
	return o.bg
}

// finishStart runs once NATS is connected: the job store, one pool per
// queue, the cancel subscription; then JobService calls are let through.
func (o *Orchestrator) finishStart(ctx context.Context) error {
	o.startMu.Lock()
	defer o.startMu.Unlock()
	if o.stopping {
		return errors.New("shutting down")
	}
	if o.Tokens != nil {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := o.Tokens.WaitSynced(wctx)
		cancel()
		if err != nil {
			return err
		}
	}
	o.Store = jobstore.New(o.Broker)
	o.Store.Keys = o.keys
	o.Workers = workers.New(o.Broker, o.Metrics, o.log, o.Compute.Serves)
	if err := o.Workers.Start(ctx); err != nil {
		return err
	}
	deps := queue.Deps{Broker: o.Broker, Store: o.Store, Compute: o.Compute, Metrics: o.Metrics, Log: o.log, WorkerID: o.workerID, Running: o.running, Fault: o.fault, Workers: o.Workers}
	pools := map[string]*queue.Pool{}
	for _, q := range o.cfg.Queues {
		p, err := queue.NewPool(ctx, deps, q)
		if err != nil {
			return err
		}
		pools[q.Name] = p
	}
	running, log := o.running, o.log
	o.Broker.OnConnect(func(nc *nats.Conn) {
		if _, err := nc.Subscribe(broker.CancelSubject, func(msg *nats.Msg) {
			if running.Cancel(string(msg.Data)) {
				log.Info("cancelling running job", "job_id", string(msg.Data))
			}
		}); err != nil {
			log.Error("subscribing to cancel notices failed", "error", err)
		}
	})
	o.Pools = pools
	o.API.Store, o.API.Pools = o.Store, pools
	o.API.SetWorkers(o.Workers)
	for _, p := range pools {
		p.Start()
	}
	o.ready.Store(true)
	o.evalHealth()
	return nil
}

// Ready reports whether the orchestrator has connected to NATS once and
// serves JobService.
func (o *Orchestrator) Ready() bool { return o.ready.Load() }

func (o *Orchestrator) gateErr(method string) error {
	if o.ready.Load() || !strings.HasPrefix(method, "/"+ServiceName+"/") {
		return nil
	}
	return apierr.Status(apierr.BrokerUnavailable(fmt.Errorf("the orchestrator is still connecting to NATS at %s", o.Broker.URL())))
}

func (o *Orchestrator) gateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := o.gateErr(info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (o *Orchestrator) gateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := o.gateErr(info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
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

// evalHealth sets both health statuses from the current state.
func (o *Orchestrator) evalHealth() {
	o.healthMu.Lock()
	defer o.healthMu.Unlock()
	if o.healthStopped {
		return
	}
	compute := o.Compute.Ready()
	jobs := compute && o.ready.Load() && o.Broker.Connected()
	if v := map[bool]int{false: 0, true: 1}[jobs] + 2*map[bool]int{false: 0, true: 1}[compute]; v != o.healthLast {
		o.setHealths(jobs, compute)
		o.healthLast = v
	}
}

// watchHealth reports JobService NOT_SERVING while NATS is disconnected or
// every compute breaker is open, ComputeService while every breaker is open.
func (o *Orchestrator) watchHealth() {
	defer o.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		o.evalHealth()
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
		o.startMu.Lock()
		o.stopping = true
		o.startMu.Unlock()
		o.bgCtx()
		o.bgCancel() // ends a connect loop still waiting for NATS
		close(o.stopHealth)
		o.healthMu.Lock()
		o.healthStopped = true
		o.setHealth(false)
		o.healthMu.Unlock()
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
		if o.dashSrv != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = o.dashSrv.Shutdown(ctx)
			cancel()
			o.dash.Close()
			_ = o.dashConn.Close()
		}
		if o.inprocSrv != nil {
			o.inprocSrv.Stop()
		}
		o.wg.Wait()
		o.closeAll()
		o.log.Info("drained")
	})
}

func (o *Orchestrator) closeAll() {
	if o.Tokens != nil {
		o.Tokens.Stop()
	}
	if o.grpc != nil {
		o.grpc.Stop()
	} else if o.lis != nil {
		_ = o.lis.Close()
	}
	if o.inprocSrv != nil {
		o.inprocSrv.Stop()
	}
	if o.Compute != nil {
		o.Compute.Close()
	}
	if o.Audit != nil {
		o.Audit.Flush() // the submits' open audit windows
	}
	o.ServerTLS.Close()
	o.computeTLS.Close()
	o.token.Close()
	if o.Broker != nil {
		o.Broker.Close() // flushes: pending audit publishes go out first
	}
	if o.Audit != nil {
		o.Audit.Close()
	}
}
