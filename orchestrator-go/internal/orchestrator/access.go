package orchestrator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/audit"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/ratelimit"
)

// access is the gRPC interceptor after the gate: on JobService and
// ComputeService calls (health and reflection stay open) it authenticates
// (--auth: a bearer token; otherwise every call runs as anonymous with every
// right), applies the per-caller rate limit, runs the handler with the
// principal in its context (the handlers check scopes with auth.Require),
// and appends the audit entry of every state-changing call, allowed or
// denied.
type access struct {
	auth    bool
	tokens  *auth.Store // nil when auth is off
	limiter *ratelimit.Limiter
	audit   *audit.Log // nil until NATS is connected
	log     *slog.Logger
}

// guarded reports whether the method is authenticated and rate limited.
func guarded(method string) bool {
	return strings.HasPrefix(method, "/"+ServiceName+"/") || strings.HasPrefix(method, "/"+ComputeServiceName+"/")
}

// action is the audit action of a JobService method ("" when not audited).
func action(method string) string {
	name, ok := strings.CutPrefix(method, "/"+ServiceName+"/")
	if !ok || !audit.Audited(name) {
		return ""
	}
	return name
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

func peerHost(ctx context.Context) string {
	a := peerAddr(ctx)
	if h, _, err := net.SplitHostPort(a); err == nil {
		return h
	}
	return a
}

// certActor is "cert:<subject>" for a verified client certificate (mTLS), "".
func certActor(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
		return "cert:" + ti.State.VerifiedChains[0][0].Subject.String()
	}
	return ""
}

// authenticate finds the call's principal. On failure it returns the token
// id the caller claimed, if any, for the audit trail.
func (a *access) authenticate(ctx context.Context) (*auth.Principal, string, error) {
	if !a.auth {
		return auth.Anonymous(certActor(ctx)), "", nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	return a.tokens.Authenticate(md.Get("authorization"))
}

// allow applies the rate limit to key.
func (a *access) allow(key string) error {
	if a.limiter == nil {
		return nil
	}
	if ok, wait := a.limiter.Allow(key, time.Now()); !ok {
		return apierr.RateLimited(a.limiter.Limit(), wait)
	}
	return nil
}

// rateKey is the principal's rate-limit key: its token, else its peer.
func rateKey(ctx context.Context, p *auth.Principal) string {
	if p != nil && p.Kind == auth.KindToken {
		return "token:" + p.ID
	}
	return "peer:" + peerHost(ctx)
}

// admit authenticates and rate-limits a call. A call refused by the rate
// limit is not audited (an abuser must not turn the limiter into a
// write amplifier on the audit stream); one refused for its credentials is.
func (a *access) admit(ctx context.Context, method string, req any) (context.Context, error) {
	p, claimed, err := a.authenticate(ctx)
	if err != nil {
		// Calls with bad credentials share their peer's bucket.
		if lerr := a.allow(rateKey(ctx, nil)); lerr != nil {
			return nil, lerr
		}
		if act := action(method); act != "" {
			actor := certActor(ctx)
			if actor == "" {
				actor = auth.KindAnonymous
			}
			e := a.entry(ctx, act, actor, req, nil, err, nil)
			if claimed != "" {
				e.Detail = strings.TrimPrefix(e.Detail+"; ", "; ") + fmt.Sprintf("claimed token id %q", claimed)
			}
			a.append(e)
		}
		return nil, err
	}
	if err := a.allow(rateKey(ctx, p)); err != nil {
		return nil, err
	}
	return auth.WithPrincipal(ctx, p), nil
}

func (a *access) append(e *tandemv1.AuditEntry) {
	if a.audit == nil {
		audit.LogLine(a.log, e) // not connected yet (the gate refuses these calls anyway)
		return
	}
	a.audit.Append(e)
}

func (a *access) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !guarded(info.FullMethod) {
		return handler(ctx, req)
	}
	actx, err := a.admit(ctx, info.FullMethod, req)
	if err != nil {
		return nil, apierr.Status(err)
	}
	act := action(info.FullMethod)
	if act == "" {
		return handler(actx, req)
	}
	actx, note := audit.WithNote(actx)
	resp, err := handler(actx, req)
	a.append(a.entry(ctx, act, auth.FromContext(actx).Actor, req, resp, err, note))
	return resp, err
}

type principalStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *principalStream) Context() context.Context { return s.ctx }

