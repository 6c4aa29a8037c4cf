package orchestrator_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/orchestrator"
	"github.com/tandem/tandem/orchestrator-go/internal/tokencmd"
)

// tokenCLI runs `tandem-orchestrator token ARGS --nats-url URL` through the
// command's own code and returns its stdout; it fails the test on a non-zero exit.
func tokenCLI(t *testing.T, natsURL string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{args[0], "--nats-url", natsURL}, args[1:]...)
	code := tokencmd.Run(full, func(string) string { return "" }, &out, &errb)
	require.Equal(t, 0, code, "token %v: %s", args, errb.String())
	return strings.TrimSpace(out.String())
}

// withToken is ctx carrying `authorization: Bearer tok`.
func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
}

// requireReason checks err's code and ErrorInfo reason (and metadata kv).
func requireReason(t *testing.T, err error, code codes.Code, reason string, kv ...string) {
	t.Helper()
	require.Error(t, err, "want %s", reason)
	require.Equal(t, code, status.Code(err), "%v", err)
	ei := errInfo(t, err)
	require.Equal(t, reason, ei.GetReason(), "%v", err)
	for i := 0; i+1 < len(kv); i += 2 {
		require.Equal(t, kv[i+1], ei.GetMetadata()[kv[i]], "metadata %s of %v", kv[i], err)
	}
}

// authQueues are two queues, so scopes per queue can be told apart.
func authQueues() []config.Queue { return []config.Queue{testQueue("a"), testQueue("b")} }

func setupAuth(t *testing.T, natsURL string, opts ...func(*setupOpts)) *testBundle {
	t.Helper()
	return setup(t, append([]func(*setupOpts){func(o *setupOpts) {
		o.natsURL, o.auth, o.queues = natsURL, true, authQueues()
	}}, opts...)...)
}

