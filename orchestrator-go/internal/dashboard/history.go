package dashboard

import (
	"context"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

// sample is one point of a queue's recent history.
type sample struct {
	At         int64   `json:"t"` // unix milliseconds
	Depth      uint64  `json:"depth"`
	InFlight   uint64  `json:"in_flight"`
	PerSecond  float64 `json:"per_second"` // completions per second since the previous sample
	P50, P99   float64 `json:"-"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	DeadLetter uint64  `json:"dead_letters"`
}

// history keeps the last few minutes of every queue's figures: the queue
// figures from ListQueues, rates and latency quantiles from the
// orchestrator's own tandem_job_duration_seconds histogram (differences
// between two samples).
type history struct {
	mu      sync.Mutex
	keep    int
	byQueue map[string][]sample
	prev    map[string]hist
}

type hist struct {
	count   uint64
	buckets []bucket
}

type bucket struct {
	le    float64
	count uint64
}

func newHistory(keep int) *history {
	return &history{keep: keep, byQueue: map[string][]sample{}, prev: map[string]hist{}}
}

func (h *history) get(queue string) []sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]sample(nil), h.byQueue[queue]...)
}

// record adds one sample per queue.
func (h *history) record(now time.Time, queues []*tandemv1.QueueInfo, g prometheus.Gatherer) {
	cur := durations(g)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, q := range queues {
		s := sample{At: now.UnixMilli(), Depth: q.GetDepth(), InFlight: q.GetInFlight(), DeadLetter: q.GetDeadLetters()}
		c, p := cur[q.GetName()], h.prev[q.GetName()]
		if prevs := h.byQueue[q.GetName()]; len(prevs) > 0 && c.count >= p.count {
			dt := float64(s.At-prevs[len(prevs)-1].At) / 1000
			if dt > 0 {
				s.PerSecond = float64(c.count-p.count) / dt
			}
			s.P50, s.P99 = quantile(c, p, 0.5), quantile(c, p, 0.99)
		}
		s.P50ms, s.P99ms = round(s.P50*1000), round(s.P99*1000)
		h.prev[q.GetName()] = c
		list := append(h.byQueue[q.GetName()], s)
		if len(list) > h.keep {
			list = list[len(list)-h.keep:]
		}
		h.byQueue[q.GetName()] = list
	}
}

func round(v float64) float64 { return math.Round(v*100) / 100 }

// durations sums tandem_job_duration_seconds over ops, per queue.
func durations(g prometheus.Gatherer) map[string]hist {
	out := map[string]hist{}
	if g == nil {
		return out
	}
	mfs, err := g.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "tandem_job_duration_seconds" || mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			queue := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "queue" {
					queue = l.GetValue()
				}
			}
			h := out[queue]
			h.count += m.GetHistogram().GetSampleCount()
			if h.buckets == nil {
				for _, b := range m.GetHistogram().GetBucket() {
					h.buckets = append(h.buckets, bucket{le: b.GetUpperBound()})
				}
			}
			for i, b := range m.GetHistogram().GetBucket() {
				if i < len(h.buckets) {
					h.buckets[i].count += b.GetCumulativeCount()
				}
			}
			out[queue] = h
		}
	}
	return out
}

// quantile estimates quantile q of the observations made between prev and
// cur, interpolating linearly inside the bucket it falls in.
func quantile(cur, prev hist, q float64) float64 {
	total := cur.count - prev.count
	if total == 0 || len(cur.buckets) == 0 {
		return 0
	}
	rank := q * float64(total)
	delta := func(i int) float64 {
		d := float64(cur.buckets[i].count)
		if i < len(prev.buckets) {
			d -= float64(prev.buckets[i].count)
		}
		return d
	}
	i := sort.Search(len(cur.buckets), func(i int) bool { return delta(i) >= rank })
	if i == len(cur.buckets) {
		return cur.buckets[len(cur.buckets)-1].le
	}
	lo, below := 0.0, 0.0
	if i > 0 {
		lo, below = cur.buckets[i-1].le, delta(i-1)
	}
	in := delta(i) - below
	if in <= 0 {
		return cur.buckets[i].le
	}
	return lo + (cur.buckets[i].le-lo)*(rank-below)/in
}

// run samples every interval until ctx ends.
func (h *history) run(ctx context.Context, every time.Duration, list func(context.Context) ([]*tandemv1.QueueInfo, error), g prometheus.Gatherer) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, every)
		qs, err := list(cctx)
		cancel()
		if err == nil {
			h.record(time.Now(), qs, g)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
