package orchestrator_test

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// freezer is a TCP proxy to a real server that can stop moving bytes without
// closing anything: to its clients the server looks frozen (SIGSTOP), its
// connections open and silent.
type freezer struct {
	lis    net.Listener
	mu     sync.Mutex
	cond   *sync.Cond
	frozen bool
}

func startFreezer(t *testing.T, upstream string) *freezer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &freezer{lis: lis}
	f.cond = sync.NewCond(&f.mu)
	t.Cleanup(func() { _ = lis.Close(); f.set(false) })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			go f.pipe(c, u)
			go f.pipe(u, c)
		}
	}()
	return f
}

func (f *freezer) set(v bool) {
	f.mu.Lock()
	f.frozen = v
	f.mu.Unlock()
	f.cond.Broadcast()
}

func (f *freezer) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.cond.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				return
			}
			return
		}
	}
}

// A compute that accepts connections but answers nothing is an outage like
// a dead one: the breaker opens (health NOT_SERVING, pools stop pulling), the
// calls cut off by the freeze are handed back, and no attempt is burnt.
func TestFrozenComputeBurnsNoAttempts(t *testing.T) {
	t.Parallel()
	stub := computetest.Start(t)
	fz := startFreezer(t, stub.Addr)
	q := testQueue(config.DefaultQueue)
	q.JobTimeout = 2 * time.Second
	q.MaxAttempts = 2
	b := startOrchestrator(t, setupOpts{compute: &computetest.Server{Addr: fz.lis.Addr().String()}, queues: []config.Queue{q}})
	ctx := ctxT(t)
	hc := healthpb.NewHealthClient(b.conn)
	serving := func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "tandem.v1.JobService"})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}
	require.Eventually(t, serving, 10*time.Second, 20*time.Millisecond)

	fz.set(true)
	var ids []string
	for range 30 {
		j := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.sleep", "ms", "20")}})
		ids = append(ids, j.GetId())
	}
	require.Eventually(t, func() bool { return !serving() }, 30*time.Second, 50*time.Millisecond, "a frozen compute turns health NOT_SERVING")
	require.False(t, b.orc.Compute.Ready(), "the breaker is open")
	time.Sleep(3 * time.Second) // the outage goes on past several job timeouts
	fz.set(false)
	for _, id := range ids {
		fin, _ := waitTerminal(t, b.client, id)
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState(), "job %s: %v", id, fin.GetLastError())
		for _, a := range fin.GetAttempts() {
			require.Nil(t, a.GetError(), "job %s: attempt %d burnt by the outage: %v", id, a.GetNumber(), a.GetError())
		}
	}
	require.Eventually(t, serving, 10*time.Second, 20*time.Millisecond)
}
