package orchestrator_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/fault"
)

// orchProcess is a tandem-orchestrator process (built with -tags faultinject).
type orchProcess struct {
	cmd    *exec.Cmd
	addr   string
	client tandemv1.JobServiceClient
	exited chan struct{} // closed when the process is gone
	err    error         // its exit error, once exited is closed
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func startProcess(t *testing.T, bin, natsURL, compute, config, faultPoint string) *orchProcess {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(bin, "--listen", addr, "--nats-url", natsURL, "--compute", compute,
		"--data-dir", t.TempDir(), "--metrics-listen", "", "--config", config, "--log-level", "warn")
	cmd.Env = append(os.Environ(), fault.EnvVar+"="+faultPoint)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	p := &orchProcess{cmd: cmd, addr: addr, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-p.exited })
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	hc := healthpb.NewHealthClient(conn)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 30*time.Second, 50*time.Millisecond)
	p.client = tandemv1.NewJobServiceClient(conn)
	return p
}

// TestKillAtEveryStep builds the real binary with the faultinject tag and
// SIGKILLs it at each step of a submit and of a job run; a restarted
// orchestrator (and a client retrying with the same idempotency key) ends
// with exactly one job that ran to one result.
func TestKillAtEveryStep(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "tandem-orchestrator")
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command must be on PATH to build the fault-injecting binary")
	build := exec.Command(goBin, "build", "-tags", "faultinject", "-o", bin, "./cmd/tandem-orchestrator")
	build.Dir = filepath.Join("..", "..")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)
	config := filepath.Join(dir, "queues.toml")
	require.NoError(t, os.WriteFile(config, []byte("[[queue]]\nname = \"default\"\njob_timeout = \"1s\"\nbackoff_base = \"10ms\"\nbackoff_cap = \"50ms\"\n"), 0o600))

	for _, point := range []string{"submit.after_idem", "submit.after_payload", "submit.after_publish",
		"worker.after_start", "worker.after_running", "worker.before_compute", "worker.before_ack"} {
		t.Run(point, func(t *testing.T) {
			t.Parallel()
			url := startNATS(t)
			stub := computetest.Start(t)
			payload := []byte("kill me " + point)
			if point == "submit.after_payload" {
				payload = make([]byte, 3<<20) // above the inline limit (2 MiB)
			}
			steps := []*tandemv1.Step{step("test.echo")}
			if point == "worker.after_running" {
				// Runs past the deferred RUNNING write (250 ms).
				steps = []*tandemv1.Step{step("test.sleep", "ms", "600")}
			}
			req := &tandemv1.SubmitJobRequest{Steps: steps, Payload: payload, IdempotencyKey: "kill-" + point}

			a := startProcess(t, bin, url, stub.Addr, config, point)
			_, err := a.client.SubmitJob(ctxT(t), req)
			if point[:6] == "submit" {
				require.Error(t, err, "the process dies inside the submit")
			}
			select {
			case <-a.exited:
				var ee *exec.ExitError
				require.True(t, errors.As(a.err, &ee), "killed: %v", a.err)
			case <-time.After(30 * time.Second):
				t.Fatal("the orchestrator did not reach the fault point")
			}

			b := startProcess(t, bin, url, stub.Addr, config, "")
			r, err := b.client.SubmitJob(ctxT(t), req) // the client's retry
			require.NoError(t, err)
			final, _ := waitTerminal(t, b.client, r.GetJob().GetId())
			require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
			require.Equal(t, payload, final.GetResult())
			// Even worker.before_ack (died after recording SUCCEEDED, before the
			// ack): the redelivery finds the record finished and does not run it.
			if point == "worker.after_running" {
				// The kill comes 250 ms into the attempt: its call has usually
				// reached compute by then (2 runs), on a loaded machine perhaps
				// not (1); never more.
				require.Contains(t, []int64{1, 2}, int64(stub.Total()), "runs")
			} else {
				require.EqualValues(t, 1, stub.Total(), "exactly one run")
			}
			require.Eventually(t, func() bool {
				qs, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
				return err == nil && qs.GetQueues()[0].GetDepth() == 0 && qs.GetQueues()[0].GetInFlight() == 0
			}, 15*time.Second, 50*time.Millisecond)
		})
	}
}
