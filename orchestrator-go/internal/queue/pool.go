// Package queue runs the worker pool of one queue: a fetcher that pulls from
// the queue's durable consumer only as many messages as there are idle
// workers (and only while compute is reachable), the execution of one job
// attempt with its state transitions, retries, dead-lettering, autoscaling
// between min and max workers, and drain.
package queue

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
	"github.com/tandem/tandem/orchestrator-go/internal/metrics"
	"github.com/tandem/tandem/orchestrator-go/internal/workers"
)

// Deps are what a pool needs from the orchestrator.
type Deps struct {
	Broker   *broker.Broker
	Store    *jobstore.Store
	Compute  *compute.Client
	Metrics  *metrics.Metrics
	Log      *slog.Logger
	WorkerID string // recorded in each Attempt
	Running  *Running
	// Workers runs steps of ops registered by op workers (nil: none).
	Workers *workers.Registry
	// Fault, when set, is called at named points of the worker (tests only).
	Fault func(point string) error
}

// errDrain is the cause of cancelled job contexts at the end of a drain.
var errDrain = errors.New("orchestrator draining")

// Pool is the worker pool of one queue in this orchestrator.
type Pool struct {
	Deps
	cfg     config.Queue
	limiter *rate.Limiter

	consMu  sync.Mutex
	cons    jetstream.Consumer
	consGen uint64 // the broker connection cons was looked up on

	mu     sync.Mutex
	cond   *sync.Cond
	active int // worker slots taken: jobs running plus slots reserved by an open pull
	limit  int // current worker count (min..max)

	fetchCtx    context.Context
	stopFetch   context.CancelFunc
	runCtx      context.Context
	cancelRuns  context.CancelCauseFunc
	fetchDone   chan struct{}
	superDone   chan struct{}
	inflight    sync.WaitGroup
	running     atomic.Int64 // jobs running
	depth       atomic.Int64
	ackPending  atomic.Int64
	paused      atomic.Bool
	completions *rateWindow
}

// NewPool prepares the pool of queue q; Start runs it.
func NewPool(ctx context.Context, d Deps, q config.Queue) (*Pool, error) {
	p := &Pool{Deps: d, cfg: q, limit: q.MinWorkers, completions: newRateWindow(time.Minute)}
	if _, err := p.consumer(ctx); err != nil {
		return nil, err
	}
	p.cond = sync.NewCond(&p.mu)
	if q.RateLimit > 0 {
		p.limiter = rate.NewLimiter(rate.Limit(q.RateLimit), q.RateBurst)
	}
	p.Log = d.Log.With("queue", q.Name)
	return p, nil
}

// consumer is the queue's durable consumer on the broker's current
// connection, looked up again after the connection was replaced.
func (p *Pool) consumer(ctx context.Context) (jetstream.Consumer, error) {
	p.consMu.Lock()
	defer p.consMu.Unlock()
	gen := p.Broker.Gen()
	if p.cons != nil && p.consGen == gen {
		return p.cons, nil
	}
	s, ok := p.Broker.Queues()[p.cfg.Name]
	if !ok {
		return nil, errors.New("queue stream missing: " + p.cfg.Name)
	}
	cons, err := s.Consumer(ctx, broker.ConsumerName)
	if err != nil {
		return nil, err
	}
	p.cons, p.consGen = cons, gen
	return cons, nil
}

// Config is the queue's configuration.
func (p *Pool) Config() config.Queue { return p.cfg }

// Start runs the fetcher and the supervisor.
func (p *Pool) Start() {
	p.fetchCtx, p.stopFetch = context.WithCancel(context.Background())
	p.runCtx, p.cancelRuns = context.WithCancelCause(context.Background())
	p.fetchDone = make(chan struct{})
	p.superDone = make(chan struct{})
	p.Metrics.Workers.WithLabelValues(p.cfg.Name).Set(float64(p.limit))
	go p.fetchLoop()
	go p.supervise()
}

// Stats are live figures of the pool.
type Stats struct {
	Depth, AckPending int64
	Workers, Active   int
	Paused            bool
	CompletedPerSec   float64
}

// Stats reports the pool's live figures (depth as of the last refresh, ≤1s old).
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Depth: p.depth.Load(), AckPending: p.ackPending.Load(), Workers: p.limit, Active: int(p.running.Load()),
		Paused: p.paused.Load(), CompletedPerSec: p.completions.perSecond()}
}

// acquire blocks until at least one worker is idle and claims up to want idle
// workers; it returns 0 when ctx ends.
func (p *Pool) acquire(ctx context.Context, want int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.active >= p.limit {
		if ctx.Err() != nil {
			return 0
		}
		p.cond.Wait()
	}
	if ctx.Err() != nil {
		return 0
	}
	n := min(want, p.limit-p.active)
	p.active += n
	return n
}

func (p *Pool) release(n int) {
	if n <= 0 {
		return
	}
	p.mu.Lock()
	p.active -= n
	p.mu.Unlock()
	p.cond.Broadcast()
}

// maxFetchBatch caps one pull request.
const maxFetchBatch = 256

// fetchWait is how long one pull request waits for messages; it bounds how
// long a drain or pause takes to stop pulling.
const fetchWait = 500 * time.Millisecond