// waitAccepted polls until the orchestrator's token cache holds tok.
func waitAccepted(t *testing.T, c tandemv1.JobServiceClient, tok string) {
	t.Helper()
	require.Eventually(t, func() bool {
		_, err := c.ListWorkers(withToken(ctxT(t), tok), &tandemv1.ListWorkersRequest{})
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "the token is accepted")
}

func fakeSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// rawCall sends one unary gRPC call over plain HTTP/2 with the given
// authorization value as raw bytes (grpc-go's client refuses to send
// non-printable metadata, a hostile client does not) and returns its
// grpc-status and grpc-message.
func rawCall(t *testing.T, addr, method, authorization string) (string, string) {
	t.Helper()
	protos := new(http.Protocols)
	protos.SetUnencryptedHTTP2(true) // h2c, as grpc-go serves without TLS
	tr := &http.Transport{Protocols: protos}
	defer tr.CloseIdleConnections()
	frame := make([]byte, 5) // an empty message: no compression, length 0
	binary.BigEndian.PutUint32(frame[1:], 0)
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, "http://"+addr+method, bytes.NewReader(frame))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	req.Header["Authorization"] = []string{authorization}
	resp, err := tr.RoundTrip(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if s := resp.Header.Get("Grpc-Status"); s != "" {
		return s, resp.Header.Get("Grpc-Message")
	}
	return resp.Trailer.Get("Grpc-Status"), resp.Trailer.Get("Grpc-Message")
}

// With --auth, every JobService call without a usable token is refused with
// UNAUTHENTICATED (TOKEN_EXPIRED for an expired one), whatever is wrong with
// the metadata, and the orchestrator keeps serving on its first connection.
func TestAuthRefusesBadCredentials(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	b := setupAuth(t, url)
	ctx := ctxT(t)
	good := tokenCLI(t, url, "create", "--id", "good", "--queue", "a", "--scope", "read,submit")
	expired := tokenCLI(t, url, "create", "--id", "old", "--queue", "a", "--read-only", "--expires", "1ns")
	revoked := tokenCLI(t, url, "create", "--id", "gone", "--queue", "a", "--read-only")
	waitAccepted(t, b.client, good)
	waitAccepted(t, b.client, revoked)
	tokenCLI(t, url, "revoke", "gone")

	list := func(ctx context.Context) error {
		_, err := b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
		return err
	}
	require.Eventually(t, func() bool { return status.Code(list(withToken(ctx, revoked))) == codes.Unauthenticated },
		10*time.Second, 20*time.Millisecond, "the revoked token is refused")
	requireReason(t, list(withToken(ctx, revoked)), codes.Unauthenticated, "UNAUTHENTICATED")
	requireReason(t, list(withToken(ctx, expired)), codes.Unauthenticated, "TOKEN_EXPIRED")

	id, _, _ := strings.Cut(strings.TrimPrefix(good, "tdm_"), "_")
	bad := map[string]context.Context{
		"no metadata":  ctx,
		"empty":        metadata.AppendToOutgoingContext(ctx, "authorization", ""),
		"Bearer empty": metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "),
		"not Bearer":   metadata.AppendToOutgoingContext(ctx, "authorization", "Basic "+good),
		"no scheme":    metadata.AppendToOutgoingContext(ctx, "authorization", good),
		"8 KiB":        withToken(ctx, "tdm_"+id+"_"+strings.Repeat("A", 8<<10)),
		"two values":   metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+good, "authorization", "Bearer "+good),
		"binary key":   metadata.AppendToOutgoingContext(ctx, "authorization-bin", "Bearer "+good),
		"not tdm_":     withToken(ctx, "abc_"+id+"_"+fakeSecret()),
		"short secret": withToken(ctx, "tdm_"+id+"_abc"),
		"wrong secret": withToken(ctx, "tdm_"+id+"_"+fakeSecret()),
		"unknown id":   withToken(ctx, "tdm_nobody_"+fakeSecret()),
		"bad id":       withToken(ctx, "tdm_a.b*_"+fakeSecret()),
		"secret typo":  withToken(ctx, good[:len(good)-1]+"!"),
	}
	for what, c := range bad {
		err := list(c)
		requireReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")
		require.NotContains(t, status.Convert(err).Message(), good[len(good)-43:], "%s: no secret in the message", what)
		_, err = b.client.SubmitJob(c, &tandemv1.SubmitJobRequest{Queue: "a", Steps: []*tandemv1.Step{step("test.echo")}})
		requireReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")
		ws, err := b.client.WatchJobs(c, &tandemv1.WatchJobsRequest{Queue: "a"})
		require.NoError(t, err)
		_, err = ws.Recv()
		requireReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")
	}
	// Raw bytes no gRPC client library would send.
	for _, v := range []string{"Bearer tdm_\x80\xff\xfe_" + fakeSecret(), "\xff\xfe\xfd", "Bearer " + strings.Repeat("\x80", 8<<10)} {
		code, msg := rawCall(t, b.orc.Addr(), "/tandem.v1.JobService/ListQueues", v)
		require.Equal(t, "16", code, "grpc-status UNAUTHENTICATED (%s)", msg)
		require.Contains(t, msg, "authorization", "refused by the token check")
	}
	_, err := tandemv1.NewComputeServiceClient(b.conn).ListOps(ctx, &tandemv1.ListOpsRequest{})
	requireReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")

	// Health and reflection stay open; the good token works; still the first connection.
	h, err := healthpb.NewHealthClient(b.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: orchestrator.ServiceName})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, h.GetStatus())
	require.NoError(t, list(withToken(ctx, good)))
	_, err = tandemv1.NewComputeServiceClient(b.conn).ListOps(withToken(ctx, good), &tandemv1.ListOpsRequest{})
	require.NoError(t, err, "ComputeService needs any valid token")
	_, err = b.client.SubmitJob(withToken(ctx, good), &tandemv1.SubmitJobRequest{Queue: "a", Steps: []*tandemv1.Step{step("test.echo")}})
	require.NoError(t, err)
	requireServing(t, b)
}

