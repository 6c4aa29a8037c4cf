// Package workertest is an in-process op worker for the orchestrator's own
// tests: it speaks the op-worker protocol (proto/tandem/v1/worker.proto) over
// a real NATS connection. The real worker is the Python `tandem worker`,
// tested end to end in tests/.
package workertest

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/workers"
)

// Ops served:
//
//	user.upper   output = upper-cased input
//	user.slow    sleeps ms (param) while heartbeating and reporting progress; stops when cancelled
//	user.fail    fails with OP_FAILED (permanent) or, with retryable=true, OP_ERROR
var Ops = []*tandemv1.OpSpec{
	{Name: "user.upper", Description: "Upper-cases text.", OutputContentType: "text/plain"},
	{Name: "user.slow", Params: []*tandemv1.ParamSpec{{Name: "ms", Type: tandemv1.ParamType_PARAM_TYPE_INT, Min: 0, Max: 600000, Required: true}}},
	{Name: "user.fail", Params: []*tandemv1.ParamSpec{{Name: "retryable", Type: tandemv1.ParamType_PARAM_TYPE_BOOL}}},
}

// Worker is a running stub worker.
type Worker struct {
	ID string
	nc *nats.Conn
	// Frozen stops heartbeats and answers (as SIGSTOP would).
	Frozen atomic.Bool
	// Calls counts steps started.
	Calls     atomic.Int64
	Cancelled atomic.Int64
	stop      chan struct{}
	wg        sync.WaitGroup
}

// Start connects to url and serves until the test ends.
func Start(t testing.TB, url, id string) *Worker { return StartWith(t, url, id) }

// StartWith is Start with extra connection options (credentials, TLS).
func StartWith(t testing.TB, url, id string, opts ...nats.Option) *Worker {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	w := &Worker{ID: id, nc: nc, stop: make(chan struct{})}
	for _, op := range Ops {
		if _, err := nc.QueueSubscribe(workers.OpSubject(op.GetName()), workers.QueueGroup, w.serve); err != nil {
			t.Fatal(err)
		}
	}
	w.beat()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tk.C:
				w.beat()
			}
		}
	}()
	_ = nc.Flush()
	t.Cleanup(w.Close)
	return w
}

// Close stops the worker.
func (w *Worker) Close() {
	select {
	case <-w.stop:
		return
	default:
	}
	close(w.stop)
	w.wg.Wait()
	w.nc.Close()
}

func (w *Worker) beat() {
	if w.Frozen.Load() {
		return
	}
	data, _ := proto.Marshal(&tandemv1.WorkerInfo{Id: w.ID, Ops: Ops, Concurrency: 8, Pool: "thread",
		HeartbeatInterval: durationpb.New(200 * time.Millisecond)})
	_ = w.nc.Publish(workers.HeartbeatSubject, data)
}