func (a *access) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !guarded(info.FullMethod) {
		return handler(srv, ss)
	}
	actx, err := a.admit(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return apierr.Status(err)
	}
	return handler(srv, &principalStream{ServerStream: ss, ctx: actx})
}

// entry builds the audit entry of one call from its request and answer.
func (a *access) entry(ctx context.Context, act, actor string, req, resp any, err error, note *audit.Note) *tandemv1.AuditEntry {
	e := &tandemv1.AuditEntry{Action: act, Actor: actor, Peer: peerAddr(ctx)}
	audit.Outcome(e, err)
	orDefault := func(q string) string {
		if q == "" {
			return config.DefaultQueue
		}
		return q
	}
	var details []string
	switch r := req.(type) {
	case *tandemv1.SubmitJobRequest:
		e.Queue = orDefault(r.GetQueue())
		if out, ok := resp.(*tandemv1.SubmitJobResponse); ok && out.GetJob().GetId() != "" {
			e.JobIds = []string{out.GetJob().GetId()}
			if out.GetDeduplicated() {
				details = append(details, "deduplicated")
			}
		}
	case *tandemv1.SubmitJobsRequest:
		queues := map[string]bool{}
		for _, j := range r.GetJobs() {
			queues[orDefault(j.GetQueue())] = true
		}
		names := make([]string, 0, len(queues))
		for q := range queues {
			names = append(names, q)
		}
		sort.Strings(names)
		if len(names) == 1 {
			e.Queue = names[0]
		} else if len(names) > 1 {
			details = append(details, "queues "+strings.Join(names, ","))
		}
		if out, ok := resp.(*tandemv1.SubmitJobsResponse); ok {
			refused := map[string]int{}
			for _, res := range out.GetResults() {
				if id := res.GetSubmitted().GetJob().GetId(); id != "" {
					e.JobCount++
					if len(e.JobIds) < audit.MaxJobIDs {
						e.JobIds = append(e.JobIds, id)
					}
				} else if res.GetError() != nil {
					refused[res.GetError().GetReason().String()]++
				}
			}
			details = append(details, fmt.Sprintf("%d jobs: %d submitted", len(r.GetJobs()), e.JobCount))
			reasons := make([]string, 0, len(refused))
			for k, n := range refused {
				reasons = append(reasons, fmt.Sprintf("%s x%d", k, n))
			}
			sort.Strings(reasons)
			if len(reasons) > 0 {
				details = append(details, "refused "+strings.Join(reasons, ", "))
			}
		} else {
			details = append(details, fmt.Sprintf("%d jobs", len(r.GetJobs())))
		}
	case *tandemv1.CancelJobRequest:
		e.JobIds = []string{r.GetJobId()}
		if note != nil {
			e.Queue = note.Queue
		}
	case *tandemv1.RetryDeadLettersRequest:
		e.Queue = orDefault(r.GetQueue())
		e.JobIds, e.JobCount = r.GetJobIds(), uint32(len(r.GetJobIds()))
		if out, ok := resp.(*tandemv1.RetryDeadLettersResponse); ok {
			e.JobIds, e.JobCount = out.GetRetriedJobIds(), uint32(len(out.GetRetriedJobIds()))
		}
		if r.GetAll() {
			details = append(details, "all")
		}
	case *tandemv1.PurgeDeadLettersRequest:
		e.Queue = orDefault(r.GetQueue())
		e.JobIds, e.JobCount = r.GetJobIds(), uint32(len(r.GetJobIds()))
		if r.GetAll() {
			details = append(details, "all")
		}
		if out, ok := resp.(*tandemv1.PurgeDeadLettersResponse); ok {
			details = append(details, fmt.Sprintf("purged %d", out.GetPurged()))
		}
	case *tandemv1.PauseQueueRequest:
		e.Queue = orDefault(r.GetQueue())
	case *tandemv1.ResumeQueueRequest:
		e.Queue = orDefault(r.GetQueue())
	}
	if len(e.Queue) > 64 {
		e.Queue = "" // not a valid queue name: the detail keeps nothing of it either
	}
	e.Detail = strings.Join(details, "; ")
	// Job ids come from the caller: keep the well-formed ones only.
	ids := e.JobIds[:0:0]
	for _, id := range e.JobIds {
		if len(id) <= 64 {
			ids = append(ids, id)
		}
	}
	e.JobIds = ids
	return e
}