// Every RPC against every kind of token: what each scope allows, what it
// refuses (PERMISSION_DENIED naming scope and queue), and jobs of queues a
// token cannot read answering NOT_FOUND as if they did not exist.
func TestAuthScopeMatrix(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	b := setupAuth(t, url)
	ctx := ctxT(t)
	tok := map[string]string{
		"sub":  tokenCLI(t, url, "create", "--id", "sub", "--queue", "a", "--scope", "submit"),
		"rd":   tokenCLI(t, url, "create", "--id", "rd", "--queue", "a", "--read-only"),
		"can":  tokenCLI(t, url, "create", "--id", "can", "--queue", "a", "--scope", "read,cancel"),
		"adm":  tokenCLI(t, url, "create", "--id", "adm", "--queue", "a", "--scope", "admin"),
		"root": tokenCLI(t, url, "create", "--id", "root", "--all-queues", "--scope", "submit,read,cancel,admin"),
	}
	for _, v := range tok {
		waitAccepted(t, b.client, v)
	}
	as := func(who string) context.Context { return withToken(ctx, tok[who]) }
	c := b.client
	denied := func(err error, scope, queue string) {
		t.Helper()
		requireReason(t, err, codes.PermissionDenied, "PERMISSION_DENIED", "scope", scope, "queue", queue)
	}
	notFound := func(err error) {
		t.Helper()
		requireReason(t, err, codes.NotFound, "JOB_NOT_FOUND")
	}
	echo := []*tandemv1.Step{step("test.echo")}

	// Queue a paused, so its jobs stay QUEUED for cancel.
	_, err := c.PauseQueue(as("root"), &tandemv1.PauseQueueRequest{Queue: "a"})
	require.NoError(t, err)

	// SubmitJob / SubmitJobs: submit on the queue.
	r, err := c.SubmitJob(as("sub"), &tandemv1.SubmitJobRequest{Queue: "a", Steps: echo})
	require.NoError(t, err)
	jobA := r.GetJob().GetId()
	for _, who := range []string{"rd", "can", "adm"} {
		_, err = c.SubmitJob(as(who), &tandemv1.SubmitJobRequest{Queue: "a", Steps: echo})
		denied(err, "submit", "a")
	}
	_, err = c.SubmitJob(as("sub"), &tandemv1.SubmitJobRequest{Queue: "b", Steps: echo})
	denied(err, "submit", "b")
	_, err = c.SubmitJob(as("sub"), &tandemv1.SubmitJobRequest{Steps: echo})
	denied(err, "submit", "default")
	br, err := c.SubmitJobs(as("sub"), &tandemv1.SubmitJobsRequest{Jobs: []*tandemv1.SubmitJobRequest{{Queue: "a", Steps: echo}, {Queue: "b", Steps: echo}}})
	require.NoError(t, err)
	require.NotEmpty(t, br.GetResults()[0].GetSubmitted().GetJob().GetId())
	require.Equal(t, tandemv1.ErrorReason_PERMISSION_DENIED, br.GetResults()[1].GetError().GetReason())
	require.Equal(t, "b", br.GetResults()[1].GetError().GetMetadata()["queue"])
	r, err = c.SubmitJob(as("root"), &tandemv1.SubmitJobRequest{Queue: "b", Steps: echo})
	require.NoError(t, err)
	jobB := r.GetJob().GetId()

	// GetJob: read; a job of an unreadable queue does not exist.
	for _, who := range []string{"rd", "can", "root"} {
		_, err = c.GetJob(as(who), &tandemv1.GetJobRequest{JobId: jobA})
		require.NoError(t, err, who)
	}
	for _, who := range []string{"sub", "adm"} {
		_, err = c.GetJob(as(who), &tandemv1.GetJobRequest{JobId: jobA})
		notFound(err)
	}
	_, err = c.GetJob(as("rd"), &tandemv1.GetJobRequest{JobId: jobB})
	notFound(err)
	_, err = c.GetJob(as("rd"), &tandemv1.GetJobRequest{JobId: "01NOSUCHJOB0000000000000000"})
	notFound(err)

	// WatchJobs: by ids, each id; by queue, read on it.
	watchFirst := func(ctx context.Context, req *tandemv1.WatchJobsRequest) error {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ws, err := c.WatchJobs(wctx, req)
		if err != nil {
			return err
		}
		if len(req.GetJobIds()) == 0 {
			_, err = ws.Header() // sent once the queue watch is subscribed
			if err == nil {
				cancel()
				_, err = ws.Recv()
				if status.Code(err) == codes.Canceled {
					return nil
				}
			}
			return err
		}
		_, err = ws.Recv()
		return err
	}
	require.NoError(t, watchFirst(as("rd"), &tandemv1.WatchJobsRequest{JobIds: []string{jobA}}))
	notFound(watchFirst(as("sub"), &tandemv1.WatchJobsRequest{JobIds: []string{jobA}}))
	notFound(watchFirst(as("rd"), &tandemv1.WatchJobsRequest{JobIds: []string{jobA, jobB}}))
	require.NoError(t, watchFirst(as("rd"), &tandemv1.WatchJobsRequest{Queue: "a"}))
	denied(watchFirst(as("sub"), &tandemv1.WatchJobsRequest{Queue: "a"}), "read", "a")
	denied(watchFirst(as("rd"), &tandemv1.WatchJobsRequest{Queue: "b"}), "read", "b")

	// CancelJob: readable but no cancel → PERMISSION_DENIED; unreadable → NOT_FOUND.
	_, err = c.CancelJob(as("rd"), &tandemv1.CancelJobRequest{JobId: jobA})
	denied(err, "cancel", "a")
	_, err = c.CancelJob(as("sub"), &tandemv1.CancelJobRequest{JobId: jobA})
	notFound(err)
	_, err = c.CancelJob(as("can"), &tandemv1.CancelJobRequest{JobId: jobB})
	notFound(err)
	cr, err := c.CancelJob(as("can"), &tandemv1.CancelJobRequest{JobId: jobA})
	require.NoError(t, err)
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, cr.GetJob().GetState())

	// Dead letters: read lists, admin retries and purges.
	_, err = c.ListDeadLetters(as("rd"), &tandemv1.ListDeadLettersRequest{Queue: "a"})
	require.NoError(t, err)
	for _, who := range []string{"sub", "adm"} {
		_, err = c.ListDeadLetters(as(who), &tandemv1.ListDeadLettersRequest{Queue: "a"})
		denied(err, "read", "a")
	}
	_, err = c.RetryDeadLetters(as("adm"), &tandemv1.RetryDeadLettersRequest{Queue: "a", All: true})
	require.NoError(t, err)
	_, err = c.PurgeDeadLetters(as("adm"), &tandemv1.PurgeDeadLettersRequest{Queue: "a", All: true})
	require.NoError(t, err)
	for _, who := range []string{"rd", "can", "sub"} {
		_, err = c.RetryDeadLetters(as(who), &tandemv1.RetryDeadLettersRequest{Queue: "a", All: true})
		denied(err, "admin", "a")
		_, err = c.PurgeDeadLetters(as(who), &tandemv1.PurgeDeadLettersRequest{Queue: "a", All: true})
		denied(err, "admin", "a")
	}
	_, err = c.RetryDeadLetters(as("adm"), &tandemv1.RetryDeadLettersRequest{Queue: "b", All: true})
	denied(err, "admin", "b")

	// Pause / resume: admin.
	for _, who := range []string{"rd", "can", "sub"} {
		_, err = c.PauseQueue(as(who), &tandemv1.PauseQueueRequest{Queue: "a"})
		denied(err, "admin", "a")
		_, err = c.ResumeQueue(as(who), &tandemv1.ResumeQueueRequest{Queue: "a"})
		denied(err, "admin", "a")
	}
	_, err = c.ResumeQueue(as("adm"), &tandemv1.ResumeQueueRequest{Queue: "a"})
	require.NoError(t, err)
	_, err = c.PauseQueue(as("adm"), &tandemv1.PauseQueueRequest{Queue: "b"})
	denied(err, "admin", "b")

	// ListQueues lists the readable queues.
	names := func(who string) []string {
		qs, err := c.ListQueues(as(who), &tandemv1.ListQueuesRequest{})
		require.NoError(t, err)
		var out []string
		for _, q := range qs.GetQueues() {
			out = append(out, q.GetName())
		}
		return out
	}
	require.Equal(t, []string{"a"}, names("rd"))
	require.Empty(t, names("sub"))
	require.Equal(t, []string{"a", "b", "default"}, names("root"))

	// ListJobs: a queue needs read on it; no queue lists the readable ones.
	lj, err := c.ListJobs(as("rd"), &tandemv1.ListJobsRequest{})
	require.NoError(t, err)
	require.NotEmpty(t, lj.GetJobs())
	for _, j := range lj.GetJobs() {
		require.Equal(t, "a", j.GetQueue())
	}
	lj, err = c.ListJobs(as("root"), &tandemv1.ListJobsRequest{})
	require.NoError(t, err)
	require.Contains(t, func() []string {
		var ids []string
		for _, j := range lj.GetJobs() {
			ids = append(ids, j.GetId())
		}
		return ids
	}(), jobB)
	_, err = c.ListJobs(as("rd"), &tandemv1.ListJobsRequest{Queue: "b"})
	denied(err, "read", "b")
	lj, err = c.ListJobs(as("sub"), &tandemv1.ListJobsRequest{})
	require.NoError(t, err)
	require.Empty(t, lj.GetJobs())

	// ListWorkers: any valid token. ListAudit: admin on every queue.
	_, err = c.ListWorkers(as("sub"), &tandemv1.ListWorkersRequest{})
	require.NoError(t, err)
	_, err = c.ListAudit(as("adm"), &tandemv1.ListAuditRequest{})
	denied(err, "admin", "*")
	_, err = c.ListAudit(as("root"), &tandemv1.ListAuditRequest{})
	require.NoError(t, err)
}

