// Package workers connects the orchestrator to op workers: user code that
// serves ops of its own (`tandem worker MODULE:OBJECT`, Python over nats-py).
// It keeps the registry of live workers (from their heartbeats) and of every
// op ever registered (in the tandem_ops KV bucket, so a registered op stays
// valid while no worker runs), and runs one pipeline step on a worker.
//
// The mechanism is core NATS request/reply with a queue group per op (see
// proto/tandem/v1/worker.proto and docs/ARCHITECTURE.md): the job's
// durability stays in its queue stream and record, which only the
// orchestrator writes; a step call is like a compute call, with heartbeats
// from the worker instead of a TCP connection to tell it is alive.
package workers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
	"github.com/tandem/tandem/orchestrator-go/internal/metrics"
	"github.com/tandem/tandem/orchestrator-go/internal/provider"
)

// Subjects of the protocol.
const (
	HeartbeatSubject = "tandem.workers.heartbeat"
	opSubjectBase    = "tandem.op."
	// QueueGroup is the queue group every worker subscribes to its ops in.
	QueueGroup = "tandem-workers"
	// ProviderName is OpSpec.provider of ops served by op workers.
	ProviderName = "worker"
)

// OpSubject is where steps of op are requested.
func OpSubject(op string) string { return opSubjectBase + op }

// StepHeartbeatSubject is where a running step's heartbeats arrive.
func StepHeartbeatSubject(jobID string, attempt uint32) string {
	return "tandem.step.hb." + jobID + "." + strconv.FormatUint(uint64(attempt), 10)
}

// StepCancelSubject is where the orchestrator tells a worker to stop a step.
func StepCancelSubject(jobID string, attempt uint32) string {
	return "tandem.step.cancel." + jobID + "." + strconv.FormatUint(uint64(attempt), 10)
}

// Defaults of the liveness rules.
const (
	// defaultInterval is the heartbeat interval assumed when a worker gives none.
	defaultInterval = time.Second
	// liveFor is how many heartbeat intervals a worker stays live without one.
	liveFor = 3
	// lostAfter is how many intervals without a step heartbeat make a
	// running step's worker lost.
	lostAfter = 5
	// acceptWithin is how many intervals a worker has to accept a step (its
	// first heartbeat): a request that a queue group handed to a frozen
	// worker is taken back, uncounted, and sent again.
	acceptWithin = 3
	// maxProgressMessage bounds a progress message kept in a record.
	maxProgressMessage = 256
)

type live struct {
	info     *tandemv1.WorkerInfo
	lastSeen time.Time
	interval time.Duration
}

// Registry is the live workers and the registered ops.
type Registry struct {
	b   *broker.Broker
	m   *metrics.Metrics
	log *slog.Logger
	// computeServes tells whether compute serves an op name: a worker may
	// not register one of those (compute's wins).
	computeServes func(op string) bool

	mu      sync.Mutex
	workers map[string]*live
	ops     map[string]*tandemv1.OpSpec // registered, with or without live workers
	stored  map[string][]byte           // what the ops bucket holds (marshalled), to write only changes
	// shadowWarned remembers the worker/op pairs already warned about.
	shadowWarned map[string]struct{}
	now          func() time.Time
}

// New returns a registry; Start subscribes it.
func New(b *broker.Broker, m *metrics.Metrics, log *slog.Logger, computeServes func(op string) bool) *Registry {
	return &Registry{b: b, m: m, log: log.With("component", "workers"), computeServes: computeServes,
		workers: map[string]*live{}, ops: map[string]*tandemv1.OpSpec{}, stored: map[string][]byte{}, shadowWarned: map[string]struct{}{}, now: time.Now}
}

// Start loads the registered ops and listens to heartbeats, on this and
// every later NATS connection.
func (r *Registry) Start(ctx context.Context) error {
	if err := r.load(ctx); err != nil {
		return err
	}
	r.b.OnConnect(func(nc *nats.Conn) {
		if _, err := nc.Subscribe(HeartbeatSubject, r.onHeartbeat); err != nil {
			r.log.Error("subscribing to worker heartbeats failed", "error", err)
		}
	})
	return nil
}

// load reads the ops bucket.
func (r *Registry) load(ctx context.Context) error {
	kv := r.b.Ops()
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("list registered ops: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		spec := &tandemv1.OpSpec{}
		if proto.Unmarshal(e.Value(), spec) != nil || spec.GetName() != k {
			continue
		}
		r.ops[k] = spec
		r.stored[k] = e.Value()
	}
	return nil
}

