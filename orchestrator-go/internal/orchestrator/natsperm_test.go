package orchestrator_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/workers"
	"github.com/tandem/tandem/orchestrator-go/internal/workertest"
)

const (
	orchPassword   = "orch-test-password"
	workerPassword = "worker-test-password"
)

// startTandemNATS runs a real nats-server from deploy/nats/tandem.conf (its
// listen address, monitoring port and store directory moved to the test's).
// The passwords the file takes from the environment are defined in a copy.
func startTandemNATS(t *testing.T) string {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "nats", "tandem.conf"))
	require.NoError(t, err)
	require.Contains(t, string(conf), "$TANDEM_NATS_ORCHESTRATOR_PASSWORD")
	vars := "TANDEM_NATS_ORCHESTRATOR_PASSWORD: " + orchPassword + "\nTANDEM_NATS_WORKER_PASSWORD: " + workerPassword + "\n"
	path := filepath.Join(t.TempDir(), "tandem.conf")
	require.NoError(t, os.WriteFile(path, []byte(vars+string(conf)), 0o600))
	opts, err := server.ProcessConfigFile(path)
	require.NoError(t, err)
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", server.RANDOM_PORT, 0
	opts.StoreDir, opts.NoSigs, opts.NoLog, opts.SyncAlways = t.TempDir(), true, true, false
	ns, err := server.NewServer(opts)
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// asyncErrs collects a connection's asynchronous errors (permission violations).
type asyncErrs struct {
	mu   sync.Mutex
	errs []string
}

func (a *asyncErrs) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	a.mu.Lock()
	a.errs = append(a.errs, err.Error())
	a.mu.Unlock()
}