// A token revoked with `tandem-orchestrator token revoke` stops working
// within seconds on every orchestrator sharing the NATS, with no restart.
func TestAuthRevokeReachesSecondOrchestrator(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	one := setupAuth(t, url, func(o *setupOpts) { o.worker = "one" })
	two := setupAuth(t, url, func(o *setupOpts) { o.worker = "two" })
	tok := tokenCLI(t, url, "create", "--id", "ci", "--queue", "a", "--read-only")
	waitAccepted(t, one.client, tok)
	waitAccepted(t, two.client, tok)
	require.Contains(t, tokenCLI(t, url, "list"), "ci")
	require.NotContains(t, tokenCLI(t, url, "list"), tok[len(tok)-43:], "list never prints a secret")

	tokenCLI(t, url, "revoke", "ci")
	revokedAt := time.Now()
	for _, b := range []*testBundle{two, one} {
		require.Eventually(t, func() bool {
			_, err := b.client.ListQueues(withToken(ctxT(t), tok), &tandemv1.ListQueuesRequest{})
			return status.Code(err) == codes.Unauthenticated
		}, 10*time.Second, 10*time.Millisecond, "the revoked token is refused")
	}
	t.Logf("refused by both %s after the revoke", time.Since(revokedAt))
	_, err := two.client.ListQueues(withToken(ctxT(t), tok), &tandemv1.ListQueuesRequest{})
	requireReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")
	require.NotContains(t, tokenCLI(t, url, "list"), "ci")
	var out, errb bytes.Buffer
	require.Equal(t, 1, tokencmd.Run([]string{"revoke", "--nats-url", url, "ci"}, func(string) string { return "" }, &out, &errb))
	require.Contains(t, errb.String(), "no such token")
}

