package orchestrator_test

import (
	"crypto/sha256"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

func TestLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t)
	payload := []byte("hello tandem")
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: payload, Labels: map[string]string{"k": "v"}})
	require.Equal(t, tandemv1.JobState_JOB_STATE_QUEUED, job.GetState())
	require.Equal(t, "default", job.GetQueue())
	require.NotEmpty(t, job.GetId())

	final, states := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "states %v", states)
	want := sha256.Sum256(payload)
	require.Equal(t, want[:], final.GetResult())
	require.EqualValues(t, 1, final.GetAttempt())
	require.Len(t, final.GetAttempts(), 1)
	require.Nil(t, final.GetAttempts()[0].GetError())
	require.NotNil(t, final.GetFinishedAt())

	got, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId()})
	require.NoError(t, err)
	require.Empty(t, got.GetJob().GetResult(), "no result bytes unless asked")
	require.EqualValues(t, 32, got.GetJob().GetResultSize())
	require.Equal(t, "v", got.GetJob().GetLabels()["k"])
	got, err = b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId(), IncludeResult: true})
	require.NoError(t, err)
	require.Equal(t, want[:], got.GetJob().GetResult())
	require.Equal(t, 1, b.compute.Calls(job.GetId()))

	h, err := healthpb.NewHealthClient(b.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{Service: "tandem.v1.JobService"})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus())

	_, err = b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: "nope"})
	require.Equal(t, codes.NotFound, status.Code(err))
	require.Equal(t, "JOB_NOT_FOUND", errInfo(t, err).GetReason())
}

func TestLargePayloadAndResultUseObjectStore(t *testing.T) {
	t.Parallel()
	b := setup(t)
	payload := make([]byte, 3<<20)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: payload})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, payload, final.GetResult())
	require.EqualValues(t, len(payload), final.GetResultSize())
}

func TestValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	cases := []struct {
		name   string
		req    *tandemv1.SubmitJobRequest
		code   codes.Code
		reason string
		meta   map[string]string
		msg    string
	}{
		{"unknown op", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("nope.op")}}, codes.InvalidArgument, "UNKNOWN_OP", map[string]string{"step": "0", "op": "nope.op"}, `step 0: unknown op "nope.op"`},
		{"param out of range", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo"), step("test.level", "level", "40")}}, codes.InvalidArgument, "PARAM_OUT_OF_RANGE", map[string]string{"step": "1", "param": "level"}, `step 1 (test.level): param "level" = 40 is out of range [1, 22]`},
		{"unknown param", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo", "x", "1")}}, codes.InvalidArgument, "PARAM_INVALID", map[string]string{"param": "x"}, ""},
		{"missing param", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.sleep")}}, codes.InvalidArgument, "PARAM_INVALID", map[string]string{"param": "ms"}, ""},
		{"no steps", &tandemv1.SubmitJobRequest{}, codes.InvalidArgument, "REQUEST_INVALID", map[string]string{"field": "steps"}, ""},
		{"unknown queue", &tandemv1.SubmitJobRequest{Queue: "nope", Steps: []*tandemv1.Step{step("test.echo")}}, codes.NotFound, "QUEUE_NOT_FOUND", map[string]string{"queue": "nope"}, ""},
		{"too many attempts", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, MaxAttempts: 1000}, codes.InvalidArgument, "REQUEST_INVALID", map[string]string{"field": "max_attempts"}, ""},
	}
	for _, tc := range cases {
		_, err := b.client.SubmitJob(ctx, tc.req)
		require.Equal(t, tc.code, status.Code(err), tc.name)
		ei := errInfo(t, err)
		require.Equal(t, tc.reason, ei.GetReason(), tc.name)
		require.Equal(t, "tandem.dev", ei.GetDomain())
		for k, v := range tc.meta {
			require.Equal(t, v, ei.GetMetadata()[k], "%s: metadata %s", tc.name, k)
		}
		if tc.msg != "" {
			require.Equal(t, tc.msg, status.Convert(err).Message(), tc.name)
		}
	}
}

func TestTraceContextReachesCompute(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "traceparent", tp)
	r, err := b.client.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	require.NoError(t, err)
	waitTerminal(t, b.client, r.GetJob().GetId())
	require.Equal(t, tp, b.compute.Traceparent(r.GetJob().GetId()))
	// Without one, a new trace is started.
	j := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}})
	waitTerminal(t, b.client, j.GetId())
	require.Regexp(t, `^00-[0-9a-f]{32}-[0-9a-f]{16}-01$`, b.compute.Traceparent(j.GetId()))
}

func TestTerminalRecordsExpireWithResultTTL(t *testing.T) {
	t.Parallel()
	q := testQueue("default")
	q.ResultTTL = time.Second
	b := setup(t, func(o *setupOpts) { o.queues = []config.Queue{q} })
	req := &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, IdempotencyKey: "ttl"}
	job := submit(t, b.client, req)
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Eventually(t, func() bool {
		_, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId()})
		return status.Code(err) == codes.NotFound
	}, 15*time.Second, 50*time.Millisecond)
	// The idempotency key expired with it: the same key makes a new job
	// (with the same id: ids of keyed submits derive from the key), which
	// runs again.
	again, err := b.client.SubmitJob(ctxT(t), req)
	require.NoError(t, err)
	require.False(t, again.GetDeduplicated())
	final, _ = waitTerminal(t, b.client, again.GetJob().GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, 2, b.compute.Calls(job.GetId()))
}