func (a *asyncErrs) waitFor(t *testing.T, substr string) {
	t.Helper()
	require.Eventually(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		for _, e := range a.errs {
			if strings.Contains(e, substr) {
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "no async error containing %q", substr)
}

func TestNATSPermissionsOfTandemConf(t *testing.T) {
	t.Parallel()
	url := startTandemNATS(t)
	pwFile := filepath.Join(t.TempDir(), "password")
	require.NoError(t, os.WriteFile(pwFile, []byte(orchPassword+"\n"), 0o600))

	var logs lockedBuffer
	b := setup(t, func(o *setupOpts) {
		o.natsURL = url
		o.security = config.Security{NATSUser: "orchestrator", NATSPasswordFile: pwFile}
		o.logs = &logs
	})
	w := workertest.StartWith(t, url, "perm-worker", nats.UserInfo("worker", workerPassword))
	require.Eventually(t, func() bool {
		r, err := b.client.ListWorkers(ctxT(t), &tandemv1.ListWorkersRequest{})
		return err == nil && len(r.GetWorkers()) == 1
	}, 10*time.Second, 50*time.Millisecond)

	// A job of every path: compute inline and through the object stores, a
	// worker step inline and through the payloads object store (the worker
	// user's side of it), cancel, dead letters, pause and resume.
	large := bytes.Repeat([]byte("abcdefgh"), (3<<20)/8)
	for _, j := range []struct {
		steps   []*tandemv1.Step
		payload []byte
		want    []byte
	}{
		{[]*tandemv1.Step{step("test.echo")}, []byte("small"), []byte("small")},
		{[]*tandemv1.Step{step("test.echo")}, large, large},
		{[]*tandemv1.Step{step("user.upper")}, []byte("worker"), []byte("WORKER")},
		{[]*tandemv1.Step{step("test.echo"), step("user.upper")}, large, bytes.ToUpper(large)},
	} {
		job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: j.steps, Payload: j.payload})
		final, _ := waitTerminal(t, b.client, job.GetId())
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "%v", final.GetLastError())
		require.True(t, bytes.Equal(j.want, final.GetResult()))
	}
	require.Positive(t, w.Calls.Load())

	blocked := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("user.slow", "ms", "20000")}})
	waitState(t, b.client, blocked.GetId(), tandemv1.JobState_JOB_STATE_RUNNING)
	_, err := b.client.CancelJob(ctxT(t), &tandemv1.CancelJobRequest{JobId: blocked.GetId()})
	require.NoError(t, err)
	final, _ := waitTerminal(t, b.client, blocked.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_CANCELLED, final.GetState())

	dead := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "UNAVAILABLE")}, MaxAttempts: 1})
	final, _ = waitTerminal(t, b.client, dead.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, final.GetState())
	dl, err := b.client.ListDeadLetters(ctxT(t), &tandemv1.ListDeadLettersRequest{Queue: config.DefaultQueue})
	require.NoError(t, err)
	require.Len(t, dl.GetJobs(), 1)
	_, err = b.client.RetryDeadLetters(ctxT(t), &tandemv1.RetryDeadLettersRequest{Queue: config.DefaultQueue, JobIds: []string{dead.GetId()}})
	require.NoError(t, err)
	waitState(t, b.client, dead.GetId(), tandemv1.JobState_JOB_STATE_DEAD)
	_, err = b.client.PurgeDeadLetters(ctxT(t), &tandemv1.PurgeDeadLettersRequest{Queue: config.DefaultQueue, JobIds: []string{dead.GetId()}})
	require.NoError(t, err)

	_, err = b.client.PauseQueue(ctxT(t), &tandemv1.PauseQueueRequest{Queue: config.DefaultQueue})
	require.NoError(t, err)
	_, err = b.client.ResumeQueue(ctxT(t), &tandemv1.ResumeQueueRequest{Queue: config.DefaultQueue})
	require.NoError(t, err)
	qs, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	require.NotEmpty(t, qs.GetQueues())
	lj, err := b.client.ListJobs(ctxT(t), &tandemv1.ListJobsRequest{Queue: config.DefaultQueue})
	require.NoError(t, err)
	require.NotEmpty(t, lj.GetJobs())
	require.NotContains(t, strings.ToLower(logs.String()), "permissions violation", "the orchestrator user lacks a permission")

	// The worker user: no JetStream API beyond the payloads object store,
	// no job record, no events, no jobs published, step requests only in
	// the queue group.
	var errs asyncErrs
	nc, err := nats.Connect(url, nats.UserInfo("worker", workerPassword), nats.ErrorHandler(errs.handler))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(ctxT(t), time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	_, err = js.KeyValue(short(), broker.JobsBucket)
	require.Error(t, err, "the worker reads the job records bucket")
	_, err = js.AccountInfo(short())
	require.Error(t, err, "the worker calls the JetStream API")
	_, err = nc.Request("$JS.API.DIRECT.GET.KV_"+broker.JobsBucket+"."+broker.JobKVSubject(dead.GetId()), nil, time.Second)
	require.Error(t, err, "the worker reads a job record with a direct get")
	errs.waitFor(t, `Permissions Violation for Publish to "$JS.API.INFO"`)
	errs.waitFor(t, `Permissions Violation for Publish to "$JS.API.DIRECT.GET.KV_tandem_jobs.$KV.tandem_jobs.`+dead.GetId()+`"`)
	errs.waitFor(t, `Permissions Violation for Publish to "$JS.API.STREAM.INFO.KV_tandem_jobs"`)
	_, err = js.ObjectStore(short(), broker.PayloadsBucket)
	require.NoError(t, err, "the payloads object store stays open to it")

	_, err = nc.Subscribe(broker.JobKVSubject(">"), func(*nats.Msg) {})
	require.NoError(t, err)
	errs.waitFor(t, `Permissions Violation for Subscription to "$KV.tandem_jobs.>"`)
	_, err = nc.Subscribe(broker.EventsPrefix+">", func(*nats.Msg) {})
	require.NoError(t, err)
	errs.waitFor(t, `Permissions Violation for Subscription to "tandem.events.>"`)
	_, err = nc.Subscribe(workers.OpSubject("user.upper"), func(*nats.Msg) {})
	require.NoError(t, err)
	errs.waitFor(t, `Permissions Violation for Subscription to "tandem.op.user.upper"`)
	_, err = nc.Subscribe(broker.InboxPrefix+".>", func(*nats.Msg) {})
	require.NoError(t, err)
	errs.waitFor(t, `Permissions Violation for Subscription to "`+broker.InboxPrefix+`.>"`)
	require.NoError(t, nc.Publish(broker.QueueSubject(config.DefaultQueue), []byte("forged")))
	errs.waitFor(t, `Permissions Violation for Publish to "tandem.jobs.default"`)

	// A wrong password is refused outright.
	_, err = nats.Connect(url, nats.UserInfo("worker", "wrong"))
	require.ErrorContains(t, err, "Authorization Violation")
}