// The token commands refuse bad input with a message naming the flag.
func TestTokenCommandInput(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "--queue", "a", "--read-only"}, "--id is required"},
		{[]string{"create", "--id", "a_b", "--queue", "a", "--read-only"}, "--id"},
		{[]string{"create", "--id", "x", "--read-only"}, "--queue Q1,Q2 or --all-queues"},
		{[]string{"create", "--id", "x", "--queue", "a"}, "--scope"},
		{[]string{"create", "--id", "x", "--queue", "a", "--scope", "write"}, `unknown scope "write"`},
		{[]string{"create", "--id", "x", "--queue", "a.b", "--read-only"}, "--queue"},
		{[]string{"create", "--id", "x", "--queue", "a", "--all-queues", "--read-only"}, "not both"},
		{[]string{"create", "--id", "x", "--queue", "a", "--read-only", "--scope", "read"}, "not both"},
		{[]string{"revoke"}, "exactly one token id"},
		{[]string{"frob"}, "unknown command"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{tc.args[0], "--nats-url", url}, tc.args[1:]...)
		code := tokencmd.Run(args, func(string) string { return "" }, &out, &errb)
		require.Equal(t, 2, code, "%v: %s", tc.args, errb.String())
		require.Contains(t, errb.String(), tc.want, "%v", tc.args)
		require.Empty(t, out.String(), "%v: nothing on stdout", tc.args)
	}
	tokenCLI(t, url, "create", "--id", "x", "--queue", "a", "--read-only")
	var out, errb bytes.Buffer
	require.Equal(t, 1, tokencmd.Run([]string{"create", "--nats-url", url, "--id", "x", "--queue", "a", "--read-only"}, func(string) string { return "" }, &out, &errb))
	require.Contains(t, errb.String(), "token id exists")
	require.Empty(t, out.String())
}

// auditEntries reads the whole trail through ListAudit, page by page.
func auditEntries(t *testing.T, c tandemv1.JobServiceClient, ctx context.Context, req *tandemv1.ListAuditRequest) []*tandemv1.AuditEntry {
	t.Helper()
	var out []*tandemv1.AuditEntry
	for {
		r, err := c.ListAudit(ctx, req)
		require.NoError(t, err)
		out = append(out, r.GetEntries()...)
		if len(r.GetEntries()) == 0 || r.GetLastSeq() == req.GetAfterSeq() {
			return out
		}
		req = proto.Clone(req).(*tandemv1.ListAuditRequest)
		req.AfterSeq = r.GetLastSeq()
	}
}

func findEntry(es []*tandemv1.AuditEntry, actor, action, code string) *tandemv1.AuditEntry {
	for _, e := range es {
		if e.GetActor() == actor && e.GetAction() == action && e.GetCode() == code {
			return e
		}
	}
	return nil
}

