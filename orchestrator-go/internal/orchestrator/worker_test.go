package orchestrator_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// A worker that stalls past AckWait and finishes late must not overwrite the
// result of the attempt that replaced it (the CAS is fenced by the attempt).
func TestStaleAttemptIsFenced(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.JobTimeout = time.Second // AckWait 2s
	fenced := make(chan struct{}, 10)
	b := setup(t, func(o *setupOpts) {
		o.queues = []config.Queue{q}
		o.fault = func(p string) error {
			switch p {
			case "worker.heartbeat":
				return errCrash // a stalled worker sends no in-progress acks
			case "worker.fenced":
				fenced <- struct{}{}
			}
			return nil
		}
	})
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.stall")}, Timeout: durationpb.New(time.Minute)})
	<-b.compute.Started // attempt 1 is stuck
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 2, final.GetAttempt())
	require.Equal(t, []byte("attempt-2"), final.GetResult())
	close(b.compute.StallRelease) // attempt 1 finishes late
	<-fenced
	g, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId(), IncludeResult: true})
	require.NoError(t, err)
	require.Equal(t, []byte("attempt-2"), g.GetJob().GetResult())
	require.EqualValues(t, 2, g.GetJob().GetAttempt())
}

// Jobs that outlive a third of AckWait send in-progress acks and are not redelivered.
func TestLongJobSendsInProgressAcks(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.JobTimeout = time.Second // AckWait 2s
	b := setup(t, func(o *setupOpts) { o.queues = []config.Queue{q} })
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.sleep", "ms", "3500")}, Timeout: durationpb.New(30 * time.Second)})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 1, final.GetAttempt())
	require.Equal(t, 1, b.compute.Calls(job.GetId()))
}

func TestJobTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.sleep", "ms", "5000")}, Timeout: durationpb.New(50 * time.Millisecond), MaxAttempts: 2})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, final.GetState())
	require.Equal(t, tandemv1.ErrorReason_TIMEOUT, final.GetLastError().GetReason())
}

func TestPanicInWorkerIsRecoveredAndRetried(t *testing.T) {
	t.Parallel()
	var panicked atomic.Bool
	b := setup(t, func(o *setupOpts) {
		o.fault = func(p string) error {
			if p == "worker.before_compute" && panicked.CompareAndSwap(false, true) {
				panic("boom")
			}
			return nil
		}
	})
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("p")})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 2, final.GetAttempt())
	require.Equal(t, tandemv1.ErrorReason_INTERNAL_ERROR, final.GetAttempts()[0].GetError().GetReason())
}

func TestPoolScalesUpToMaxWorkers(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.MinWorkers, q.MaxWorkers = 1, 4
	b := setup(t, func(o *setupOpts) { o.queues = []config.Queue{q} })
	for range 4 {
		submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}})
	}
	for range 4 { // four run at once only after the pool grew from 1 to 4
		<-b.compute.Started
	}
	qs, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	require.EqualValues(t, 4, qs.GetQueues()[0].GetWorkers())
	close(b.compute.Release)
}

// The happy path of a short job costs 2 persisted JetStream writes: the job
// message (its QUEUED record) and the SUCCEEDED record with the result
// (plus the ack). A job running past the deferred RUNNING write adds one.
// Submits are audited too, coalesced (internal/audit): at most one entry per
// caller, queue and outcome a second.
func TestPersistedWritesPerJob(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	b := startOrchestrator(t, setupOpts{natsURL: url})
	const n = 10
	for range n {
		j := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("w")})
		final, _ := waitTerminal(t, b.client, j.GetId())
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	}
	nc, err := nats.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	writes, audited := uint64(0), uint64(0)
	names := js.StreamNames(context.Background())
	for name := range names.Name() {
		s, err := js.Stream(context.Background(), name)
		require.NoError(t, err)
		if name == broker.AuditStream {
			audited = s.CachedInfo().State.LastSeq
			continue
		}
		writes += s.CachedInfo().State.LastSeq
	}
	require.NoError(t, names.Err())
	require.EqualValues(t, 2*n, writes)
	require.LessOrEqual(t, audited, uint64(n/2), "submit audit entries are coalesced")
	// Every submit is in the trail once its window closed (1 s): 10 submits by
	// one caller in a few hundred ms make one or two entries.
	require.Eventually(t, func() bool {
		r, err := b.client.ListAudit(ctxT(t), &tandemv1.ListAuditRequest{Action: "SubmitJob"})
		if err != nil {
			return false
		}
		count := uint32(0)
		for _, e := range r.GetEntries() {
			count += e.GetJobCount()
		}
		return count == n && len(r.GetEntries()) <= n/2
	}, 10*time.Second, 100*time.Millisecond)
	qi, err := js.Stream(context.Background(), broker.QueueStream("default"))
	require.NoError(t, err)
	require.EqualValues(t, 0, qi.CachedInfo().State.Msgs, "acked messages leave the work queue")
}

func TestRateLimitSpacesJobStarts(t *testing.T) {
	t.Parallel()
	q := testQueue(config.DefaultQueue)
	q.RateLimit, q.RateBurst = 10, 1 // one start per 100 ms
	b := setup(t, func(o *setupOpts) { o.queues = []config.Queue{q} })
	var starts []time.Time
	var ids []string
	for range 6 {
		ids = append(ids, submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}}).GetId())
	}
	for _, id := range ids {
		final, _ := waitTerminal(t, b.client, id)
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
		starts = append(starts, final.GetAttempts()[0].GetStartedAt().AsTime())
	}
	// Every start waited for its own token: no two are close together (without
	// the limiter all six start within a few milliseconds of each other).
	slices.SortFunc(starts, func(a, b time.Time) int { return a.Compare(b) })
	for i := 1; i < len(starts); i++ {
		require.GreaterOrEqual(t, starts[i].Sub(starts[i-1]), 50*time.Millisecond, "starts %d and %d at 10/s with burst 1", i-1, i)
	}
}
