package orchestrator_test

import (
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/workertest"
)

// setupWithWorkers starts an orchestrator on a real nats-server the stub
// workers can reach.
func setupWithWorkers(t *testing.T) (*testBundle, string) {
	t.Helper()
	url := startNATS(t)
	return setup(t, func(o *setupOpts) { o.natsURL = url }), url
}

func waitRegistered(t *testing.T, b *testBundle, op string, live uint32) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, o := range b.orc.API.Catalogue(ctxT(t)).GetOps() {
			if o.GetName() == op {
				return o.GetProvider() == "worker" && o.GetLiveWorkers() == live
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "op %s with %d live workers", op, live)
}

// A pipeline mixing compute steps and worker steps: the bytes flow from one
// provider to the next inside the orchestrator.
func TestMixedPipelineComputeWorkerCompute(t *testing.T) {
	t.Parallel()
	b, url := setupWithWorkers(t)
	w := workertest.Start(t, url, "w1")
	waitRegistered(t, b, "user.upper", 1)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo"), step("user.upper"), step("hash.sha256")}, Payload: []byte("mixed")})
	fin, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState(), "%v", fin.GetLastError())
	want := sha256.Sum256([]byte("MIXED"))
	require.Equal(t, want[:], fin.GetResult())
	require.EqualValues(t, 1, w.Calls.Load())

	ws, err := b.client.ListWorkers(ctxT(t), &tandemv1.ListWorkersRequest{})
	require.NoError(t, err)
	require.Len(t, ws.GetWorkers(), 1)
	require.Equal(t, "w1", ws.GetWorkers()[0].GetId())
	require.NotNil(t, ws.GetWorkers()[0].GetLastHeartbeat())
}

// Params are checked at submit against the registered schema; an op nobody
// registered is UNKNOWN_OP.
func TestRegisteredSchemaValidatesSubmits(t *testing.T) {
	t.Parallel()
	b, url := setupWithWorkers(t)
	workertest.Start(t, url, "w1")
	waitRegistered(t, b, "user.slow", 1)
	_, err := b.client.SubmitJob(ctxT(t), &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.slow", "ms", "9999999")}})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Equal(t, "PARAM_OUT_OF_RANGE", errInfo(t, err).GetReason())
	_, err = b.client.SubmitJob(ctxT(t), &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.slow")}})
	require.Equal(t, "PARAM_INVALID", errInfo(t, err).GetReason())
	_, err = b.client.SubmitJob(ctxT(t), &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.never")}})
	require.Equal(t, "UNKNOWN_OP", errInfo(t, err).GetReason())
}

// A registered op with no live worker is not an error: its jobs wait with
// their attempts untouched, and run when a worker comes back.
func TestNoLiveWorkerJobsWaitThenRun(t *testing.T) {
	t.Parallel()
	b, url := setupWithWorkers(t)
	w := workertest.Start(t, url, "w1")
	waitRegistered(t, b, "user.upper", 1)
	w.Close()
	waitRegistered(t, b, "user.upper", 0)
	var ids []string
	for range 5 {
		ids = append(ids, submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.upper")}, Payload: []byte("late")}).GetId())
	}
	// Handed back at least once each while no worker is live.
	require.Eventually(t, func() bool {
		for _, id := range ids {
			r, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: id})
			if err != nil || r.GetJob().GetState() != tandemv1.JobState_JOB_STATE_QUEUED || r.GetJob().GetAttempt() != 0 {
				return false
			}
		}
		return true
	}, 10*time.Second, 50*time.Millisecond)
	workertest.Start(t, url, "w2")
	for _, id := range ids {
		fin, _ := waitTerminal(t, b.client, id)
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState())
		require.Equal(t, "LATE", string(fin.GetResult()))
		require.Len(t, fin.GetAttempts(), 1, "waiting burnt no attempt")
	}
}

// A frozen worker stops heartbeating: the step is declared lost and retried
// on another worker; progress reported by a step shows in the record.
func TestFrozenWorkerIsLostAndTheStepRetried(t *testing.T) {
	t.Parallel()
	b, url := setupWithWorkers(t)
	w1 := workertest.Start(t, url, "w1")
	waitRegistered(t, b, "user.slow", 1)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.slow", "ms", "1500")}, Payload: []byte("p")})
	// Progress arrives while it runs.
	require.Eventually(t, func() bool {
		r, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId()})
		return err == nil && r.GetJob().GetProgress().GetMessage() == "sleeping"
	}, 10*time.Second, 20*time.Millisecond, "progress in the record")
	w1.Frozen.Store(true)
	w2 := workertest.Start(t, url, "w2")
	fin, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState(), "%v", fin.GetLastError())
	require.Len(t, fin.GetAttempts(), 2)
	require.Equal(t, "WORKER_LOST", fin.GetAttempts()[0].GetError().GetReason().String())
	require.GreaterOrEqual(t, w2.Calls.Load(), int64(1))
}

// Cancel reaches a running worker step; the user's errors are classified by
// the catalogue (OP_FAILED permanent, OP_ERROR retried).
func TestWorkerCancelAndErrors(t *testing.T) {
	t.Parallel()
	b, url := setupWithWorkers(t)
	w := workertest.Start(t, url, "w1")
	waitRegistered(t, b, "user.slow", 1)
	ctx := ctxT(t)
	long := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.slow", "ms", "60000")}})
	waitState(t, b.client, long.GetId(), tandemv1.JobState_JOB_STATE_RUNNING)
	_, err := b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: long.GetId()})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return w.Cancelled.Load() == 1 }, 10*time.Second, 20*time.Millisecond, "the worker was told to stop")

	perm := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.fail")}, MaxAttempts: 3})
	fin, _ := waitTerminal(t, b.client, perm.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_FAILED, fin.GetState())
	require.Equal(t, tandemv1.ErrorReason_OP_FAILED, fin.GetLastError().GetReason())
	require.Len(t, fin.GetAttempts(), 1)
	require.True(t, strings.Contains(fin.GetLastError().GetMessage(), "bad input"))

	retry := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.fail", "retryable", "true")}, MaxAttempts: 2})
	fin, _ = waitTerminal(t, b.client, retry.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, fin.GetState())
	require.Equal(t, tandemv1.ErrorReason_OP_ERROR, fin.GetLastError().GetReason())
	require.Len(t, fin.GetAttempts(), 2)
}