// Every state-changing call, allowed or denied, and every token change
// leaves an audit entry with the caller's identity, read back through
// ListAudit with its filters.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	b := setupAuth(t, url)
	ctx := ctxT(t)
	root := tokenCLI(t, url, "create", "--id", "root", "--all-queues", "--scope", "submit,read,cancel,admin")
	rd := tokenCLI(t, url, "create", "--id", "rd", "--queue", "a", "--read-only")
	waitAccepted(t, b.client, root)
	waitAccepted(t, b.client, rd)
	c, as, asRd := b.client, withToken(ctx, root), withToken(ctx, rd)
	echo := []*tandemv1.Step{step("test.echo")}

	_, err := c.PauseQueue(as, &tandemv1.PauseQueueRequest{Queue: "a"})
	require.NoError(t, err)
	j, err := c.SubmitJob(as, &tandemv1.SubmitJobRequest{Queue: "a", Steps: echo})
	require.NoError(t, err)
	batch := make([]*tandemv1.SubmitJobRequest, 150)
	for i := range batch {
		batch[i] = &tandemv1.SubmitJobRequest{Queue: "b", Steps: echo}
	}
	_, err = c.SubmitJobs(as, &tandemv1.SubmitJobsRequest{Jobs: batch})
	require.NoError(t, err)
	_, err = c.CancelJob(as, &tandemv1.CancelJobRequest{JobId: j.GetJob().GetId()})
	require.NoError(t, err)
	_, err = c.ResumeQueue(as, &tandemv1.ResumeQueueRequest{Queue: "a"})
	require.NoError(t, err)
	_, err = c.RetryDeadLetters(as, &tandemv1.RetryDeadLettersRequest{Queue: "a", All: true})
	require.NoError(t, err)
	_, err = c.PurgeDeadLetters(as, &tandemv1.PurgeDeadLettersRequest{Queue: "a", All: true})
	require.NoError(t, err)
	_, err = c.PauseQueue(asRd, &tandemv1.PauseQueueRequest{Queue: "a"})
	require.Equal(t, codes.PermissionDenied, status.Code(err))
	_, err = c.CancelJob(asRd, &tandemv1.CancelJobRequest{JobId: j.GetJob().GetId()})
	require.Equal(t, codes.PermissionDenied, status.Code(err))
	_, err = c.SubmitJob(withToken(ctx, "tdm_mallory_"+fakeSecret()), &tandemv1.SubmitJobRequest{Queue: "a", Steps: echo})
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	tokenCLI(t, url, "revoke", "rd")
	// Reads are not audited.
	_, err = c.ListQueues(as, &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)

	var es []*tandemv1.AuditEntry
	require.Eventually(t, func() bool {
		es = auditEntries(t, c, as, &tandemv1.ListAuditRequest{})
		return findEntry(es, "anonymous", "SubmitJob", "UNAUTHENTICATED") != nil && findEntry(es, tokencmd.Actor(), "token.revoke", "OK") != nil
	}, 10*time.Second, 50*time.Millisecond, "the trail holds the last calls (async publish)")
	for _, want := range []struct{ actor, action, code, queue string }{
		{"token:root", "PauseQueue", "OK", "a"},
		{"token:root", "SubmitJob", "OK", "a"},
		{"token:root", "SubmitJobs", "OK", "b"},
		{"token:root", "CancelJob", "OK", "a"},
		{"token:root", "ResumeQueue", "OK", "a"},
		{"token:root", "RetryDeadLetters", "OK", "a"},
		{"token:root", "PurgeDeadLetters", "OK", "a"},
		{"token:rd", "PauseQueue", "PERMISSION_DENIED", "a"},
		{"token:rd", "CancelJob", "PERMISSION_DENIED", "a"},
		{"anonymous", "SubmitJob", "UNAUTHENTICATED", "a"},
		{tokencmd.Actor(), "token.create", "OK", ""},
		{tokencmd.Actor(), "token.revoke", "OK", ""},
	} {
		e := findEntry(es, want.actor, want.action, want.code)
		require.NotNil(t, e, "an entry %+v", want)
		require.Equal(t, want.queue, e.GetQueue(), "%+v", want)
		require.NotNil(t, e.GetTime())
		require.NotZero(t, e.GetSeq())
		if strings.HasPrefix(want.actor, "token:") || want.actor == "anonymous" {
			require.Contains(t, e.GetPeer(), "127.0.0.1:", "%+v", want)
		}
		if want.code != "OK" {
			require.Equal(t, want.code, e.GetReason(), "%+v", want)
		}
	}
	for _, e := range es {
		require.NotEqual(t, "ListQueues", e.GetAction(), "reads are not audited")
	}
	sj := findEntry(es, "token:root", "SubmitJobs", "OK")
	require.Len(t, sj.GetJobIds(), 100, "one entry per call, at most 100 ids")
	require.EqualValues(t, 150, sj.GetJobCount())
	require.Equal(t, []string{j.GetJob().GetId()}, findEntry(es, "token:root", "CancelJob", "OK").GetJobIds())
	require.Contains(t, findEntry(es, "anonymous", "SubmitJob", "UNAUTHENTICATED").GetDetail(), `"mallory"`)
	var created []string
	for _, e := range es {
		if e.GetAction() == "token.create" {
			created = append(created, e.GetDetail())
		}
	}
	require.Equal(t, []string{"token root: submit,read,cancel,admin on every queue; never expires", "token rd: read on a; never expires"}, created)

	// Filters and pages.
	only := auditEntries(t, c, as, &tandemv1.ListAuditRequest{Actor: "token:rd"})
	require.Len(t, only, 2)
	only = auditEntries(t, c, as, &tandemv1.ListAuditRequest{Action: "PauseQueue", Queue: "a"})
	require.Len(t, only, 2)
	paged := auditEntries(t, c, as, &tandemv1.ListAuditRequest{Limit: 2})
	require.Equal(t, len(es), len(paged), "pages of 2 read the same trail")
	for i := 1; i < len(paged); i++ {
		require.Greater(t, paged[i].GetSeq(), paged[i-1].GetSeq())
	}
	_, err = c.ListAudit(as, &tandemv1.ListAuditRequest{Limit: 1001})
	requireReason(t, err, codes.InvalidArgument, "REQUEST_INVALID", "field", "limit")
	_, err = c.ListAudit(as, &tandemv1.ListAuditRequest{Action: "DropTables"})
	requireReason(t, err, codes.InvalidArgument, "REQUEST_INVALID", "field", "action")
	_, err = c.ListAudit(as, &tandemv1.ListAuditRequest{Queue: "a.>"})
	requireReason(t, err, codes.InvalidArgument, "REQUEST_INVALID", "field", "queue")
	_, err = c.ListAudit(as, &tandemv1.ListAuditRequest{Actor: strings.Repeat("x", 257)})
	requireReason(t, err, codes.InvalidArgument, "REQUEST_INVALID", "field", "actor")
}

