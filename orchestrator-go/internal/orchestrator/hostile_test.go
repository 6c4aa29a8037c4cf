package orchestrator_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/orchestrator"
)

// hostileIDs are job ids (and queue names) that must never reach NATS: subject
// wildcards and separators, paths, spaces, control characters, empty, and
// lengths around the limit and past NATS's 4 KiB control line.
func hostileIDs() []string {
	return []string{"*", ">", ".", "a.b", "a.*", "a b", " ", "../..", "../../etc/passwd", "a\x00b", "a\r\nPUB x 1",
		"", strings.Repeat("A", ident.MaxJobID+1), strings.Repeat("A", 4096), strings.Repeat("A", 1<<20)}
}

// requireInvalid checks err is INVALID_ARGUMENT / REQUEST_INVALID naming field
// (a prefix such as "job_ids") with a short message.
func requireInvalid(t *testing.T, err error, field, what string) {
	t.Helper()
	require.Error(t, err, what)
	st := status.Convert(err)
	require.Equal(t, codes.InvalidArgument, st.Code(), "%s: %v", what, err)
	ei := errInfo(t, err)
	require.Equal(t, "REQUEST_INVALID", ei.GetReason(), what)
	require.True(t, strings.HasPrefix(ei.GetMetadata()["field"], field), "%s: field %q", what, ei.GetMetadata()["field"])
	require.Less(t, len(st.Message()), 400, what)
	require.Less(t, proto.Size(st.Proto()), 2048, what)
}

func requireServing(t *testing.T, b *testBundle) {
	t.Helper()
	hc := healthpb.NewHealthClient(b.conn)
	h, err := hc.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: orchestrator.ServiceName})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus())
	require.True(t, b.orc.Broker.Connected())
	require.EqualValues(t, 1, b.orc.Broker.Gen(), "the NATS connection was never replaced")
}

// Every RPC that takes a job id or a queue name answers INVALID_ARGUMENT for
// each hostile value, touches nothing, and leaves the orchestrator serving on
// its first NATS connection.
func TestHostileIdentifiersThroughEveryRPC(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	// One dead letter, which no wildcard may retry or purge.
	dead := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "UNAVAILABLE")}, MaxAttempts: 1})
	final, _ := waitTerminal(t, b.client, dead.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, final.GetState())

	for _, id := range hostileIDs() {
		what := "id " + strconv.Quote(id[:min(len(id), 20)])
		_, err := b.client.GetJob(ctx, &tandemv1.GetJobRequest{JobId: id})
		requireInvalid(t, err, "job_id", "GetJob "+what)
		_, err = b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: id})
		requireInvalid(t, err, "job_id", "CancelJob "+what)
		ws, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{JobIds: []string{dead.GetId(), id}})
		require.NoError(t, err)
		_, err = ws.Recv()
		requireInvalid(t, err, "job_ids[1]", "WatchJobs "+what)
		_, err = b.client.RetryDeadLetters(ctx, &tandemv1.RetryDeadLettersRequest{Queue: "default", JobIds: []string{id}})
		requireInvalid(t, err, "job_ids[0]", "RetryDeadLetters "+what)
		_, err = b.client.PurgeDeadLetters(ctx, &tandemv1.PurgeDeadLettersRequest{Queue: "default", JobIds: []string{id}})
		requireInvalid(t, err, "job_ids[0]", "PurgeDeadLetters "+what)
		if id == "" {
			continue // the empty queue name is the default queue
		}
		_, err = b.client.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Queue: id, Steps: []*tandemv1.Step{step("hash.sha256")}})
		requireInvalid(t, err, "queue", "SubmitJob queue "+what)
		_, err = b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: id})
		requireInvalid(t, err, "queue", "ListDeadLetters queue "+what)
		_, err = b.client.PauseQueue(ctx, &tandemv1.PauseQueueRequest{Queue: id})
		requireInvalid(t, err, "queue", "PauseQueue queue "+what)
		_, err = b.client.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{Queue: id})
		requireInvalid(t, err, "queue", "ResumeQueue queue "+what)
		qs, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{Queue: id})
		require.NoError(t, err)
		_, err = qs.Recv()
		requireInvalid(t, err, "queue", "WatchJobs queue "+what)
	}
	// A well-formed id that does not exist is NOT_FOUND, never retryable.
	_, err := b.client.GetJob(ctx, &tandemv1.GetJobRequest{JobId: strings.Repeat("Z", ident.MaxJobID)})
	require.Equal(t, codes.NotFound, status.Code(err))
	_, err = b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: "01NOSUCHJOB"})
	require.Equal(t, codes.NotFound, status.Code(err))

	// Submit fields: op, param names and values, labels, idempotency key.
	for _, c := range []struct {
		field string
		req   *tandemv1.SubmitJobRequest
	}{
		{"steps[0].op", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{{Op: strings.Repeat("o", 20<<10)}}}},
		{"steps[0].op", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{{Op: "hash.*"}}}},
		{"steps[0].params", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.level", strings.Repeat("p", 1<<20), "1")}}},
		{"steps[0].params[level]", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.level", "level", strings.Repeat("9", 1<<20))}}},
		{"labels", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Labels: map[string]string{"a>": "x"}}},
		{"labels[k]", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Labels: map[string]string{"k": strings.Repeat("v", 1<<16)}}},
		{"idempotency_key", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, IdempotencyKey: strings.Repeat("k", ident.MaxIdempotencyKey+1)}},
		{"idempotency_key", &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, IdempotencyKey: "a\nb"}},
	} {
		_, err := b.client.SubmitJob(ctx, c.req)
		requireInvalid(t, err, c.field, "SubmitJob "+c.field)
		resp, err := b.client.SubmitJobs(ctx, &tandemv1.SubmitJobsRequest{Jobs: []*tandemv1.SubmitJobRequest{c.req}})
		require.NoError(t, err)
		e := resp.GetResults()[0].GetError()
		require.Equal(t, tandemv1.ErrorReason_REQUEST_INVALID, e.GetReason(), c.field)
		require.Less(t, len(e.GetMessage()), 400)
	}
	// An unknown but well-formed op names itself briefly.
	_, err = b.client.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{{Op: strings.Repeat("o", ident.MaxOp)}}})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Equal(t, "UNKNOWN_OP", errInfo(t, err).GetReason())
	require.Less(t, len(status.Convert(err).Message()), 200)

	// Nothing was touched: the dead letter is still there, untouched.
	dl, err := b.client.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: "default"})
	require.NoError(t, err)
	require.EqualValues(t, 1, dl.GetTotal())
	require.Equal(t, dead.GetId(), dl.GetJobs()[0].GetId())
	got, err := b.client.GetJob(ctx, &tandemv1.GetJobRequest{JobId: dead.GetId()})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, got.GetJob().GetState())

	// And the service is healthy on its first connection, and still works.
	requireServing(t, b)
	ok := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("x")})
	fin, _ := waitTerminal(t, b.client, ok.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState())
}

