package orchestrator_test

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// errCrash stands for the process dying at a fault point: the code path
// stops there, with no clean-up, exactly as a kill would leave it.
var errCrash = errors.New("simulated crash")

// crashAt returns a fault hook that fails the first time point is reached.
func crashAt(point string) func(string) error {
	var fired atomic.Bool
	return func(p string) error {
		if p == point && fired.CompareAndSwap(false, true) {
			return errCrash
		}
		return nil
	}
}

func TestBreakerDeadComputeDoesNotBurnAttempts(t *testing.T) {
	t.Parallel()
	stub := computetest.Start(t)
	stub.Stop()
	b := setup(t, func(o *setupOpts) { o.compute = stub })
	ctx := ctxT(t)
	var ids []string
	for range 4 {
		ids = append(ids, submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, MaxAttempts: 1}).GetId())
	}
	// The breaker opens; health says NOT_SERVING; pools stop pulling.
	hc := healthpb.NewHealthClient(b.conn)
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING && !b.orc.Compute.Ready()
	}, 20*time.Second, 20*time.Millisecond)
	for _, id := range ids {
		g, err := b.client.GetJob(ctx, &tandemv1.GetJobRequest{JobId: id})
		require.NoError(t, err)
		if g.GetJob().GetState() != tandemv1.JobState_JOB_STATE_RUNNING { // a hand-back may be in progress
			require.Equal(t, tandemv1.JobState_JOB_STATE_QUEUED, g.GetJob().GetState())
			require.EqualValues(t, 0, g.GetJob().GetAttempt())
		}
	}
	stub.Restart()
	for _, id := range ids {
		final, _ := waitTerminal(t, b.client, id)
		// max_attempts = 1: any burnt attempt would have made it DEAD.
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
		require.EqualValues(t, 1, final.GetAttempt())
		require.Len(t, final.GetAttempts(), 1)
	}
	dl, err := b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{})
	require.NoError(t, err)
	require.Zero(t, dl.GetTotal())
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "tandem.v1.JobService"})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 10*time.Second, 20*time.Millisecond)
}

func TestTwoOrchestratorsShareAQueue(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	stub := computetest.Start(t)
	q := testQueue(config.DefaultQueue)
	q.MinWorkers, q.MaxWorkers = 2, 2
	a := startOrchestrator(t, setupOpts{natsURL: url, compute: stub, queues: []config.Queue{q}, worker: "A"})
	b := startOrchestrator(t, setupOpts{natsURL: url, compute: stub, queues: []config.Queue{q}, worker: "B"})
	// Four blocking jobs, two workers each: all four run only if both share the queue.
	var ids []string
	for i := range 4 {
		c := a.client
		if i%2 == 1 {
			c = b.client
		}
		ids = append(ids, submit(t, c, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}}).GetId())
	}
	for range 4 {
		<-stub.Started
	}
	close(stub.Release)
	workers := map[string]int{}
	for _, id := range ids {
		final, _ := waitTerminal(t, b.client, id) // either orchestrator answers for every job
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
		workers[final.GetAttempts()[0].GetWorker()]++
		require.Equal(t, 1, stub.Calls(id))
	}
	require.Equal(t, map[string]int{"A": 2, "B": 2}, workers)
}

func TestDrainFinishesInFlightJobs(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	stub := computetest.Start(t)
	a := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
	job := submit(t, a.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}})
	<-stub.Started
	drained := make(chan struct{})
	go func() { a.orc.Shutdown(30 * time.Second); close(drained) }()
	// Draining: new submits are refused with SHUTTING_DOWN, the running job goes on.
	require.Eventually(t, func() bool {
		_, err := a.client.SubmitJob(ctxT(t), &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
		return status.Code(err) == codes.Unavailable
	}, 10*time.Second, 5*time.Millisecond)
	select {
	case <-drained:
		t.Fatal("drain returned while a job was running")
	default:
	}
	close(stub.Release)
	<-drained
	b := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
	g, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId()})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, g.GetJob().GetState())
	require.Equal(t, 1, stub.Calls(job.GetId()))
}

func TestDrainTimeoutHandsJobsBack(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	stub := computetest.Start(t)
	a := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
	job := submit(t, a.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}, MaxAttempts: 1})
	<-stub.Started
	a.orc.Shutdown(100 * time.Millisecond)
	// Handed back with its attempt uncounted; another orchestrator finishes it.
	close(stub.Release)
	b := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 1, final.GetAttempt())
	require.Equal(t, 2, stub.Calls(job.GetId()))
}

func TestWorkerDiesMidRunIsRedelivered(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.JobTimeout = time.Second // AckWait = 2s
	b := setup(t, func(o *setupOpts) {
		o.queues = []config.Queue{q}
		o.fault = crashAt("worker.after_running")
	})
	// Long enough for the deferred RUNNING write (250 ms), after which the
	// worker "dies": the recorded attempt counts.
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.sleep", "ms", "600")}, Payload: []byte("x")})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 2, final.GetAttempt()) // attempt 1 died after RUNNING
	require.Len(t, final.GetAttempts(), 2)
	// The "crash" fires 250 ms into the attempt: its compute call has usually
	// reached compute by then, but on a loaded machine it may not have.
	// Either way, no more than the two attempts ran.
	calls := b.compute.Calls(job.GetId())
	require.True(t, calls == 1 || calls == 2, "compute calls: %d", calls)
}