// checkInfo validates what a worker announced (it is input like any other).
func checkInfo(w *tandemv1.WorkerInfo) error {
	if err := ident.JobID("worker.id", w.GetId()); err != nil {
		return err
	}
	if len(w.GetOps()) == 0 || len(w.GetOps()) > 1000 {
		return fmt.Errorf("worker %s announces %d ops (1 to 1000)", w.GetId(), len(w.GetOps()))
	}
	for _, op := range w.GetOps() {
		if err := ident.Op("op", op.GetName()); err != nil {
			return err
		}
		if len(op.GetParams()) > ident.MaxParams {
			return fmt.Errorf("op %s declares %d params, more than %d", op.GetName(), len(op.GetParams()), ident.MaxParams)
		}
		for _, p := range op.GetParams() {
			if err := ident.ParamName("param", p.GetName()); err != nil {
				return err
			}
		}
		if err := ident.Text("description", op.GetDescription(), 1024); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) onHeartbeat(msg *nats.Msg) {
	w := &tandemv1.WorkerInfo{}
	if err := proto.Unmarshal(msg.Data, w); err != nil {
		r.log.Warn("undecodable worker heartbeat ignored", "error", err)
		return
	}
	if err := checkInfo(w); err != nil {
		r.log.Warn("worker heartbeat rejected", "worker", apierr.Quote(w.GetId()), "error", err)
		return
	}
	interval := w.GetHeartbeatInterval().AsDuration()
	if interval <= 0 {
		interval = defaultInterval
	}
	interval = min(max(interval, 100*time.Millisecond), time.Minute)
	var changed []*tandemv1.OpSpec
	r.mu.Lock()
	if w.GetDraining() {
		delete(r.workers, w.GetId())
	} else {
		r.workers[w.GetId()] = &live{info: w, lastSeen: r.now(), interval: interval}
	}
	for _, op := range w.GetOps() {
		if r.computeServes(op.GetName()) {
			// Compute serves it: a worker cannot shadow a built-in op.
			if _, warned := r.shadowWarned[w.GetId()+" "+op.GetName()]; !warned {
				r.shadowWarned[w.GetId()+" "+op.GetName()] = struct{}{}
				r.log.Warn("a worker registers an op the compute service serves; compute's is used, the worker's ignored",
					"worker", w.GetId(), "op", op.GetName())
			}
			continue
		}
		spec := proto.Clone(op).(*tandemv1.OpSpec)
		spec.Provider, spec.LiveWorkers = ProviderName, 0
		data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(spec)
		if string(r.stored[spec.GetName()]) != string(data) {
			r.stored[spec.GetName()] = data
			changed = append(changed, spec)
		}
		r.ops[spec.GetName()] = spec
	}
	r.mu.Unlock()
	for _, spec := range changed {
		r.log.Info("op registered by a worker", "op", spec.GetName(), "worker", w.GetId())
		go r.persist(spec)
	}
}

func (r *Registry) persist(spec *tandemv1.OpSpec) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(spec)
	if _, err := r.b.Ops().Put(ctx, spec.GetName(), data); err != nil {
		r.log.Warn("storing a registered op failed (it is registered in memory)", "op", spec.GetName(), "error", err)
		r.mu.Lock()
		delete(r.stored, spec.GetName()) // write it again on the next heartbeat
		r.mu.Unlock()
	}
}

// liveLocked returns the live workers, dropping the silent ones.
func (r *Registry) liveLocked() []*live {
	now := r.now()
	out := make([]*live, 0, len(r.workers))
	for id, l := range r.workers {
		if now.Sub(l.lastSeen) > liveFor*l.interval {
			delete(r.workers, id)
			continue
		}
		out = append(out, l)
	}
	return out
}

// Serves reports whether op is an op registered by workers (live or not).
func (r *Registry) Serves(op string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ops[op]
	return ok && !r.computeServes(op)
}

// serving returns how many live workers serve op and the longest of their
// heartbeat intervals (defaultInterval when none is live).
func (r *Registry) serving(op string) (n int, interval time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.liveLocked() {
		for _, o := range l.info.GetOps() {
			if o.GetName() == op {
				n++
				interval = max(interval, l.interval)
				break
			}
		}
	}
	if interval == 0 {
		interval = defaultInterval
	}
	return n, interval
}

