package auth

import (
	"context"

	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// Principal kinds.
const (
	KindToken     = "token"     // a bearer token (auth on)
	KindAnonymous = "anonymous" // auth off: every right
	KindSystem    = "system"    // the orchestrator itself (the dashboard's sampler): read on every queue
)

// Principal is who a call runs as and what it may do.
type Principal struct {
	Kind string
	// ID is the token id (KindToken).
	ID string
	// Actor is how the audit trail names the caller: "token:<id>",
	// "cert:<subject>", "anonymous", "system".
	Actor  string
	queues map[string]Scope
	all    Scope
}

// Anonymous is the principal of every call when auth is off: every scope on
// every queue. actor names it in the audit trail ("anonymous", or
// "cert:<subject>" for a verified client certificate).
func Anonymous(actor string) *Principal {
	if actor == "" {
		actor = KindAnonymous
	}
	return &Principal{Kind: KindAnonymous, Actor: actor, all: AllScopes}
}

// System is the orchestrator's own principal for in-process reads.
func System() *Principal { return &Principal{Kind: KindSystem, Actor: KindSystem, all: Read} }

// Scopes are p's scopes on queue.
func (p *Principal) Scopes(queue string) Scope {
	if p == nil {
		return 0
	}
	if queue == "" {
		queue = config.DefaultQueue
	}
	return p.all | p.queues[queue]
}

// Can reports whether p has scope s on queue.
func (p *Principal) Can(queue string, s Scope) bool { return p.Scopes(queue)&s == s }

// CanEvery reports whether p has scope s on every queue (an all-queues scope).
func (p *Principal) CanEvery(s Scope) bool { return p != nil && p.all&s == s }

// ReadsAny reports whether p may read at least one queue.
func (p *Principal) ReadsAny() bool {
	if p == nil {
		return false
	}
	if p.all&Read != 0 {
		return true
	}
	for _, s := range p.queues {
		if s&Read != 0 {
			return true
		}
	}
	return false
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext is the principal the call runs as (nil: none, which every
// check below refuses).
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(ctxKey{}).(*Principal)
	return p
}

// Can reports whether the call's principal has scope s on queue ("" is the
// default queue). With auth off every call runs as Anonymous, so this is
// always true; a context without a principal never is (fail closed).
func Can(ctx context.Context, queue string, s Scope) bool { return FromContext(ctx).Can(queue, s) }

// Require answers PERMISSION_DENIED (metadata scope, queue) unless the
// call's principal has scope s on queue.
func Require(ctx context.Context, queue string, s Scope) error {
	if queue == "" {
		queue = config.DefaultQueue
	}
	if Can(ctx, queue, s) {
		return nil
	}
	return apierr.PermissionDenied(s.String(), queue)
}

// RequireEvery answers PERMISSION_DENIED (queue "*") unless the call's
// principal has scope s on every queue.
func RequireEvery(ctx context.Context, s Scope) error {
	if FromContext(ctx).CanEvery(s) {
		return nil
	}
	return apierr.PermissionDenied(s.String(), "*")
}
