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