// With auth off every call runs as "anonymous"; --rate-limit bounds each
// peer; past it calls get RESOURCE_EXHAUSTED / RATE_LIMITED with a retry
// delay, and are not audited.
func TestRateLimitPerPeerAuthOff(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.rateLimit, o.rateBurst = 0.2, 3 })
	ctx := ctxT(t)
	_, err := b.client.PauseQueue(ctx, &tandemv1.PauseQueueRequest{})
	require.NoError(t, err)
	_, err = b.client.ListAudit(ctx, &tandemv1.ListAuditRequest{})
	require.NoError(t, err)
	_, err = b.client.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	_, err = b.client.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{})
	requireReason(t, err, codes.ResourceExhausted, "RATE_LIMITED")
	var ri *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			ri = r
		}
	}
	require.NotNil(t, ri, "RetryInfo")
	require.Positive(t, ri.GetRetryDelay().AsDuration())
	require.LessOrEqual(t, ri.GetRetryDelay().AsDuration(), 5*time.Second)
	ws, err := b.client.WatchJobs(ctx, &tandemv1.WatchJobsRequest{Queue: "default"})
	require.NoError(t, err)
	_, err = ws.Recv()
	requireReason(t, err, codes.ResourceExhausted, "RATE_LIMITED")
	// Health stays open past the limit.
	_, err = healthpb.NewHealthClient(b.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)

	// The audit trail (read by the orchestrator's own stream) names the caller anonymous.
	var es []*tandemv1.AuditEntry
	require.Eventually(t, func() bool {
		r, err := b.orc.API.ListAudit(authAnonymous(), &tandemv1.ListAuditRequest{})
		require.NoError(t, err)
		es = r.GetEntries()
		return len(es) >= 1
	}, 10*time.Second, 50*time.Millisecond)
	require.Len(t, es, 1, "the refused ResumeQueue is not audited")
	require.Equal(t, "anonymous", es[0].GetActor())
	require.Equal(t, "PauseQueue", es[0].GetAction())
	require.Equal(t, "default", es[0].GetQueue())
}

// With auth on the limit is per token: one token's flood leaves another's calls alone.
func TestRateLimitPerToken(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	b := setupAuth(t, url, func(o *setupOpts) { o.rateLimit, o.rateBurst = 0.2, 2 })
	one := tokenCLI(t, url, "create", "--id", "one", "--queue", "a", "--read-only")
	two := tokenCLI(t, url, "create", "--id", "two", "--queue", "a", "--read-only")
	ctx := ctxT(t)
	list := func(tok string) error {
		_, err := b.client.ListQueues(withToken(ctx, tok), &tandemv1.ListQueuesRequest{})
		return err
	}
	require.Eventually(t, func() bool { return b.orc.Tokens.Len() == 2 }, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, list(one))
	require.NoError(t, list(one))
	requireReason(t, list(one), codes.ResourceExhausted, "RATE_LIMITED")
	require.NoError(t, list(two))
	require.NoError(t, list(two))
	requireReason(t, list(two), codes.ResourceExhausted, "RATE_LIMITED")
}

func authAnonymous() context.Context {
	return auth.WithPrincipal(context.Background(), auth.Anonymous(""))
}

