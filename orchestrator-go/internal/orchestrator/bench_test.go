package orchestrator_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/orchestrator"
)

func benchOrchestrator(b *testing.B, durability string) (*orchestrator.Orchestrator, tandemv1.JobServiceClient) {
	stub := computetest.Start(b)
	q := config.DefaultQueueSettings(config.DefaultQueue)
	q.MinWorkers, q.MaxWorkers = benchWorkers(), benchWorkers()
	qs, err := config.NormalizeQueues([]config.Queue{q})
	require.NoError(b, err)
	orc, err := orchestrator.Start(context.Background(), orchestrator.Options{Config: &config.Config{
		Listen: "127.0.0.1:0", Compute: []string{stub.Addr}, DataDir: b.TempDir(), Durability: durability, NATSListen: os.Getenv("TANDEM_BENCH_NATS_LISTEN"),
		DrainTimeout: time.Second, MaxMessageBytes: 65 << 20, Queues: qs,
	}, Logger: testLogger()})
	require.NoError(b, err)
	b.Cleanup(func() { orc.Shutdown(time.Second) })
	// TANDEM_BENCH_INLINE_LIMIT overrides the inline limit (A/B runs).
	if v, err := strconv.Atoi(os.Getenv("TANDEM_BENCH_INLINE_LIMIT")); err == nil && v > 0 {
		orc.Store.InlineLimit = v
	}
	conn, err := grpc.NewClient(orc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(b, err)
	b.Cleanup(func() { _ = conn.Close() })
	return orc, tandemv1.NewJobServiceClient(conn)
}

// completions records submit→SUCCEEDED latency from the events subject.
type completions struct {
	mu      sync.Mutex
	started map[string]time.Time
	early   map[string]time.Time // completed before its submit was recorded
	lat     []time.Duration
	done    atomic.Int64
	all     chan struct{}
	want    int64
}

func watchCompletions(b *testing.B, orc *orchestrator.Orchestrator, want int) *completions {
	c := &completions{started: map[string]time.Time{}, early: map[string]time.Time{}, all: make(chan struct{}), want: int64(want)}
	sub, err := orc.Broker.NC().Subscribe(broker.QueueEventsFilter(config.DefaultQueue), func(m *nats.Msg) {
		j := &tandemv1.Job{}
		if proto.Unmarshal(m.Data, j) != nil || j.GetState() != tandemv1.JobState_JOB_STATE_SUCCEEDED {
			return
		}
		now := time.Now()
		c.mu.Lock()
		if t0, ok := c.started[j.GetId()]; ok {
			c.lat = append(c.lat, now.Sub(t0))
		} else {
			c.early[j.GetId()] = now
		}
		c.mu.Unlock()
		if c.done.Add(1) == c.want {
			close(c.all)
		}
	})
	require.NoError(b, err)
	require.NoError(b, sub.SetPendingLimits(-1, -1))
	b.Cleanup(func() { _ = sub.Unsubscribe() })
	return c
}

func (c *completions) submitted(id string, t0 time.Time) {
	c.mu.Lock()
	if t1, ok := c.early[id]; ok {
		c.lat = append(c.lat, t1.Sub(t0))
		delete(c.early, id)
	} else {
		c.started[id] = t0
	}
	c.mu.Unlock()
}

func (c *completions) report(b *testing.B, n int, elapsed time.Duration) {
	slices.Sort(c.lat)
	pct := func(p float64) float64 {
		if len(c.lat) == 0 {
			return 0
		}
		return float64(c.lat[int(float64(len(c.lat)-1)*p)].Microseconds()) / 1000
	}
	b.ReportMetric(float64(n)/elapsed.Seconds(), "jobs/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
	if len(benchPayload()) > 1 {
		b.ReportMetric(float64(len(benchPayload())), "payload-B")
	}
}

var echo = []*tandemv1.Step{{Op: "test.echo"}}

// benchPayload is the payload of each job: TANDEM_BENCH_PAYLOAD bytes (default 1).
func benchPayload() []byte {
	n, err := strconv.Atoi(os.Getenv("TANDEM_BENCH_PAYLOAD"))
	if err != nil || n < 1 {
		n = 1
	}
	return bytes.Repeat([]byte("x"), n)
}

// BenchmarkSubmitToComplete measures tiny jobs end to end (submit → SUCCEEDED
// event) with a stub compute: single submits from 32 concurrent clients, and
// batch submits of 500 (fewer when large: at most 32 MiB per batch). Run with
// -benchtime=Nx (N jobs); TANDEM_BENCH_PAYLOAD sets the payload size in bytes.
func BenchmarkSubmitToComplete(b *testing.B) {
	for _, durability := range []string{config.DurabilityInterval, config.DurabilityAlways} {
		b.Run("single/"+durability, func(b *testing.B) {
			orc, client := benchOrchestrator(b, durability)
			n := b.N
			payload := benchPayload()
			c := watchCompletions(b, orc, n)
			var next atomic.Int64
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for range 32 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(n) {
						t0 := time.Now()
						r, err := client.SubmitJob(context.Background(), &tandemv1.SubmitJobRequest{Steps: echo, Payload: payload})
						if err != nil {
							b.Error(err)
							return
						}
						c.submitted(r.GetJob().GetId(), t0)
					}
				}()
			}
			wg.Wait()
			<-c.all
			c.report(b, n, time.Since(start))
		})
		b.Run("batch/"+durability, func(b *testing.B) {
			orc, client := benchOrchestrator(b, durability)
			n := b.N
			c := watchCompletions(b, orc, n)
			payload := benchPayload()
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < n; {
				k := min(500, max(1, (32<<20)/len(payload)), n-sent)
				reqs := make([]*tandemv1.SubmitJobRequest, k)
				for i := range reqs {
					reqs[i] = &tandemv1.SubmitJobRequest{Steps: echo, Payload: payload}
				}
				t0 := time.Now()
				r, err := client.SubmitJobs(context.Background(), &tandemv1.SubmitJobsRequest{Jobs: reqs})
				require.NoError(b, err)
				for _, res := range r.GetResults() {
					require.NotNil(b, res.GetSubmitted(), "%v", res.GetError())
					c.submitted(res.GetSubmitted().GetJob().GetId(), t0)
				}
				sent += k
			}
			<-c.all
			c.report(b, n, time.Since(start))
		})
	}
}

