// Package tokencmd is `tandem-orchestrator token create|list|revoke`: it
// manages the API tokens in the KV bucket tandem_tokens over the same NATS
// flags (and TANDEM_ORCH_* variables) as the orchestrator, and appends an
// audit entry (actor "cli:<user>@<host>") for every change.
package tokencmd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/audit"
	"github.com/tandem/tandem/orchestrator-go/internal/auth"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
)

const usage = `Usage:
  tandem-orchestrator token create --id ID (--queue Q1,Q2 | --all-queues) (--scope submit,read,cancel,admin | --read-only) [--expires 24h]
      makes a token and prints it once on stdout (nothing else goes to stdout)
  tandem-orchestrator token list
      lists the tokens (ids, scopes, expiry; never secrets)
  tandem-orchestrator token revoke ID
      revokes a token: every orchestrator refuses it within seconds

They reach NATS with the orchestrator's flags (--nats-url, default the
embedded server's --nats-listen address, and the NATS credential flags) and
TANDEM_ORCH_* variables; --help after the command lists every flag.
`

// Actor names the person running the command in the audit trail.
func Actor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return "cli:" + name + "@" + host
}

// Run runs `token ARGS...` and returns the exit code.
func Run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	var err error
	switch args[0] {
	case "create":
		err = create(args[1:], getenv, stdout, stderr)
	case "list":
		err = list(args[1:], getenv, stdout, stderr)
	case "revoke":
		err = revoke(args[1:], getenv, stderr)
	default:
		fmt.Fprintf(stderr, "tandem-orchestrator token: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "tandem-orchestrator token %s: %v\n", args[0], err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "tandem-orchestrator token %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

type usageError struct{ error }

func usageErr(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// session is a connection to NATS with the token bucket and audit stream.
type session struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	tokens jetstream.KeyValue
}

func (s *session) close() {
	_ = s.nc.FlushTimeout(5 * time.Second)
	s.nc.Close()
}

// natsURL is --nats-url, or the embedded server of an orchestrator on this
// host (its --nats-listen address).
func natsURL(cfg *config.Config) (string, error) {
	if cfg.NATSURL != "" {
		return cfg.NATSURL, nil
	}
	if cfg.NATSListen == "" {
		return "", usageErr("--nats-url is required (the embedded server has no --nats-listen address)")
	}
	return "nats://" + cfg.NATSListen, nil
}

func open(ctx context.Context, cfg *config.Config) (*session, error) {
	url, err := natsURL(cfg)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	// The same NATS credentials and TLS as the orchestrator's own connection.
	natsOpts, err := broker.SecurityOptions(cfg.Security, log)
	if err != nil {
		return nil, err
	}
	b, err := broker.New(broker.Options{URL: url, Logger: log, Name: "tandem-orchestrator token", Replicas: cfg.StreamReplicas, ClientOptions: natsOpts})
	if err != nil {
		return nil, err
	}
	nc, err := b.Dial()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	kv, err := auth.OpenBucket(ctx, js, cfg.StreamReplicas)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if _, err := audit.OpenStream(ctx, js, cfg.StreamReplicas, cfg.AuditMaxAge); err != nil {
		nc.Close()
		return nil, err
	}
	return &session{nc: nc, js: js, tokens: kv}, nil
}

// record appends the audit entry of a token change; a failure is reported
// (the change itself is done).
func (s *session) record(ctx context.Context, e *tandemv1.AuditEntry) error {
	e.Actor = Actor()
	e.Peer = s.nc.ConnectedAddr()
	if err := audit.Publish(ctx, s.js, e); err != nil {
		return fmt.Errorf("the token change is done, but its audit entry was not written to %s: %w", broker.AuditStream, err)
	}
	return nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func create(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var (
		id, queues, scopes string
		all, readOnly      bool
		expires            time.Duration
	)
	cfg, rest, err := config.ParseCommand("tandem-orchestrator token create", args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&id, "id", "", "token id: 1 to 64 of A-Z a-z 0-9 - (required)")
		fs.StringVar(&queues, "queue", "", "comma-separated queues the scopes apply to")
		fs.StringVar(&scopes, "scope", "", "comma-separated scopes: "+strings.Join(auth.ScopeNames(), ", "))
		fs.BoolVar(&all, "all-queues", false, "the scopes apply on every queue (needed for ListAudit with admin)")
		fs.BoolVar(&readOnly, "read-only", false, "scope read only (instead of --scope)")
		fs.DurationVar(&expires, "expires", 0, "time to live (e.g. 24h); 0: never expires")
	})
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageErr("unexpected arguments %q", rest)
	}
	if id == "" {
		return usageErr("--id is required (1 to %d of A-Z a-z 0-9 -)", auth.MaxID)
	}
	if err := auth.ValidID(id); err != nil {
		return usageErr("--id: %v", err)
	}
	var scope auth.Scope
	switch {
	case readOnly && scopes != "":
		return usageErr("give --scope or --read-only, not both")
	case readOnly:
		scope = auth.Read
	case scopes == "":
		return usageErr("give --scope (%s) or --read-only", strings.Join(auth.ScopeNames(), ","))
	default:
		if scope, err = auth.ParseScopes(splitList(scopes)); err != nil {
			return usageErr("--scope: %v", err)
		}
	}
	qs := splitList(queues)
	switch {
	case all && len(qs) > 0:
		return usageErr("give --queue or --all-queues, not both")
	case !all && len(qs) == 0:
		return usageErr("give --queue Q1,Q2 or --all-queues")
	}
	perQueue := map[string]auth.Scope{}
	for _, q := range qs {
		if err := ident.Queue("--queue", q); err != nil {
			return usageErr("--queue: %q is not a queue name (1 to %d of %s)", q, ident.MaxQueue, ident.TokenAlphabet)
		}
		perQueue[q] = scope
	}
	if expires < 0 {
		return usageErr("--expires: %s is negative", expires)
	}
	var allScope auth.Scope
	if all {
		allScope = scope
	}
	tok, rec, err := auth.New(id, perQueue, allScope, expires, Actor(), time.Now())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := open(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.close()
	if err := auth.Create(ctx, s.tokens, rec); err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	fmt.Fprintf(stderr, "token %q created: %s; shown once, keep it safe\n", id, describe(rec))
	return s.record(ctx, &tandemv1.AuditEntry{Action: audit.ActionTokenCreate, Code: "OK", Detail: fmt.Sprintf("token %s: %s", id, describe(rec))})
}

// describe is a record's scopes and expiry, for people.
func describe(r *auth.Record) string {
	var parts []string
	if len(r.AllQueues) > 0 {
		parts = append(parts, strings.Join(r.AllQueues, ",")+" on every queue")
	}
	qs := make([]string, 0, len(r.Queues))
	for q := range r.Queues {
		qs = append(qs, q)
	}
	sort.Strings(qs)
	for _, q := range qs {
		parts = append(parts, strings.Join(r.Queues[q], ",")+" on "+q)
	}
	if len(parts) == 0 {
		parts = append(parts, "no scopes")
	}
	exp := "never expires"
	if r.ExpiresAt != nil {
		exp = "expires " + r.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return strings.Join(parts, "; ") + "; " + exp
}

func list(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, rest, err := config.ParseCommand("tandem-orchestrator token list", args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usageErr("unexpected arguments %q", rest)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := open(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.close()
	recs, err := auth.List(ctx, s.tokens)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSCOPES\tEXPIRES\tCREATED\tCREATED BY")
	now := time.Now()
	for _, r := range recs {
		exp := "never"
		if r.ExpiresAt != nil {
			exp = r.ExpiresAt.UTC().Format(time.RFC3339)
			if r.Expired(now) {
				exp += " (expired)"
			}
		}
		d := describe(r)
		d = d[:strings.LastIndex(d, "; ")]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, d, exp, r.CreatedAt.UTC().Format(time.RFC3339), r.CreatedBy)
	}
	return tw.Flush()
}

func revoke(args []string, getenv func(string) string, stderr io.Writer) error {
	cfg, rest, err := config.ParseCommand("tandem-orchestrator token revoke", args, getenv, stderr, nil)
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageErr("give exactly one token id (got %d arguments)", len(rest))
	}
	id := rest[0]
	if err := auth.ValidID(id); err != nil {
		return usageErr("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := open(ctx, cfg)
	if err != nil {
		return err
	}
	defer s.close()
	rec, err := auth.Revoke(ctx, s.tokens, id)
	if err != nil {
		code := "UNAVAILABLE"
		if errors.Is(err, auth.ErrNotFound) {
			code = "NOT_FOUND"
		}
		_ = s.record(ctx, &tandemv1.AuditEntry{Action: audit.ActionTokenRevoke, Code: code, Detail: fmt.Sprintf("token %s: %v", id, err)})
		return err
	}
	detail := "token " + id
	if rec != nil {
		detail += ": " + describe(rec)
	}
	fmt.Fprintf(stderr, "token %q revoked\n", id)
	return s.record(ctx, &tandemv1.AuditEntry{Action: audit.ActionTokenRevoke, Code: "OK", Detail: detail})
}
