// Package computetest is an in-process stub of tandem.v1.ComputeService for
// tests: a few ops, programmable failures, and Stop/Restart on the same
// address to simulate an outage.
package computetest

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

// Ops served by the stub:
//
//	hash.sha256            output = sha256(input)
//	test.echo              output = input
//	test.fail              fails with code (default UNAVAILABLE) while attempt <= until (default: always),
//	                       or, with calls, for the job's first `calls` calls
//	test.sleep             sleeps ms milliseconds (honours cancellation), then echoes
//	test.block             blocks until the call is cancelled or Release is closed
//	test.stall             attempt 1 blocks until StallRelease is closed; output "attempt-N"
//	test.flaky             fails with UNAVAILABLE (and ErrorInfo) while Failing is set
var ops = []*tandemv1.OpSpec{
	{Name: "hash.sha256", OutputContentType: "application/octet-stream"},
	{Name: "test.echo", OutputContentType: "application/octet-stream"},
	{Name: "test.fail", Params: []*tandemv1.ParamSpec{
		{Name: "code", Type: tandemv1.ParamType_PARAM_TYPE_ENUM, Choices: []string{"UNAVAILABLE", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "INTERNAL", "DEADLINE_EXCEEDED"}, DefaultValue: "UNAVAILABLE"},
		{Name: "until", Type: tandemv1.ParamType_PARAM_TYPE_INT, Min: 0, Max: 1000},
		{Name: "calls", Type: tandemv1.ParamType_PARAM_TYPE_INT, Min: 0, Max: 1000},
	}},
	{Name: "test.sleep", Params: []*tandemv1.ParamSpec{{Name: "ms", Type: tandemv1.ParamType_PARAM_TYPE_INT, Min: 0, Max: 600000, Required: true}}},
	{Name: "test.block"},
	{Name: "test.flaky"},
	{Name: "test.stall"},
	{Name: "test.level", Params: []*tandemv1.ParamSpec{{Name: "level", Type: tandemv1.ParamType_PARAM_TYPE_INT, Min: 1, Max: 22}}},
}

// Server is a running stub.
type Server struct {
	tandemv1.UnimplementedComputeServiceServer
	Addr string
	// Calls counts Transform calls per job id.
	mu    sync.Mutex
	calls map[string]int
	trace map[string]string
	total atomic.Int64
	// Started receives the job id of every test.block call when it starts.
	Started chan string
	// Release unblocks every test.block call when closed.
	Release chan struct{}
	// StallRelease unblocks attempt 1 of test.stall.
	StallRelease chan struct{}
	// Failing makes test.flaky fail.
	Failing atomic.Bool

	srv *grpc.Server
	t   testing.TB

	tls   *tls.Config
	token atomic.Pointer[string]
	// LastAuth is the authorization metadata of the last call.
	lastAuth atomic.Pointer[string]
}

// StartSecure serves the stub with TLS (tlsConfig, nil: plaintext) and,
// when token is set, refuses calls without "authorization: Bearer <token>"
// (UNAUTHENTICATED).
func StartSecure(t testing.TB, tlsConfig *tls.Config, token string) *Server {
	s := &Server{calls: map[string]int{}, trace: map[string]string{}, Started: make(chan string, 1000), Release: make(chan struct{}), StallRelease: make(chan struct{}), t: t, tls: tlsConfig}
	s.SetToken(token)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = lis.Addr().String()
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

// SetToken changes the accepted bearer token ("" : none needed).
func (s *Server) SetToken(token string) { s.token.Store(&token) }

// LastAuth is the authorization metadata of the last call ("" if none).
func (s *Server) LastAuth() string {
	if p := s.lastAuth.Load(); p != nil {
		return *p
	}
	return ""
}

func (s *Server) checkToken(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	got := ""
	if v := md.Get("authorization"); len(v) > 0 {
		got = v[0]
	}
	s.lastAuth.Store(&got)
	if want := s.token.Load(); want != nil && *want != "" && got != "Bearer "+*want {
		return nil, status.Error(codes.Unauthenticated, "stub compute: bad or missing bearer token")
	}
	return handler(ctx, req)
}

// Start serves the stub on a random loopback port until the test ends.
func Start(t testing.TB) *Server {
	s := &Server{calls: map[string]int{}, trace: map[string]string{}, Started: make(chan string, 1000), Release: make(chan struct{}), StallRelease: make(chan struct{}), t: t}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.Addr = lis.Addr().String()
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) serve(lis net.Listener) {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(80 << 20), grpc.UnaryInterceptor(s.checkToken)}
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	srv := grpc.NewServer(opts...)
	tandemv1.RegisterComputeServiceServer(srv, s)
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

// Stop stops serving (the address refuses connections).
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// Restart serves again on the same address.
func (s *Server) Restart() {
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", s.Addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("restart stub compute: %v", err)
	}
	s.serve(lis)
}

// Calls returns how many times Transform ran for a job.
func (s *Server) Calls(jobID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[jobID]
}

