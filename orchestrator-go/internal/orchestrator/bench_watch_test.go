package orchestrator_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// BenchmarkWatchByIDs: batch submits of 1 000 tiny jobs, each batch waited for
// by a WatchJobs on its 1 000 ids (what a client's wait does), batches in
// flight concurrently. Reports jobs/s end to end (submit → watch saw all terminal).
func BenchmarkWatchByIDs(b *testing.B) {
	_, client := benchOrchestrator(b, config.DurabilityInterval)
	n := b.N
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for sent := 0; sent < n; {
		k := min(1000, n-sent)
		reqs := make([]*tandemv1.SubmitJobRequest, k)
		for i := range reqs {
			reqs[i] = &tandemv1.SubmitJobRequest{Steps: echo, Payload: []byte("x")}
		}
		r, err := client.SubmitJobs(context.Background(), &tandemv1.SubmitJobsRequest{Jobs: reqs})
		require.NoError(b, err)
		ids := make([]string, 0, k)
		for _, res := range r.GetResults() {
			ids = append(ids, res.GetSubmitted().GetJob().GetId())
		}
		sent += k
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			stream, err := client.WatchJobs(context.Background(), &tandemv1.WatchJobsRequest{JobIds: ids})
			if err != nil {
				b.Error(err)
				return
			}
			done := 0
			for {
				m, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					b.Error(err)
					return
				}
				if m.GetJob().GetState() == tandemv1.JobState_JOB_STATE_SUCCEEDED {
					done++
				}
			}
			if done != len(ids) {
				b.Errorf("%d of %d jobs seen SUCCEEDED", done, len(ids))
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "jobs/s")
	b.ReportMetric(0, "ns/op")
}
