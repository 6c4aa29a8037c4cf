package queue_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tandem/tandem/orchestrator-go/internal/queue"
)

func TestBackoffFullJitterWithinCeiling(t *testing.T) {
	t.Parallel()
	base, cap := 100*time.Millisecond, 2*time.Second
	for attempt := uint32(1); attempt <= 50; attempt++ {
		ceil := cap
		if attempt < 10 && base<<(attempt-1) < cap {
			ceil = base << (attempt - 1)
		}
		for range 50 {
			d := queue.Backoff(base, cap, attempt)
			require.GreaterOrEqual(t, d, time.Duration(0))
			require.LessOrEqual(t, d, ceil, "attempt %d", attempt)
		}
	}
}

// Full jitter means uniform over [0, ceiling]: the samples spread over the
// whole range (a constant, a zero or a fixed fraction fails this), and the
// ceiling doubles per attempt until the cap.
func TestBackoffIsUniformOverAGrowingCeiling(t *testing.T) {
	t.Parallel()
	base, cap := 100*time.Millisecond, 2*time.Second
	for attempt, ceil := range map[uint32]time.Duration{1: 100 * time.Millisecond, 3: 400 * time.Millisecond, 5: 1600 * time.Millisecond, 6: cap, 30: cap} {
		const n = 4000
		var sum, lo, hi time.Duration
		lo = ceil
		for range n {
			d := queue.Backoff(base, cap, attempt)
			sum += d
			lo, hi = min(lo, d), max(hi, d)
		}
		mean := float64(sum) / n / float64(ceil)
		require.InDelta(t, 0.5, mean, 0.05, "attempt %d: mean %.3f of the ceiling", attempt, mean)
		require.Less(t, lo, ceil/20, "attempt %d: smallest sample", attempt)
		require.Greater(t, hi, ceil-ceil/20, "attempt %d: largest sample", attempt)
	}
}