// Traceparent returns the traceparent metadata of the job's last call.
func (s *Server) Traceparent(jobID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.trace[jobID]
}

// Total returns the number of Transform calls.
func (s *Server) Total() int64 { return s.total.Load() }

// ListOps implements ComputeService.
func (s *Server) ListOps(context.Context, *tandemv1.ListOpsRequest) (*tandemv1.ListOpsResponse, error) {
	return &tandemv1.ListOpsResponse{Ops: ops, Limits: &tandemv1.Limits{MaxRequestBytes: 64 << 20, MaxSteps: 8}}, nil
}

func errStatus(code codes.Code, reason tandemv1.ErrorReason, msg string) error {
	st, _ := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: "tandem.dev", Metadata: map[string]string{"op": "test.fail"}})
	return st.Err()
}

// TransformBatch implements ComputeService: each item as Transform, errors per item.
func (s *Server) TransformBatch(ctx context.Context, req *tandemv1.TransformBatchRequest) (*tandemv1.TransformBatchResponse, error) {
	out := &tandemv1.TransformBatchResponse{}
	for _, it := range req.GetItems() {
		r, err := s.Transform(ctx, it)
		if err != nil {
			st := status.Convert(err)
			e := &tandemv1.Error{Code: int32(st.Code()), Message: st.Message()}
			for _, d := range st.Details() {
				if ei, ok := d.(*errdetails.ErrorInfo); ok {
					e.Reason = tandemv1.ErrorReason(tandemv1.ErrorReason_value[ei.GetReason()])
					e.Metadata = ei.GetMetadata()
				}
			}
			out.Results = append(out.Results, &tandemv1.TransformResult{Outcome: &tandemv1.TransformResult_Error{Error: e}})
			continue
		}
		out.Results = append(out.Results, &tandemv1.TransformResult{Outcome: &tandemv1.TransformResult_Response{Response: r}})
	}
	return out, nil
}

// Transform implements ComputeService (one step pipelines are enough here).
func (s *Server) Transform(ctx context.Context, req *tandemv1.TransformRequest) (*tandemv1.TransformResponse, error) {
	s.mu.Lock()
	s.calls[req.GetJobId()]++
	nCalls := s.calls[req.GetJobId()]
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("traceparent")) > 0 {
		s.trace[req.GetJobId()] = md.Get("traceparent")[0]
	}
	s.mu.Unlock()
	s.total.Add(1)
	in := req.GetInput()
	for _, st := range req.GetSteps() {
		switch st.GetOp() {
		case "hash.sha256":
			h := sha256.Sum256(in)
			in = h[:]
		case "test.echo", "test.level":
		case "test.fail":
			until := int64(1 << 30)
			if u, ok := st.GetParams()["until"]; ok {
				until, _ = strconv.ParseInt(u, 10, 64)
			}
			failing := int64(req.GetAttempt()) <= until
			if c, ok := st.GetParams()["calls"]; ok {
				n, _ := strconv.Atoi(c)
				failing = nCalls <= n
			}
			if failing {
				code := st.GetParams()["code"]
				switch code {
				case "INVALID_ARGUMENT":
					return nil, errStatus(codes.InvalidArgument, tandemv1.ErrorReason_INJECTED_FAULT, "injected permanent fault")
				case "RESOURCE_EXHAUSTED":
					return nil, errStatus(codes.ResourceExhausted, tandemv1.ErrorReason_OVERLOADED, "injected overload")
				case "INTERNAL":
					return nil, errStatus(codes.Internal, tandemv1.ErrorReason_INTERNAL_ERROR, "injected internal error")
				case "DEADLINE_EXCEEDED":
					return nil, errStatus(codes.DeadlineExceeded, tandemv1.ErrorReason_TIMEOUT, "injected timeout")
				default:
					return nil, errStatus(codes.Unavailable, tandemv1.ErrorReason_INJECTED_FAULT, "injected transient fault")
				}
			}
		case "test.flaky":
			if s.Failing.Load() {
				return nil, errStatus(codes.Unavailable, tandemv1.ErrorReason_INJECTED_FAULT, "flaky op failing")
			}
		case "test.stall":
			if req.GetAttempt() == 1 {
				s.Started <- req.GetJobId()
				<-s.StallRelease
			}
			in = []byte("attempt-" + strconv.Itoa(int(req.GetAttempt())))
		case "test.sleep":
			ms, _ := strconv.Atoi(st.GetParams()["ms"])
			select {
			case <-time.After(time.Duration(ms) * time.Millisecond):
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		case "test.block":
			s.Started <- req.GetJobId()
			select {
			case <-s.Release:
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		default:
			return nil, errStatus(codes.InvalidArgument, tandemv1.ErrorReason_UNKNOWN_OP, "unknown op "+st.GetOp())
		}
	}
	return &tandemv1.TransformResponse{Output: in, ContentType: "application/octet-stream"}, nil
}
