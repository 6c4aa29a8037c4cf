package orchestrator_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// The inline limit follows the server's max_payload: 2 MiB on the embedded
// server (8 MiB), so a 1 MiB payload and result stay inline (no object).
func TestInlineLimitFollowsMaxPayload(t *testing.T) {
	t.Parallel()
	b := setup(t)
	require.Equal(t, 2<<20, b.orc.Store.InlineLimit)
	payload := make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: payload})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, payload, final.GetResult())
	ctx := ctxT(t)
	e, err := b.orc.Broker.Jobs().Get(ctx, job.GetId())
	require.NoError(t, err)
	rec := &tandemv1.Job{}
	require.NoError(t, proto.Unmarshal(e.Value(), rec))
	require.Equal(t, payload, rec.GetResult(), "result inline in the record")
	_, err = b.orc.Broker.Payloads().GetInfo(ctx, jobstore.PayloadObject(job.GetId()))
	require.Error(t, err, "no payload object")

	// An external server with the default max_payload (1 MiB): 256 KiB.
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	small := startOrchestrator(t, setupOpts{natsURL: ns.ClientURL()})
	require.Equal(t, 256<<10, small.orc.Store.InlineLimit)
	job = submit(t, small.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: payload})
	final, _ = waitTerminal(t, small.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, payload, final.GetResult())
}

// A submit never answers with result bytes, even when the job it returns has
// already finished (idempotent re-submit, or a worker that wrote first).
func TestSubmitAnswerCarriesNoResult(t *testing.T) {
	t.Parallel()
	b := setup(t)
	req := &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: make([]byte, 100<<10), IdempotencyKey: "no-result"}
	job := submit(t, b.client, req)
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Len(t, final.GetResult(), 100<<10)
	again := submit(t, b.client, req)
	require.Equal(t, job.GetId(), again.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, again.GetState())
	require.Empty(t, again.GetResult())
	r, err := b.client.SubmitJobs(ctxT(t), &tandemv1.SubmitJobsRequest{Jobs: []*tandemv1.SubmitJobRequest{req}})
	require.NoError(t, err)
	require.True(t, r.GetResults()[0].GetSubmitted().GetDeduplicated())
	require.Empty(t, r.GetResults()[0].GetSubmitted().GetJob().GetResult())
}