// TestWorkerDiesBeforeAnyWrite: a worker that dies before the attempt wrote
// anything leaves the job as it was (QUEUED, no record); the redelivery runs
// it as attempt 1, once.
func TestWorkerDiesBeforeAnyWrite(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.JobTimeout = time.Second // AckWait = 2s
	b := setup(t, func(o *setupOpts) {
		o.queues = []config.Queue{q}
		o.fault = crashAt("worker.after_start")
	})
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("x")})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 1, final.GetAttempt())
	require.Len(t, final.GetAttempts(), 1)
	require.Equal(t, 1, b.compute.Calls(job.GetId()))
}

func TestCrashBeforeAckRunsOnce(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.JobTimeout = time.Second
	b := setup(t, func(o *setupOpts) {
		o.queues = []config.Queue{q}
		o.fault = crashAt("worker.before_ack")
	})
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	// The redelivery (after AckWait) finds it SUCCEEDED and acks without running.
	require.Eventually(t, func() bool {
		qs, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
		return err == nil && qs.GetQueues()[0].GetInFlight() == 0 && qs.GetQueues()[0].GetDepth() == 0
	}, 15*time.Second, 50*time.Millisecond)
	require.Equal(t, 1, b.compute.Calls(job.GetId()))
	require.EqualValues(t, 1, final.GetAttempt())
}

// TestSubmitAtomicity crashes a submit at each step, restarts the
// orchestrator on the same NATS, and retries the submit with the same
// idempotency key: every time exactly one job exists and runs once.
func TestSubmitAtomicity(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"submit.after_idem", "submit.after_payload", "submit.after_publish"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			url := startNATS(t)
			stub := computetest.Start(t)
			payload := []byte("small")
			if point == "submit.after_payload" {
				payload = make([]byte, 3<<20) // above the inline limit (2 MiB): goes to the object store
			}
			req := &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: payload, IdempotencyKey: "k-" + point}
			var once sync.Once
			a := startOrchestrator(t, setupOpts{natsURL: url, compute: stub, fault: crashAt(point)})
			_, err := a.client.SubmitJob(ctxT(t), req)
			require.Error(t, err)
			once.Do(func() { a.orc.Shutdown(time.Second) })

			b := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
			r, err := b.client.SubmitJob(ctxT(t), req)
			require.NoError(t, err)
			// Before the message, nothing of the first submit is left: the
			// retry is a first submit. After it, the retry finds the job.
			require.Equal(t, point == "submit.after_publish", r.GetDeduplicated())
			final, _ := waitTerminal(t, b.client, r.GetJob().GetId())
			require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
			require.Equal(t, payload, final.GetResult())
			require.Eventually(t, func() bool {
				qs, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
				return err == nil && qs.GetQueues()[0].GetInFlight() == 0 && qs.GetQueues()[0].GetDepth() == 0
			}, 10*time.Second, 20*time.Millisecond)
			require.EqualValues(t, 1, stub.Total(), "exactly one run")
		})
	}
}

func TestDeadEndpointIsSkippedWithoutBurningAttempts(t *testing.T) {
	t.Parallel()
	dead := computetest.Start(t)
	dead.Stop()
	b := setup(t, func(o *setupOpts) { o.deadCompute = []string{dead.Addr} })
	var ids []string
	for range 12 {
		ids = append(ids, submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, MaxAttempts: 1}).GetId())
	}
	for _, id := range ids {
		final, _ := waitTerminal(t, b.client, id)
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
		require.EqualValues(t, 1, final.GetAttempt())
	}
	require.Eventually(t, func() bool {
		return b.orc.Compute.BreakerStates()[dead.Addr].String() == "open"
	}, 10*time.Second, 20*time.Millisecond)
	require.True(t, b.orc.Compute.Ready())
}

func TestNATSRestartOnSameStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := func(port int) *server.Server {
		ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true})
		require.NoError(t, err)
		go ns.Start()
		require.True(t, ns.ReadyForConnections(10*time.Second))
		return ns
	}
	ns := start(server.RANDOM_PORT)
	port := ns.Addr().(*net.TCPAddr).Port
	b := startOrchestrator(t, setupOpts{natsURL: ns.ClientURL()})
	first := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	final, _ := waitTerminal(t, b.client, first.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())

	_, err := b.client.PauseQueue(ctxT(t), &tandemv1.PauseQueueRequest{})
	require.NoError(t, err)
	queued := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("survives")})
	ns.Shutdown()
	ns.WaitForShutdown()
	hc := healthpb.NewHealthClient(b.conn)
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	}, 10*time.Second, 20*time.Millisecond)
	_, err = b.client.SubmitJob(ctxT(t), &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	require.Equal(t, codes.Unavailable, status.Code(err))

	ns = start(port)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 20*time.Second, 20*time.Millisecond)
	_, err = b.client.ResumeQueue(ctxT(t), &tandemv1.ResumeQueueRequest{})
	require.NoError(t, err)
	final, _ = waitTerminal(t, b.client, queued.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, []byte("survives"), final.GetResult())
	after := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	final, _ = waitTerminal(t, b.client, after.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
}

func TestHealthFollowsComputeWithoutJobs(t *testing.T) {
	t.Parallel()
	b := setup(t)
	hc := healthpb.NewHealthClient(b.conn)
	status := func() healthpb.HealthCheckResponse_ServingStatus {
		h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: "tandem.v1.JobService"})
		if err != nil {
			return healthpb.HealthCheckResponse_UNKNOWN
		}
		return h.GetStatus()
	}
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, status())
	b.compute.Stop()
	require.Eventually(t, func() bool { return status() == healthpb.HealthCheckResponse_NOT_SERVING }, 20*time.Second, 50*time.Millisecond)
	b.compute.Restart()
	require.Eventually(t, func() bool { return status() == healthpb.HealthCheckResponse_SERVING }, 20*time.Second, 50*time.Millisecond)
}