func (w *Worker) serve(msg *nats.Msg) {
	req := &tandemv1.StepRequest{}
	if err := proto.Unmarshal(msg.Data, req); err != nil {
		return
	}
	if w.Frozen.Load() {
		return // a frozen process reads nothing
	}
	w.Calls.Add(1)
	if req.GetInputObject() != "" {
		// A large input: from the payloads object store, as the Python worker does.
		if err := w.payloads(func(ctx context.Context, store jetstream.ObjectStore) error {
			data, err := store.GetBytes(ctx, req.GetInputObject())
			req.Input = data
			return err
		}); err != nil {
			w.respond(msg, &tandemv1.StepResponse{Error: &tandemv1.Error{Code: 14, Reason: tandemv1.ErrorReason_BROKER_UNAVAILABLE, Message: err.Error()}})
			return
		}
	}
	hb, _ := proto.Marshal(&tandemv1.StepHeartbeat{JobId: req.GetJobId(), Attempt: req.GetAttempt(), WorkerId: w.ID})
	_ = w.nc.Publish(workers.StepHeartbeatSubject(req.GetJobId(), req.GetAttempt()), hb)
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		resp := w.run(req)
		for w.Frozen.Load() {
			select {
			case <-w.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		if uint64(len(resp.GetOutput())) > req.GetInlineLimit() && req.GetInlineLimit() > 0 && req.GetOutputObject() != "" {
			out := resp.Output
			if err := w.payloads(func(ctx context.Context, store jetstream.ObjectStore) error {
				_, err := store.PutBytes(ctx, req.GetOutputObject(), out)
				return err
			}); err == nil {
				resp.Output, resp.OutputObject = nil, req.GetOutputObject()
			} else {
				resp = &tandemv1.StepResponse{Error: &tandemv1.Error{Code: 14, Reason: tandemv1.ErrorReason_BROKER_UNAVAILABLE, Message: err.Error()}}
			}
		}
		w.respond(msg, resp)
	}()
}

func (w *Worker) respond(msg *nats.Msg, resp *tandemv1.StepResponse) {
	resp.WorkerId = w.ID
	data, _ := proto.Marshal(resp)
	_ = msg.Respond(data)
}

// payloads runs fn on the tandem_payloads object store.
func (w *Worker) payloads(fn func(ctx context.Context, store jetstream.ObjectStore) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(w.nc)
	if err != nil {
		return err
	}
	store, err := js.ObjectStore(ctx, "tandem_payloads")
	if err != nil {
		return err
	}
	return fn(ctx, store)
}

func (w *Worker) run(req *tandemv1.StepRequest) *tandemv1.StepResponse {
	switch req.GetStep().GetOp() {
	case "user.upper":
		return &tandemv1.StepResponse{Output: []byte(strings.ToUpper(string(req.GetInput()))), ContentType: "text/plain"}
	case "user.fail":
		if req.GetStep().GetParams()["retryable"] == "true" {
			return &tandemv1.StepResponse{Error: &tandemv1.Error{Code: 2, Reason: tandemv1.ErrorReason_OP_ERROR, Message: "ValueError: flaky"}}
		}
		return &tandemv1.StepResponse{Error: &tandemv1.Error{Code: 3, Reason: tandemv1.ErrorReason_OP_FAILED, Message: "PermanentError: bad input"}}
	case "user.slow":
		ms := 0
		for _, c := range req.GetStep().GetParams()["ms"] {
			ms = ms*10 + int(c-'0')
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sub, _ := w.nc.Subscribe(workers.StepCancelSubject(req.GetJobId(), req.GetAttempt()), func(*nats.Msg) { cancel() })
		defer func() { _ = sub.Unsubscribe() }()
		end := time.Now().Add(time.Duration(ms) * time.Millisecond)
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		start := time.Now()
		for time.Now().Before(end) {
			select {
			case <-ctx.Done():
				w.Cancelled.Add(1)
				return &tandemv1.StepResponse{Error: &tandemv1.Error{Code: 1, Reason: tandemv1.ErrorReason_CANCELLED, Message: "cancelled"}}
			case <-tk.C:
				if !w.Frozen.Load() {
					f := float64(time.Since(start)) / float64(time.Duration(ms)*time.Millisecond)
					hb, _ := proto.Marshal(&tandemv1.StepHeartbeat{JobId: req.GetJobId(), Attempt: req.GetAttempt(), WorkerId: w.ID, Progress: f, Message: "sleeping", HasProgress: true})
					_ = w.nc.Publish(workers.StepHeartbeatSubject(req.GetJobId(), req.GetAttempt()), hb)
				}
			}
		}
		return &tandemv1.StepResponse{Output: req.GetInput(), ContentType: "application/octet-stream"}
	}
	return &tandemv1.StepResponse{Error: &tandemv1.Error{Code: 3, Reason: tandemv1.ErrorReason_UNKNOWN_OP, Message: "unknown op"}}
}
