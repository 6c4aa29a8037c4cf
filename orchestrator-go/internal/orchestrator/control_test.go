package orchestrator_test

import (
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

func TestCancelQueued(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	_, err := b.client.PauseQueue(ctx, &tandemv1.PauseQueueRequest{Queue: "default"})
	require.NoError(t, err)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	c, err := b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: job.GetId()})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, c.GetJob().GetState())
	require.Equal(t, tandemv1.ErrorReason_CANCELLED, c.GetJob().GetLastError().GetReason())

	qi, err := b.client.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{Queue: "default"})
	require.NoError(t, err)
	require.False(t, qi.GetQueue().GetPaused())
	// A later job runs; the cancelled one never does.
	next := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	final, _ := waitTerminal(t, b.client, next.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Eventually(t, func() bool {
		q, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
		return err == nil && q.GetQueues()[0].GetDepth() == 0 && q.GetQueues()[0].GetInFlight() == 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 0, b.compute.Calls(job.GetId()))
	got, err := b.client.GetJob(ctx, &tandemv1.GetJobRequest{JobId: job.GetId()})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, got.GetJob().GetState())
	require.EqualValues(t, 0, got.GetJob().GetAttempt())
}

func TestCancelRunning(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}})
	require.Equal(t, job.GetId(), <-b.compute.Started)
	waitState(t, b.client, job.GetId(), tandemv1.JobState_JOB_STATE_RUNNING) // the deferred RUNNING write
	c, err := b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: job.GetId()})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, c.GetJob().GetState())
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, final.GetState())
	require.NotNil(t, final.GetAttempts()[0].GetError())
	// The worker let go of it: the message is acked, nothing in flight.
	require.Eventually(t, func() bool {
		q, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
		return err == nil && q.GetQueues()[0].GetInFlight() == 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, b.compute.Calls(job.GetId()))
}

// TestCancelRunningBeforeItsRunningWrite cancels a job in its first
// moments, before the attempt wrote RUNNING: the compute call is cancelled
// all the same and the job ends CANCELLED, once.
func TestCancelRunningBeforeItsRunningWrite(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}})
	require.Equal(t, job.GetId(), <-b.compute.Started)
	c, err := b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: job.GetId()})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, c.GetJob().GetState())
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, final.GetState())
	require.Eventually(t, func() bool {
		q, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
		return err == nil && q.GetQueues()[0].GetInFlight() == 0
	}, 10*time.Second, 20*time.Millisecond)
	require.Equal(t, 1, b.compute.Calls(job.GetId()))
}

func TestMaxDepthBackpressure(t *testing.T) {
	t.Parallel()
	q := testQueue("small")
	q.MaxDepth = 3
	b := setup(t, func(o *setupOpts) { o.queues = []config.Queue{q} })
	ctx := ctxT(t)
	_, err := b.client.PauseQueue(ctx, &tandemv1.PauseQueueRequest{Queue: "small"})
	require.NoError(t, err)
	var ids []string
	for range 3 {
		ids = append(ids, submit(t, b.client, &tandemv1.SubmitJobRequest{Queue: "small", Steps: []*tandemv1.Step{step("test.echo")}}).GetId())
	}
	_, err = b.client.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Queue: "small", Steps: []*tandemv1.Step{step("test.echo")}})
	require.Equal(t, codes.ResourceExhausted, status.Code(err))
	ei := errInfo(t, err)
	require.Equal(t, "QUEUE_FULL", ei.GetReason())
	require.Equal(t, "small", ei.GetMetadata()["queue"])
	require.Equal(t, "3", ei.GetMetadata()["limit"])
	require.NotEmpty(t, ei.GetMetadata()["retry_after_ms"])
	var ri *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			ri = r
		}
	}
	require.NotNil(t, ri)
	require.Positive(t, ri.GetRetryDelay().AsDuration())

	// Batch: per-item QUEUE_FULL.
	br, err := b.client.SubmitJobs(ctx, &tandemv1.SubmitJobsRequest{Jobs: []*tandemv1.SubmitJobRequest{{Queue: "small", Steps: []*tandemv1.Step{step("test.echo")}}}})
	require.NoError(t, err)
	require.Equal(t, tandemv1.ErrorReason_QUEUE_FULL, br.GetResults()[0].GetError().GetReason())

	qs, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	require.Len(t, qs.GetQueues(), 2) // small + default
	small := qs.GetQueues()[1]
	require.Equal(t, "small", small.GetName())
	require.EqualValues(t, 3, small.GetDepth())
	require.True(t, small.GetPaused())
	require.EqualValues(t, 3, small.GetMaxDepth())

	// Nothing accepted is dropped.
	_, err = b.client.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{Queue: "small"})
	require.NoError(t, err)
	for _, id := range ids {
		final, _ := waitTerminal(t, b.client, id)
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	}
}

func TestSubmitJobsBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	var reqs []*tandemv1.SubmitJobRequest
	for i := range 300 {
		reqs = append(reqs, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte{byte(i)}})
	}
	reqs[7] = &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("no.such.op")}}
	reqs[8].IdempotencyKey = "batch-key"
	reqs[9] = reqs[8] // duplicate inside the batch
	r, err := b.client.SubmitJobs(ctx, &tandemv1.SubmitJobsRequest{Jobs: reqs})
	require.NoError(t, err)
	require.Len(t, r.GetResults(), 300)
	require.Equal(t, tandemv1.ErrorReason_UNKNOWN_OP, r.GetResults()[7].GetError().GetReason())
	require.Equal(t, r.GetResults()[8].GetSubmitted().GetJob().GetId(), r.GetResults()[9].GetSubmitted().GetJob().GetId())
	require.True(t, r.GetResults()[9].GetSubmitted().GetDeduplicated())
	var ids []string
	for i, res := range r.GetResults() {
		if i == 7 || i == 9 {
			continue
		}
		require.NotNil(t, res.GetSubmitted(), "item %d: %v", i, res.GetError())
		ids = append(ids, res.GetSubmitted().GetJob().GetId())
	}
	stream, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{JobIds: ids})
	require.NoError(t, err)
	done := map[string]bool{}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if m.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			done[m.GetJob().GetId()] = true
		}
	}
	require.Len(t, done, len(ids))
	for _, id := range ids {
		require.Equal(t, 1, b.compute.Calls(id))
	}
}

func TestWatchQueue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	stream, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{Queue: "default", IncludeResult: true})
	require.NoError(t, err)
	// The subscription is live once the stream's headers arrive.
	_, err = stream.Header()
	require.NoError(t, err)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("q")})
	for {
		m, err := stream.Recv()
		require.NoError(t, err)
		require.Equal(t, job.GetId(), m.GetJob().GetId())
		if m.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			require.Equal(t, []byte("q"), m.GetJob().GetResult())
			break
		}
	}
}

func TestPauseSurvivesRestartAndMetricsServe(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	stub := computetest.Start(t)
	a := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
	_, err := a.client.PauseQueue(ctxT(t), &tandemv1.PauseQueueRequest{})
	require.NoError(t, err)
	job := submit(t, a.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	a.orc.Shutdown(time.Second)
	b := startOrchestrator(t, setupOpts{natsURL: url, compute: stub})
	qs, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	require.True(t, qs.GetQueues()[0].GetPaused())
	require.EqualValues(t, 1, qs.GetQueues()[0].GetDepth())
	_, err = b.client.ResumeQueue(ctxT(t), &tandemv1.ResumeQueueRequest{})
	require.NoError(t, err)
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())

	rec := httptest.NewRecorder()
	b.orc.Metrics.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	require.Contains(t, body, `tandem_jobs_completed_total{outcome="succeeded",queue="default"} 1`)
	require.Contains(t, body, "tandem_job_duration_seconds_bucket")
	require.Contains(t, body, "tandem_queue_workers")
}