// BenchmarkPacedLatency submits single jobs open-loop at a fixed rate
// (TANDEM_BENCH_RATE jobs/s, default 2000) and reports submit→SUCCEEDED latency.
func BenchmarkPacedLatency(b *testing.B) {
	rate := 2000
	if v, err := strconv.Atoi(os.Getenv("TANDEM_BENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	for _, durability := range []string{config.DurabilityInterval, config.DurabilityAlways} {
		b.Run(fmt.Sprintf("%d-per-s/%s", rate, durability), func(b *testing.B) {
			orc, client := benchOrchestrator(b, durability)
			n := b.N
			c := watchCompletions(b, orc, n)
			b.ResetTimer()
			start := time.Now()
			interval := time.Second / time.Duration(rate)
			var wg sync.WaitGroup
			for i := 0; i < n; i++ {
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					t0 := time.Now()
					r, err := client.SubmitJob(context.Background(), &tandemv1.SubmitJobRequest{Steps: echo, Payload: []byte("x")})
					if err != nil {
						b.Error(err)
						return
					}
					c.submitted(r.GetJob().GetId(), t0)
				}()
			}
			wg.Wait()
			<-c.all
			c.report(b, n, time.Since(start))
		})
	}
}

// BenchmarkRawJetStreamPublish is the baseline: async publishes of tiny
// messages to one file-store stream, per durability.
func BenchmarkRawJetStreamPublish(b *testing.B) {
	for _, durability := range []string{config.DurabilityInterval, config.DurabilityAlways} {
		b.Run(durability, func(b *testing.B) {
			br, err := broker.Open(context.Background(), broker.Options{DataDir: b.TempDir(), Durability: durability, Queues: []config.Queue{config.DefaultQueueSettings("raw")}, Logger: testLogger()})
			require.NoError(b, err)
			defer br.Close()
			s, err := br.JS().CreateStream(context.Background(), jetstream.StreamConfig{Name: "RAW", Subjects: []string{"raw"}, Storage: jetstream.FileStorage})
			require.NoError(b, err)
			_ = s
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := br.JS().PublishAsync("raw", []byte(fmt.Sprint(i))); err != nil {
					b.Fatal(err)
				}
				if i%1000 == 999 { // stay under the async publish window
					<-br.JS().PublishAsyncComplete()
				}
			}
			<-br.JS().PublishAsyncComplete()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// benchWorkers is the pool size of the benchmarks (TANDEM_BENCH_WORKERS, default 64).
func benchWorkers() int {
	if v, err := strconv.Atoi(os.Getenv("TANDEM_BENCH_WORKERS")); err == nil && v > 0 {
		return v
	}
	return 64
}

// BenchmarkSubmitOnly measures batch submits alone (the queue is paused).
func BenchmarkSubmitOnly(b *testing.B) {
	_, client := benchOrchestrator(b, config.DurabilityInterval)
	_, err := client.PauseQueue(context.Background(), &tandemv1.PauseQueueRequest{})
	require.NoError(b, err)
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		k := min(500, b.N-sent)
		reqs := make([]*tandemv1.SubmitJobRequest, k)
		for i := range reqs {
			reqs[i] = &tandemv1.SubmitJobRequest{Steps: echo, Payload: []byte("x")}
		}
		_, err := client.SubmitJobs(context.Background(), &tandemv1.SubmitJobsRequest{Jobs: reqs})
		require.NoError(b, err)
		sent += k
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
	b.ReportMetric(0, "ns/op")
	if len(benchPayload()) > 1 {
		b.ReportMetric(float64(len(benchPayload())), "payload-B")
	}
}

// BenchmarkWorkBacklog measures the workers alone: N jobs are queued while
// the queue is paused, then it is resumed and timed until all succeed.
func BenchmarkWorkBacklog(b *testing.B) {
	orc, client := benchOrchestrator(b, config.DurabilityInterval)
	ctx := context.Background()
	_, err := client.PauseQueue(ctx, &tandemv1.PauseQueueRequest{})
	require.NoError(b, err)
	c := watchCompletions(b, orc, b.N)
	for sent := 0; sent < b.N; {
		k := min(500, b.N-sent)
		reqs := make([]*tandemv1.SubmitJobRequest, k)
		for i := range reqs {
			reqs[i] = &tandemv1.SubmitJobRequest{Steps: echo, Payload: []byte("x")}
		}
		_, err := client.SubmitJobs(ctx, &tandemv1.SubmitJobsRequest{Jobs: reqs})
		require.NoError(b, err)
		sent += k
	}
	b.ResetTimer()
	start := time.Now()
	_, err = client.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{})
	require.NoError(b, err)
	<-c.all
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
	b.ReportMetric(0, "ns/op")
	if len(benchPayload()) > 1 {
		b.ReportMetric(float64(len(benchPayload())), "payload-B")
	}
}
