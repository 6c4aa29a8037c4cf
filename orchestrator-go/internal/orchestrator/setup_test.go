package orchestrator_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"google.golang.org/genproto/googleapis/rpc/errdetails"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/api"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/orchestrator"
)

// testBundle is what one test works with.
type testBundle struct {
	orc     *orchestrator.Orchestrator
	client  tandemv1.JobServiceClient
	conn    *grpc.ClientConn
	compute *computetest.Server
	natsURL string
}

type setupOpts struct {
	queues  []config.Queue
	natsURL string // empty: embedded server in a temp dir
	compute *computetest.Server
	fault   func(string) error
	worker  string
	// deadCompute are extra compute endpoints listed before the stub.
	deadCompute []string
	watchLimits api.WatchLimits
	replicas    int
	dashboard   bool
	// auth turns --auth on; rateLimit/rateBurst set --rate-limit/--rate-burst.
	auth      bool
	rateLimit float64
	rateBurst int
	// security is the TLS, auth and encryption configuration; clientCreds
	// the bundle client's transport credentials (nil: plaintext).
	security    config.Security
	clientCreds credentials.TransportCredentials
	dataDir     string        // empty: a temp dir
	listen      string        // empty: 127.0.0.1:0
	logs        *lockedBuffer // set: JSON logs go here
}

// lockedBuffer collects log lines from many goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testQueue is a queue with test-friendly timings.
func testQueue(name string) config.Queue {
	q := config.DefaultQueueSettings(name)
	q.MinWorkers, q.MaxWorkers = 2, 4
	q.JobTimeout = 5 * time.Second
	q.BackoffBase, q.BackoffCap = 10*time.Millisecond, 50*time.Millisecond
	q.MaxAttempts = 3
	return q
}

func testLogger() *slog.Logger {
	if os.Getenv("TANDEM_TEST_LOG") != "" {
		return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startNATS runs a real nats-server in-process with JetStream on a random
// port and a temporary store, for tests where orchestrators share it.
func startNATS(t testing.TB) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(),
		NoSigs: true, NoLog: true, MaxPayload: 8 << 20,
	})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

func startOrchestrator(t testing.TB, o setupOpts) *testBundle {
	t.Helper()
	if o.compute == nil {
		o.compute = computetest.Start(t)
	}
	if o.queues == nil {
		o.queues = []config.Queue{testQueue(config.DefaultQueue)}
	}
	qs, err := config.NormalizeQueues(o.queues)
	require.NoError(t, err)
	cfg := &config.Config{
		Listen:          "127.0.0.1:0",
		Compute:         append(append([]string{}, o.deadCompute...), o.compute.Addr),
		NATSURL:         o.natsURL,
		NATSListen:      "",
		DataDir:         o.dataDir,
		Durability:      config.DurabilityInterval,
		DrainTimeout:    5 * time.Second,
		MaxMessageBytes: 65 << 20,
		StreamReplicas:  max(1, o.replicas),
		Queues:          qs,
		RateLimit:       o.rateLimit,
		RateBurst:       max(1, o.rateBurst),
		Security:        o.security,
	}
	if o.auth {
		cfg.Auth = true
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if o.listen != "" {
		cfg.Listen = o.listen
	}
	log := testLogger()
	if o.logs != nil {
		log = slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.dashboard {
		cfg.DashboardListen = "127.0.0.1:0"
	}
	orc, err := orchestrator.Start(context.Background(), orchestrator.Options{
		Config: cfg, Logger: log, Fault: o.fault, BreakerOpenFor: 200 * time.Millisecond, WorkerID: o.worker, WatchLimits: o.watchLimits,
	})
	require.NoError(t, err)
	t.Cleanup(func() { orc.Shutdown(time.Second) })
	creds := o.clientCreds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(orc.Addr(), grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(80<<20), grpc.MaxCallSendMsgSize(80<<20)))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &testBundle{orc: orc, client: tandemv1.NewJobServiceClient(conn), conn: conn, compute: o.compute, natsURL: o.natsURL}
}

// setup starts one orchestrator with an embedded nats-server and a stub compute.
func setup(t testing.TB, opts ...func(*setupOpts)) *testBundle {
	t.Helper()
	var o setupOpts
	for _, f := range opts {
		f(&o)
	}
	return startOrchestrator(t, o)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func step(op string, kv ...string) *tandemv1.Step {
	s := &tandemv1.Step{Op: op, Params: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.Params[kv[i]] = kv[i+1]
	}
	return s
}

func submit(t testing.TB, c tandemv1.JobServiceClient, req *tandemv1.SubmitJobRequest) *tandemv1.Job {
	t.Helper()
	resp, err := c.SubmitJob(ctxT(t), req)
	require.NoError(t, err)
	return resp.GetJob()
}

// waitTerminal streams the job's changes until it is terminal and returns
// every state seen, in order, with the final job.
func waitTerminal(t testing.TB, c tandemv1.JobServiceClient, id string) (*tandemv1.Job, []tandemv1.JobState) {
	t.Helper()
	stream, err := c.WatchJobs(ctxT(t), &tandemv1.WatchJobsRequest{JobIds: []string{id}, IncludeResult: true})
	require.NoError(t, err)
	var states []tandemv1.JobState
	var last *tandemv1.Job
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			require.NotNil(t, last)
			return last, states
		}
		require.NoError(t, err)
		last = r.GetJob()
		states = append(states, last.GetState())
	}
}

// waitState watches a job until it reaches want (not necessarily terminal).
func waitState(t testing.TB, c tandemv1.JobServiceClient, id string, want tandemv1.JobState) *tandemv1.Job {
	t.Helper()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	stream, err := c.WatchJobs(ctx, &tandemv1.WatchJobsRequest{JobIds: []string{id}})
	require.NoError(t, err)
	for {
		r, err := stream.Recv()
		require.NoError(t, err, "job %s never reached %s", id, want)
		if r.GetJob().GetState() == want {
			return r.GetJob()
		}
	}
}

// errInfo extracts the ErrorInfo of a gRPC error.
func errInfo(t testing.TB, err error) *errdetails.ErrorInfo {
	t.Helper()
	require.Error(t, err)
	st, ok := status.FromError(err)
	require.True(t, ok)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	t.Fatalf("no ErrorInfo in %v", err)
	return nil
}
