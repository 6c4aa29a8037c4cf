package orchestrator_test

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

func TestRetryThenSucceed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "UNAVAILABLE", "until", "2")}, Payload: []byte("x"), MaxAttempts: 5})
	final, states := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "states %v", states)
	require.EqualValues(t, 3, final.GetAttempt())
	require.Len(t, final.GetAttempts(), 3)
	for i, a := range final.GetAttempts()[:2] {
		require.EqualValues(t, i+1, a.GetNumber())
		require.Equal(t, tandemv1.ErrorReason_INJECTED_FAULT, a.GetError().GetReason())
		require.EqualValues(t, codes.Unavailable, a.GetError().GetCode())
	}
	require.Nil(t, final.GetAttempts()[2].GetError())
	require.Equal(t, 3, b.compute.Calls(job.GetId()))
}

func TestRetryableCodes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, code := range []string{"INTERNAL", "DEADLINE_EXCEEDED"} {
		job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", code, "until", "1")}})
		final, _ := waitTerminal(t, b.client, job.GetId())
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), code)
		require.EqualValues(t, 2, final.GetAttempt(), code)
	}
	// OVERLOADED (compute's wait queue full) is back-pressure: retried
	// without counting the attempt, so max_attempts = 1 still succeeds.
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "RESOURCE_EXHAUSTED", "calls", "2")}, MaxAttempts: 1})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 1, final.GetAttempt())
	require.Equal(t, 3, b.compute.Calls(job.GetId()))
}

func TestPermanentErrorFailsAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "INVALID_ARGUMENT")}, MaxAttempts: 5})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_FAILED, final.GetState())
	require.EqualValues(t, 1, final.GetAttempt())
	require.Equal(t, tandemv1.ErrorReason_INJECTED_FAULT, final.GetLastError().GetReason())
	require.EqualValues(t, codes.InvalidArgument, final.GetLastError().GetCode())
	require.Equal(t, "injected permanent fault", final.GetLastError().GetMessage())
	require.Equal(t, "test.fail", final.GetLastError().GetMetadata()["op"])
	require.Equal(t, 1, b.compute.Calls(job.GetId()))

	_, err := b.client.CancelJob(ctxT(t), &tandemv1.CancelJobRequest{JobId: job.GetId()})
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.Equal(t, "JOB_STATE_CONFLICT", errInfo(t, err).GetReason())
}

func TestRetryToDeadThenRetryDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.compute.Failing.Store(true)
	var ids []string
	for range 3 {
		j := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.flaky")}, Payload: []byte("dead"), MaxAttempts: 2})
		ids = append(ids, j.GetId())
	}
	for _, id := range ids {
		final, _ := waitTerminal(t, b.client, id)
		require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, final.GetState())
		require.EqualValues(t, 2, final.GetAttempt())
		require.Len(t, final.GetAttempts(), 2)
		require.Equal(t, tandemv1.ErrorReason_INJECTED_FAULT, final.GetLastError().GetReason())
		require.Equal(t, 2, b.compute.Calls(id))
	}
	ctx := ctxT(t)
	dl, err := b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: "default"})
	require.NoError(t, err)
	require.EqualValues(t, 3, dl.GetTotal())
	require.Len(t, dl.GetJobs(), 3)
	for _, j := range dl.GetJobs() {
		require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, j.GetState())
		require.Len(t, j.GetAttempts(), 2)
		require.NotNil(t, j.GetLastError())
	}
	dl, err = b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: "default", Limit: 1})
	require.NoError(t, err)
	require.EqualValues(t, 3, dl.GetTotal())
	require.Len(t, dl.GetJobs(), 1)

	qs, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	require.EqualValues(t, 3, qs.GetQueues()[0].GetDeadLetters())

	// Retry one by id once compute is healthy: it runs with fresh attempts.
	b.compute.Failing.Store(false)
	rr, err := b.client.RetryDeadLetters(ctx, &tandemv1.RetryDeadLettersRequest{Queue: "default", JobIds: []string{ids[0]}})
	require.NoError(t, err)
	require.Equal(t, []string{ids[0]}, rr.GetRetriedJobIds())
	final, _ := waitTerminal(t, b.client, ids[0])
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.EqualValues(t, 3, final.GetAttempt(), "attempt numbers continue after a retry")
	require.Len(t, final.GetAttempts(), 3)
	require.Equal(t, []byte("dead"), final.GetResult())

	// A retried job that dies again is dead-lettered again, with fresh attempts.
	b.compute.Failing.Store(true)
	_, err = b.client.RetryDeadLetters(ctx, &tandemv1.RetryDeadLettersRequest{Queue: "default", JobIds: []string{ids[2]}})
	require.NoError(t, err)
	final, _ = waitTerminal(t, b.client, ids[2])
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, final.GetState())
	require.EqualValues(t, 4, final.GetAttempt())
	require.Equal(t, 4, b.compute.Calls(ids[2]))
	dl, err = b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: "default"})
	require.NoError(t, err)
	require.EqualValues(t, 2, dl.GetTotal())
	b.compute.Failing.Store(false)

	// Purge one, retry all (the rest).
	pr, err := b.client.PurgeDeadLetters(ctx, &tandemv1.PurgeDeadLettersRequest{Queue: "default", JobIds: []string{ids[1]}})
	require.NoError(t, err)
	require.EqualValues(t, 1, pr.GetPurged())
	rr, err = b.client.RetryDeadLetters(ctx, &tandemv1.RetryDeadLettersRequest{Queue: "default", All: true})
	require.NoError(t, err)
	require.Equal(t, []string{ids[2]}, rr.GetRetriedJobIds())
	final, _ = waitTerminal(t, b.client, ids[2])
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())

	dl, err = b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: "default"})
	require.NoError(t, err)
	require.EqualValues(t, 0, dl.GetTotal())
	_, err = b.client.RetryDeadLetters(ctx, &tandemv1.RetryDeadLettersRequest{Queue: "default", JobIds: []string{ids[1]}})
	require.Equal(t, "DEAD_LETTER_NOT_FOUND", errInfo(t, err).GetReason())
}

func TestIdempotentConcurrentSubmits(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("once"), IdempotencyKey: "order-42/ä"}
	const n = 16
	var wg sync.WaitGroup
	resps := make([]*tandemv1.SubmitJobResponse, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resps[i], errs[i] = b.client.SubmitJob(ctxT(t), req)
		}()
	}
	wg.Wait()
	fresh := 0
	for i := range n {
		require.NoError(t, errs[i])
		require.Equal(t, resps[0].GetJob().GetId(), resps[i].GetJob().GetId())
		if !resps[i].GetDeduplicated() {
			fresh++
		}
	}
	require.Equal(t, 1, fresh)
	id := resps[0].GetJob().GetId()
	final, _ := waitTerminal(t, b.client, id)
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())

	again, err := b.client.SubmitJob(ctxT(t), req)
	require.NoError(t, err)
	require.True(t, again.GetDeduplicated())
	require.Equal(t, id, again.GetJob().GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, again.GetJob().GetState())
	require.Equal(t, 1, b.compute.Calls(id))

	other := &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("different"), IdempotencyKey: "order-42/ä"}
	_, err = b.client.SubmitJob(ctxT(t), other)
	require.Equal(t, "IDEMPOTENCY_CONFLICT", errInfo(t, err).GetReason())
	require.Equal(t, id, errInfo(t, err).GetMetadata()["job_id"])
}