func (p *Pool) fetchLoop() {
	defer close(p.fetchDone)
	// Wake acquire() when the fetch context ends.
	stopWake := context.AfterFunc(p.fetchCtx, func() { p.mu.Lock(); p.cond.Broadcast(); p.mu.Unlock() })
	defer stopWake()
	idle := time.NewTimer(0)
	defer idle.Stop()
	wait := func(d time.Duration) bool {
		idle.Reset(d)
		select {
		case <-p.fetchCtx.Done():
			return false
		case <-idle.C:
			return true
		}
	}
	for p.fetchCtx.Err() == nil {
		// Stop pulling while every compute breaker is open: jobs wait in the
		// stream with their attempts untouched.
		if !p.Compute.Ready() || p.paused.Load() {
			if !wait(100 * time.Millisecond) {
				return
			}
			continue
		}
		n := p.acquire(p.fetchCtx, maxFetchBatch)
		if n == 0 {
			return
		}
		if p.limiter != nil {
			n2 := min(n, max(1, p.limiter.Burst()))
			p.release(n - n2)
			n = n2
			if err := p.limiter.WaitN(p.fetchCtx, n); err != nil {
				p.release(n)
				return
			}
		}
		var batch jetstream.MessageBatch
		cctx, cancel := context.WithTimeout(p.fetchCtx, 5*time.Second)
		cons, err := p.consumer(cctx)
		cancel()
		if err == nil {
			batch, err = cons.Fetch(n, jetstream.FetchMaxWait(fetchWait))
		}
		if err != nil {
			p.release(n)
			p.Log.Warn("fetch failed", "error", err)
			if !wait(250 * time.Millisecond) {
				return
			}
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			got++
			if p.fetchCtx.Err() != nil {
				// Draining: hand it straight back.
				_ = msg.Nak()
				p.release(1)
				continue
			}
			p.inflight.Add(1)
			p.Metrics.InFlight.WithLabelValues(p.cfg.Name).Set(float64(p.running.Add(1)))
			go func() {
				defer p.inflight.Done()
				defer p.release(1)
				defer func() { p.Metrics.InFlight.WithLabelValues(p.cfg.Name).Set(float64(p.running.Add(-1))) }()
				p.handle(msg)
			}()
		}
		p.release(n - got)
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && p.fetchCtx.Err() == nil {
			p.Log.Debug("fetch ended", "error", err)
		}
	}
}

// supervise refreshes the consumer figures every second and scales the pool
// between min and max workers: up while work waits and every worker is busy,
// down after a few idle seconds.
func (p *Pool) supervise() {
	defer close(p.superDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	idleTicks := 0
	for tick := 0; ; tick++ {
		select {
		case <-p.fetchCtx.Done():
			return
		case <-t.C:
		}
		if tick%5 == 0 {
			ctx, cancel := context.WithTimeout(p.fetchCtx, 2*time.Second)
			if si, err := p.Broker.DLQ().Info(ctx, jetstream.WithSubjectFilter(broker.DLQFilter(p.cfg.Name))); err == nil {
				p.Metrics.DLQSize.WithLabelValues(p.cfg.Name).Set(float64(len(si.State.Subjects)))
			}
			cancel()
		}
		ctx, cancel := context.WithTimeout(p.fetchCtx, 2*time.Second)
		var info *jetstream.ConsumerInfo
		cons, err := p.consumer(ctx)
		if err == nil {
			info, err = cons.Info(ctx)
		}
		cancel()
		if err != nil {
			continue
		}
		p.depth.Store(int64(info.NumPending))
		p.ackPending.Store(int64(info.NumAckPending))
		p.paused.Store(info.Paused)
		p.Metrics.QueueDepth.WithLabelValues(p.cfg.Name).Set(float64(info.NumPending))
		running := int(p.running.Load())
		p.mu.Lock()
		switch {
		case info.NumPending > 0 && running >= p.limit && p.limit < p.cfg.MaxWorkers:
			p.limit = min(p.cfg.MaxWorkers, max(p.limit+1, p.limit*2))
			idleTicks = 0
			p.cond.Broadcast()
		case info.NumPending == 0 && running*2 < p.limit && p.limit > p.cfg.MinWorkers:
			idleTicks++
			if idleTicks >= 5 {
				p.limit--
				idleTicks = 0
			}
		default:
			idleTicks = 0
		}
		p.Metrics.Workers.WithLabelValues(p.cfg.Name).Set(float64(p.limit))
		p.mu.Unlock()
	}
}

// SetPaused updates the local view of the pause flag (the flag itself lives
// on the consumer, shared by every orchestrator).
func (p *Pool) SetPaused(v bool) { p.paused.Store(v) }

// Drain stops pulling, waits up to timeout for running jobs, then cancels the
// rest, which are handed back (nak without delay, attempt not counted).
func (p *Pool) Drain(timeout time.Duration) {
	p.stopFetch()
	<-p.fetchDone
	<-p.superDone
	done := make(chan struct{})
	go func() { p.inflight.Wait(); close(done) }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		p.Log.Warn("drain timeout: handing running jobs back")
		p.cancelRuns(errDrain)
		<-done
	}
	p.cancelRuns(errDrain)
}

// rateWindow counts completions over a sliding window of one-second buckets.
type rateWindow struct {
	mu      sync.Mutex
	window  time.Duration
	buckets map[int64]int
}

func newRateWindow(w time.Duration) *rateWindow {
	return &rateWindow{window: w, buckets: map[int64]int{}}
}

func (r *rateWindow) add() {
	now := time.Now().Unix()
	r.mu.Lock()
	r.buckets[now]++
	for k := range r.buckets {
		if now-k > int64(r.window/time.Second) {
			delete(r.buckets, k)
		}
	}
	r.mu.Unlock()
}

func (r *rateWindow) perSecond() float64 {
	now := time.Now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	total := 0
	for k, v := range r.buckets {
		if now-k <= int64(r.window/time.Second) {
			total += v
		}
	}
	return float64(total) / r.window.Seconds()
}