// Ops are the registered ops, each with its live worker count.
func (r *Registry) Ops() []*tandemv1.OpSpec {
	r.mu.Lock()
	defer r.mu.Unlock()
	count := map[string]uint32{}
	for _, l := range r.liveLocked() {
		for _, o := range l.info.GetOps() {
			count[o.GetName()]++
		}
	}
	out := make([]*tandemv1.OpSpec, 0, len(r.ops))
	for name, spec := range r.ops {
		if r.computeServes(name) {
			continue
		}
		s := proto.Clone(spec).(*tandemv1.OpSpec)
		s.LiveWorkers = count[name]
		r.m.LiveWorkers.WithLabelValues(name).Set(float64(s.LiveWorkers))
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *tandemv1.OpSpec) int {
		if a.GetName() < b.GetName() {
			return -1
		}
		if a.GetName() > b.GetName() {
			return 1
		}
		return 0
	})
	return out
}

// List returns the live workers, by id.
func (r *Registry) List() []*tandemv1.WorkerInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	ls := r.liveLocked()
	out := make([]*tandemv1.WorkerInfo, 0, len(ls))
	for _, l := range ls {
		w := proto.Clone(l.info).(*tandemv1.WorkerInfo)
		w.LastHeartbeat = timestamppb.New(l.lastSeen)
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *tandemv1.WorkerInfo) int {
		if a.GetId() < b.GetId() {
			return -1
		}
		return 1
	})
	return out
}

// Step is one step to run on a worker.
type Step struct {
	JobID       string
	Attempt     uint32
	Index       int
	Step        *tandemv1.Step
	Input       []byte
	Traceparent string
	// InlineLimit: inputs and outputs larger than this travel through the
	// payloads object store.
	InlineLimit int
	// OnProgress is called (from the caller's goroutine) with each progress
	// report that changed.
	OnProgress func(fraction float64, message string)
}

// Output is a step's result.
type Output struct {
	Data        []byte
	ContentType string
}

// Call runs one step on a live worker serving its op, until it answers,
// ctx ends (deadline or cancel: the worker is told to stop), or the worker
// stops sending heartbeats (WORKER_LOST, retryable). With no live worker it
// fails at once with OP_UNAVAILABLE wrapped in provider.ErrUnreachable: the
// job is handed back with its attempt untouched.
func (r *Registry) Call(ctx context.Context, s Step) (out Output, err error) {
	op := s.Step.GetOp()
	start := time.Now()
	defer func() {
		outcome := "ok"
		if err != nil {
			outcome = apierr.From(err).Reason.String()
		}
		r.m.StepLatency.WithLabelValues(op, outcome).Observe(time.Since(start).Seconds())
	}()
	live, interval := r.serving(op)
	if live == 0 {
		return Output{}, fmt.Errorf("%w: %w", provider.ErrUnreachable, apierr.New(tandemv1.ErrorReason_OP_UNAVAILABLE,
			fmt.Sprintf("step %d (%s): no live worker serves the op; the job waits for one", s.Index, op), apierr.KeyStep, strconv.Itoa(s.Index), apierr.KeyOp, op))
	}
	nc := r.b.NC()
	req := &tandemv1.StepRequest{JobId: s.JobID, Attempt: s.Attempt, Index: uint32(s.Index), Step: s.Step,
		Traceparent: s.Traceparent, InlineLimit: uint64(s.InlineLimit)}
	if dl, ok := ctx.Deadline(); ok {
		req.Timeout = durationpb.New(time.Until(dl))
	}
	base := fmt.Sprintf("step/%s/%d/%d", s.JobID, s.Attempt, s.Index)
	req.OutputObject = base + "/out"
	if len(s.Input) > s.InlineLimit {
		if _, err := r.b.Payloads().PutBytes(ctx, base+"/in", s.Input); err != nil {
			return Output{}, apierr.BrokerUnavailable(fmt.Errorf("step input to object store: %w", err))
		}
		req.InputObject = base + "/in"
		defer func() { _ = r.b.Payloads().Delete(context.Background(), base+"/in") }()
	} else {
		req.Input = s.Input
	}
	r.m.StepBytes.WithLabelValues(op, "in").Add(float64(len(s.Input)))
	data, err := proto.Marshal(req)
	if err != nil {
		return Output{}, apierr.Internal("encode step request: %v", err)
	}

	// Heartbeats first, so none is missed.
	beats := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(StepHeartbeatSubject(s.JobID, s.Attempt), beats)
	if err != nil {
		return Output{}, apierr.BrokerUnavailable(err)
	}
	defer func() { _ = sub.Unsubscribe() }()

	callCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	type reply struct {
		msg *nats.Msg
		err error
	}
	replies := make(chan reply, 1)
	go func() {
		m, err := nc.RequestMsgWithContext(callCtx, &nats.Msg{Subject: OpSubject(op), Data: data})
		replies <- reply{m, err}
	}()
	lastBeat := time.Now()
	accepted := false
	check := time.NewTicker(interval)
	defer check.Stop()
	stop := func() { _ = nc.Publish(StepCancelSubject(s.JobID, s.Attempt), nil) }
	var lastFraction = -1.0
	var lastMessage string
	for {
		select {
		case rep := <-replies:
			if rep.err != nil {
				switch {
				case errors.Is(rep.err, nats.ErrNoResponders):
					return Output{}, fmt.Errorf("%w: %w", provider.ErrUnreachable, apierr.New(tandemv1.ErrorReason_OP_UNAVAILABLE,
						fmt.Sprintf("step %d (%s): no worker answered; the job waits for one", s.Index, op), apierr.KeyStep, strconv.Itoa(s.Index), apierr.KeyOp, op))
				case ctx.Err() != nil:
					stop()
					return Output{}, ctxErr(ctx, s, op)
				}
				return Output{}, apierr.BrokerUnavailable(rep.err)
			}
			return r.decode(ctx, rep.msg, s, op, base+"/out")
		case m := <-beats:
			lastBeat, accepted = time.Now(), true
			hb := &tandemv1.StepHeartbeat{}
			if proto.Unmarshal(m.Data, hb) == nil && hb.GetHasProgress() && s.OnProgress != nil {
				f := min(max(hb.GetProgress(), 0), 1)
				msg := hb.GetMessage()
				if len(msg) > maxProgressMessage || ident.Text("message", msg, maxProgressMessage) != nil {
					msg = apierr.Quote(msg) // bounded and printable
				}
				if f != lastFraction || msg != lastMessage {
					lastFraction, lastMessage = f, msg
					s.OnProgress(f, msg)
				}
			}
		case <-check.C:
			if !accepted && time.Since(lastBeat) > acceptWithin*interval {
				cancel()
				stop()
				return Output{}, fmt.Errorf("%w: %w", provider.ErrUnreachable, apierr.New(tandemv1.ErrorReason_OP_UNAVAILABLE,
					fmt.Sprintf("step %d (%s): no worker accepted the step within %s (the one picked may be frozen); it is sent again", s.Index, op, acceptWithin*interval),
					apierr.KeyStep, strconv.Itoa(s.Index), apierr.KeyOp, op))
			}
			if time.Since(lastBeat) > lostAfter*interval {
				cancel()
				stop()
				return Output{}, apierr.New(tandemv1.ErrorReason_WORKER_LOST,
					fmt.Sprintf("step %d (%s): the worker sent no heartbeat for %s (killed, frozen or cut off); the attempt is retried", s.Index, op, time.Since(lastBeat).Round(time.Millisecond)),
					apierr.KeyStep, strconv.Itoa(s.Index), apierr.KeyOp, op)
			}
		case <-ctx.Done():
			stop()
			return Output{}, ctxErr(ctx, s, op)
		}
	}
}

