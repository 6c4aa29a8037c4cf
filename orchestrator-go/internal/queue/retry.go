package queue

import (
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// Retry policy: a job's attempts are counted in its record (never by
// JetStream deliveries), a retryable failure waits Backoff before the next
// attempt (NakWithDelay), and max_attempts counts from the base its message
// carries (0, or where RetryDeadLetters re-enqueued it).

// Backoff is the delay before attempt+1: full jitter over an exponential
// ceiling, uniform in [0, min(cap, base·2^(attempt-1))].
func Backoff(base, cap time.Duration, attempt uint32) time.Duration {
	ceil := cap
	if attempt < 40 {
		if d := base << (attempt - 1); d > 0 && d < cap {
			ceil = d
		}
	}
	if ceil <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceil) + 1))
}

// attemptBase reads the Tandem-Attempt-Base header of a job message.
func attemptBase(msg jetstream.Msg) uint32 {
	v := msg.Headers().Get(jobstore.HeaderAttemptBase)
	if v == "" {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}
