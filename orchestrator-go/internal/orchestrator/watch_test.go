package orchestrator_test

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/api"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// A watch is long-lived: called without a gRPC deadline it must work (every
// NATS call inside gets its own timeout).
func TestWatchWithoutDeadline(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(context.Background()) // no deadline
	defer cancel()

	qs, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{Queue: "default", IncludeResult: true})
	require.NoError(t, err)
	_, err = qs.Header()
	require.NoError(t, err)

	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("x")})
	ids, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{JobIds: []string{job.GetId()}, IncludeResult: true})
	require.NoError(t, err)
	var last *tandemv1.Job
	for {
		r, err := ids.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		last = r.GetJob()
	}
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, last.GetState())
	require.Equal(t, []byte("x"), last.GetResult())

	for {
		r, err := qs.Recv()
		require.NoError(t, err)
		if r.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			require.Equal(t, []byte("x"), r.GetJob().GetResult())
			break
		}
	}
}

func batchEcho(t *testing.T, c tandemv1.JobServiceClient, n int) []string {
	t.Helper()
	var reqs []*tandemv1.SubmitJobRequest
	for i := range n {
		reqs = append(reqs, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte{byte(i)}})
	}
	r, err := c.SubmitJobs(ctxT(t), &tandemv1.SubmitJobsRequest{Jobs: reqs})
	require.NoError(t, err)
	var ids []string
	for _, res := range r.GetResults() {
		require.NotNil(t, res.GetSubmitted(), "%v", res.GetError())
		ids = append(ids, res.GetSubmitted().GetJob().GetId())
	}
	return ids
}

// smallWindowClient is a client whose stream window stays 64 KiB, so a client
// that does not read blocks the server's sends quickly.
func smallWindowClient(t *testing.T, b *testBundle) tandemv1.JobServiceClient {
	conn, err := grpc.NewClient(b.orc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return tandemv1.NewJobServiceClient(conn)
}

// A queue watch under a burst sees every job's terminal state.
func TestWatchQueueSeesEveryEventUnderLoad(t *testing.T) {
	t.Parallel()
	q := testQueue("default")
	q.MinWorkers, q.MaxWorkers = 16, 32
	b := setup(t, func(o *setupOpts) { o.queues = []config.Queue{q} })
	ctx := ctxT(t)
	stream, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{Queue: "default"})
	require.NoError(t, err)
	_, err = stream.Header()
	require.NoError(t, err)
	const n = 3000
	var ids []string
	for range n / 1000 {
		ids = append(ids, batchEcho(t, b.client, 1000)...)
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	for len(want) > 0 {
		r, err := stream.Recv()
		require.NoError(t, err, "%d jobs not seen", len(want))
		if r.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			delete(want, r.GetJob().GetId())
		}
	}
}

// A queue watcher that falls behind further than its buffer is told so with
// RESOURCE_EXHAUSTED / OVERLOADED, never left with a silent gap.
func TestWatchQueueSlowConsumerIsTold(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.watchLimits = api.WatchLimits{PendingMsgs: 20} })
	slow := smallWindowClient(t, b)
	ctx := ctxT(t)
	stream, err := slow.WatchJobs(ctx, &tandemv1.WatchJobsRequest{Queue: "default"})
	require.NoError(t, err)
	_, err = stream.Header()
	require.NoError(t, err)
	ids := batchEcho(t, b.client, 1000)
	// Wait until every job is done while the slow client reads nothing.
	final, _ := waitTerminal(t, b.client, ids[len(ids)-1])
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	waitAll(t, b.client, ids)
	seen := 0
	for {
		_, err := stream.Recv()
		if err != nil {
			require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
			require.Equal(t, tandemv1.ErrorReason_OVERLOADED.String(), errInfo(t, err).GetReason())
			require.Contains(t, status.Convert(err).Message(), "dropped")
			break
		}
		seen++
		require.Less(t, seen, 2000, "every event arrived: the buffer never overflowed")
	}
}

// waitAll watches ids until all are terminal and returns how many succeeded.
func waitAll(t *testing.T, c tandemv1.JobServiceClient, ids []string) int {
	t.Helper()
	stream, err := c.WatchJobs(ctxT(t), &tandemv1.WatchJobsRequest{JobIds: ids})
	require.NoError(t, err)
	done := map[string]bool{}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if m.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			done[m.GetJob().GetId()] = true
		}
	}
	return len(done)
}

// A watch by ids whose events are dropped (tiny buffer, slow client) re-reads
// the records and still ends with every job's terminal state.
func TestWatchIDsSurvivesDroppedEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.watchLimits = api.WatchLimits{IDChanSize: 1} })
	slow := smallWindowClient(t, b)
	ctx := ctxT(t)
	_, err := b.client.PauseQueue(ctx, &tandemv1.PauseQueueRequest{})
	require.NoError(t, err)
	ids := batchEcho(t, b.client, 500)
	stream, err := slow.WatchJobs(ctx, &tandemv1.WatchJobsRequest{JobIds: ids})
	require.NoError(t, err)
	_, err = stream.Recv() // subscribed and reading records
	require.NoError(t, err)
	_, err = b.client.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{})
	require.NoError(t, err)
	// The last job done means ~1000 events came while the client read nothing.
	final, _ := waitTerminal(t, b.client, ids[len(ids)-1])
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	done := map[string]bool{}
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if m.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			done[m.GetJob().GetId()] = true
		}
	}
	require.Len(t, done, len(ids))
}

// A job finishing between the watch's subscribe and its record read, or
// right after the read, is seen terminal either way.
func TestWatchIDsNoMissedTerminalState(t *testing.T) {
	t.Parallel()
	var phase atomic.Int32
	var b *testBundle
	b = setup(t, func(o *setupOpts) {
		o.fault = func(p string) error {
			switch {
			case p == "watch.subscribed" && phase.CompareAndSwap(1, 0):
				// The job finishes after the subscribe, before the read.
				<-b.compute.Started
				close(b.compute.Release)
				for {
					r, err := b.client.GetJob(context.Background(), &tandemv1.GetJobRequest{JobId: phaseJob.Load().(string)})
					if err == nil && r.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
						return nil
					}
					time.Sleep(5 * time.Millisecond)
				}
			case p == "watch.synced" && phase.CompareAndSwap(2, 0):
				// The job finishes after the read: only its event tells.
				go func() { b.compute.StallRelease <- struct{}{} }() // the hook runs after the read
			}
			return nil
		}
	})
	// 1: finished between subscribe and read.
	j1 := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}})
	phaseJob.Store(j1.GetId())
	phase.Store(1)
	final, _ := waitTerminal(t, b.client, j1.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())

	// 2: finished after the read (the watch saw it RUNNING).
	j2 := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.stall")}})
	waitState(t, b.client, j2.GetId(), tandemv1.JobState_JOB_STATE_RUNNING)
	phase.Store(2)
	final, states := waitTerminal(t, b.client, j2.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, []tandemv1.JobState{tandemv1.JobState_JOB_STATE_RUNNING, tandemv1.JobState_JOB_STATE_SUCCEEDED}, states)
}

var phaseJob atomic.Value