func ctxErr(ctx context.Context, s Step, op string) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return apierr.Timeout("step %d (%s) ran past the job's deadline", s.Index, op)
	}
	return apierr.Cancelled("step %d (%s) cancelled", s.Index, op)
}

func (r *Registry) decode(ctx context.Context, m *nats.Msg, s Step, op, outObject string) (Output, error) {
	resp := &tandemv1.StepResponse{}
	if err := proto.Unmarshal(m.Data, resp); err != nil {
		return Output{}, apierr.Internal("step %d (%s): undecodable worker answer: %v", s.Index, op, err)
	}
	if e := resp.GetError(); e != nil {
		err := apierr.FromProto(e)
		err.Remote = true
		if err.Metadata == nil {
			err.Metadata = map[string]string{}
		}
		err.Metadata[apierr.KeyStep], err.Metadata[apierr.KeyOp] = strconv.Itoa(s.Index), op
		if ms, perr := strconv.ParseInt(err.Metadata[apierr.KeyRetryAfterMs], 10, 64); perr == nil && ms > 0 {
			err.RetryAfter = min(time.Duration(ms)*time.Millisecond, time.Minute) // a full worker's hint
		}
		return Output{}, err
	}
	out := Output{Data: resp.GetOutput(), ContentType: resp.GetContentType()}
	if name := resp.GetOutputObject(); name != "" {
		if name != outObject {
			return Output{}, apierr.Internal("step %d (%s): worker wrote its output to %q, not %q", s.Index, op, name, outObject)
		}
		data, err := r.b.Payloads().GetBytes(ctx, name)
		if err != nil {
			return Output{}, apierr.BrokerUnavailable(fmt.Errorf("step output from object store: %w", err))
		}
		_ = r.b.Payloads().Delete(context.Background(), name)
		out.Data = data
	}
	r.m.StepBytes.WithLabelValues(op, "out").Add(float64(len(out.Data)))
	return out, nil
}