// With --auth the dashboard shows nothing without a token: 401 (the login
// form), 403 for a token that reads no queue; with one (header or the
// cookie its form sets) only the queues it reads.
func TestDashboardNeedsToken(t *testing.T) {
	t.Parallel()
	url := startNATS(t)
	b := setupAuth(t, url, func(o *setupOpts) { o.dashboard = true })
	rd := tokenCLI(t, url, "create", "--id", "rd", "--queue", "a", "--read-only")
	sub := tokenCLI(t, url, "create", "--id", "sub", "--queue", "a", "--scope", "submit")
	require.Eventually(t, func() bool { return b.orc.Tokens.Len() == 2 }, 10*time.Second, 10*time.Millisecond)
	base := "http://" + b.orc.DashboardAddr()
	do := func(method, path, tok string, body string) (*http.Response, string) {
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Origin", base)
		}
		resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		bb, _ := io.ReadAll(resp.Body)
		return resp, string(bb)
	}
	for _, path := range []string{"/", "/api/overview", "/jobs", "/queues/a/dlq", "/jobs/01NOSUCHJOB0000000000000000"} {
		resp, body := do("GET", path, "", "")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		require.NotContains(t, body, `data-queue="a"`, path)
		resp, _ = do("GET", path, "tdm_rd_"+fakeSecret(), "")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		resp, _ = do("GET", path, sub, "")
		require.Equal(t, http.StatusForbidden, resp.StatusCode, path)
	}
	resp, _ := do("POST", "/queues/a/pause", "", "x=1")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	_, body := do("GET", "/", "", "")
	require.Contains(t, body, `name="token"`, "the login form")
	resp, body = do("GET", "/", rd, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, `data-queue="a"`)
	require.NotContains(t, body, `data-queue="b"`)
	resp, body = do("GET", "/api/overview", rd, "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, `"name":"a"`)
	require.NotContains(t, body, `"name":"b"`)
	resp, _ = do("GET", "/queues/b/dlq", rd, "")
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "a queue the token cannot read")
	resp, _ = do("POST", "/queues/a/pause", rd, "x=1")
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "read cannot pause")

	// The login form sets an HttpOnly cookie that then works on its own.
	resp, _ = do("POST", "/login", "", "token=tdm_rd_"+fakeSecret())
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = do("POST", "/login", "", "token="+rd)
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "tandem_token" {
			cookie = c
		}
	}
	require.NotNil(t, cookie)
	require.True(t, cookie.HttpOnly)
	require.Equal(t, http.SameSiteStrictMode, cookie.SameSite)
	req, _ := http.NewRequest("GET", base+"/", nil)
	req.AddCookie(cookie)
	cresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	cb, _ := io.ReadAll(cresp.Body)
	cresp.Body.Close()
	require.Equal(t, http.StatusOK, cresp.StatusCode)
	require.Contains(t, string(cb), `data-queue="a"`)
}

// While NATS is down the token cache keeps answering (unknown tokens are
// refused: fail closed); once it is back, a revoke and a create made then
// reach the orchestrator through its watch.
func TestAuthTokensAcrossNATSRestart(t *testing.T) {
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
	url := ns.ClientURL()
	port := ns.Addr().(*net.TCPAddr).Port
	b := setupAuth(t, url)
	old := tokenCLI(t, url, "create", "--id", "old", "--queue", "a", "--read-only")
	waitAccepted(t, b.client, old)

	ns.Shutdown()
	ns.WaitForShutdown()
	require.Eventually(t, func() bool { return !b.orc.Broker.Connected() }, 10*time.Second, 10*time.Millisecond)
	_, err := b.client.ListWorkers(withToken(ctxT(t), old), &tandemv1.ListWorkersRequest{})
	require.NoError(t, err, "a known token still authenticates while NATS is down")
	_, err = b.client.ListWorkers(withToken(ctxT(t), "tdm_new_"+fakeSecret()), &tandemv1.ListWorkersRequest{})
	requireReason(t, err, codes.Unauthenticated, "UNAUTHENTICATED")

	ns = start(port)
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	t0 := time.Now()
	tokenCLI(t, url, "revoke", "old")
	fresh := tokenCLI(t, url, "create", "--id", "new", "--queue", "a", "--read-only")
	require.Eventually(t, func() bool {
		_, err := b.client.ListWorkers(withToken(ctxT(t), old), &tandemv1.ListWorkersRequest{})
		return status.Code(err) == codes.Unauthenticated
	}, 30*time.Second, 50*time.Millisecond, "the revoke made after the restart arrives")
	t.Logf("revoke seen %s after the restart", time.Since(t0))
	waitAccepted(t, b.client, fresh)
}