// Whatever closes the NATS connection for good (here: a protocol line over
// the server's max_control_line, the failure a 4 KiB job id used to cause),
// the orchestrator opens a new one, watches resume, and jobs run again.
func TestClosedNATSConnectionIsReplaced(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.natsURL = startNATS(t) })
	ctx := ctxT(t)
	old := b.orc.Broker.NC()
	require.EqualValues(t, 1, b.orc.Broker.Gen())
	// A job that waits across the replacement.
	block := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.sleep", "ms", "1500")}})
	ws, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{JobIds: []string{block.GetId()}})
	require.NoError(t, err)
	_, err = ws.Recv()
	require.NoError(t, err)

	require.NoError(t, old.Publish(strings.Repeat("x", 5000), []byte("boom")))
	_ = old.Flush()
	require.Eventually(t, old.IsClosed, 10*time.Second, 10*time.Millisecond, "the server closes the connection")
	require.Eventually(t, func() bool { return b.orc.Broker.Gen() >= 2 && b.orc.Broker.Connected() }, 20*time.Second, 20*time.Millisecond)
	hc := healthpb.NewHealthClient(b.conn)
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: orchestrator.ServiceName})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 10*time.Second, 50*time.Millisecond)

	// The old watch ends with a retryable status (or finishes if the job got
	// through first); a new watch sees the job to the end.
	for {
		r, err := ws.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			require.Equal(t, codes.Unavailable, status.Code(err), "watch across a replaced connection: %v", err)
			break
		}
		if r.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
			break
		}
	}
	fin, _ := waitTerminal(t, b.client, block.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState())
	after := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("y")})
	fin, _ = waitTerminal(t, b.client, after.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState())
	// Cancel notices are subscribed on the new connection too.
	long := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.block")}})
	require.Equal(t, long.GetId(), <-b.compute.Started)
	_, err = b.client.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: long.GetId()})
	require.NoError(t, err)
	// test.block returns only when its call is cancelled: the worker lets go.
	require.Eventually(t, func() bool {
		q, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
		return err == nil && q.GetQueues()[0].GetInFlight() == 0
	}, 10*time.Second, 20*time.Millisecond, "the running call was not cancelled on the new connection")
}

// An orchestrator started before its broker listens, reports NOT_SERVING
// (and UNAVAILABLE / BROKER_UNAVAILABLE to JobService calls) while it keeps
// connecting, then serves once NATS is up.
func TestStartBeforeBroker(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	qs, err := config.NormalizeQueues([]config.Queue{testQueue(config.DefaultQueue)})
	require.NoError(t, err)
	compute := computetest.Start(t)
	cfg := &config.Config{Listen: "127.0.0.1:0", Compute: []string{compute.Addr}, NATSURL: url, DataDir: t.TempDir(),
		Durability: config.DurabilityInterval, DrainTimeout: time.Second, MaxMessageBytes: 65 << 20, StreamReplicas: 1, Queues: qs}
	orc, err := orchestrator.Start(context.Background(), orchestrator.Options{Config: cfg, Logger: testLogger(), BreakerOpenFor: 200 * time.Millisecond})
	require.NoError(t, err, "an orchestrator whose broker is not up yet starts anyway")
	t.Cleanup(func() { orc.Shutdown(time.Second) })
	conn, err := grpc.NewClient(orc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	client := tandemv1.NewJobServiceClient(conn)
	hc := healthpb.NewHealthClient(conn)
	ctx := ctxT(t)
	h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, h.GetStatus())
	_, err = client.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}})
	require.Equal(t, codes.Unavailable, status.Code(err))
	require.Equal(t, "BROKER_UNAVAILABLE", errInfo(t, err).GetReason())

	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true, MaxPayload: 8 << 20})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 30*time.Second, 50*time.Millisecond)
	resp, err := client.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("z")})
	require.NoError(t, err)
	fin, _ := waitTerminal(t, client, resp.GetJob().GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState())
}
