// Package audit is the audit trail: one tandem.v1.AuditEntry per
// state-changing call (submit, cancel, dead-letter retry and purge, pause,
// resume, token create and revoke), allowed or denied, appended to the
// JetStream stream TANDEM_AUDIT (subject tandem.audit.<action>, retention
// --audit-max-age) and written as a JSON log line (msg "audit"). Appends
// from the API are asynchronous publishes, so a call waits for no extra
// round trip; a publish that fails is logged at error level with the whole
// entry (the log line is the second copy).
package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
)

// Actions are the audited actions: the state-changing JobService methods and
// the token commands.
var Actions = []string{
	"SubmitJob", "SubmitJobs", "CancelJob", "RetryDeadLetters", "PurgeDeadLetters", "PauseQueue", "ResumeQueue",
	ActionTokenCreate, ActionTokenRevoke,
}

// Token actions.
const (
	ActionTokenCreate = "token.create"
	ActionTokenRevoke = "token.revoke"
)

// Audited reports whether action is audited.
func Audited(action string) bool { return slices.Contains(Actions, action) }

// Limits of one entry.
const (
	MaxJobIDs = 100  // job ids listed; job_count has the total
	MaxDetail = 1024 // bytes of detail
	MaxActor  = 256  // bytes of actor (a certificate subject can be long)
)

// Subject is the subject an entry of action is published on.
func Subject(action string) string {
	return "tandem.audit." + strings.ReplaceAll(action, ".", "_")
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// Bound caps the entry's lists and strings to the documented limits.
func Bound(e *tandemv1.AuditEntry) {
	if e.JobCount < uint32(len(e.JobIds)) {
		e.JobCount = uint32(len(e.JobIds))
	}
	if len(e.JobIds) > MaxJobIDs {
		e.JobIds = e.JobIds[:MaxJobIDs]
	}
	e.Detail = cut(e.Detail, MaxDetail)
	e.Actor = cut(e.Actor, MaxActor)
}

// CodeName is a gRPC code's canonical name ("OK", "PERMISSION_DENIED").
func CodeName(c codes.Code) string {
	s := c.String() // "PermissionDenied"
	if c == codes.OK {
		return "OK"
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// Outcome fills code and reason from err (nil: OK).
func Outcome(e *tandemv1.AuditEntry, err error) {
	if err == nil {
		e.Code = "OK"
		return
	}
	ae := apierr.From(err)
	e.Code = CodeName(ae.Code)
	e.Reason = ae.Reason.String()
}

// LogLine writes the entry as a JSON log line (msg "audit").
func LogLine(log *slog.Logger, e *tandemv1.AuditEntry) {
	log.Info("audit", "actor", e.GetActor(), "action", e.GetAction(), "queue", e.GetQueue(), "job_ids", e.GetJobIds(),
		"job_count", e.GetJobCount(), "code", e.GetCode(), "reason", e.GetReason(), "peer", e.GetPeer(), "detail", e.GetDetail())
}

// Publish appends one entry synchronously (the token commands).
func Publish(ctx context.Context, js jetstream.JetStream, e *tandemv1.AuditEntry) error {
	if e.Time == nil {
		e.Time = timestamppb.Now()
	}
	Bound(e)
	data, err := proto.Marshal(e)
	if err != nil {
		return err
	}
	_, err = js.Publish(ctx, Subject(e.GetAction()), data)
	return err
}

// OpenStream looks the audit stream up, creating it only when missing (a
// tool must not re-configure the stream running orchestrators made).
func OpenStream(ctx context.Context, js jetstream.JetStream, replicas int, maxAge time.Duration) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, broker.AuditStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, broker.AuditConfig(replicas, maxAge))
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			s, err = js.Stream(ctx, broker.AuditStream)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", broker.AuditStream, err)
	}
	return s, nil
}

// Log appends the API's entries asynchronously. Submits are coalesced: the
// entries of one caller's submits to one queue with one outcome (same
// action, actor, peer, queue, code and reason) within CoalesceWindow become
// one entry with every job counted (job_count), the first MaxJobIDs job ids
// listed, the time of the first call and the number of calls in detail. At
// high submit rates that keeps the trail to a few writes a second instead of
// one persisted write (an fsync with --durability always) per job. Every
// other audited call gets its own entry at once.
type Log struct {
	b       *broker.Broker
	log     *slog.Logger
	pending chan pending
	done    chan struct{}
	once    sync.Once

	mu   sync.Mutex
	open map[windowKey]*window
}

// CoalesceWindow is how long submit entries are gathered into one.
const CoalesceWindow = time.Second

// maxOpenWindows bounds the submit entries gathering at once (distinct
// callers × queues × outcomes); past it, entries are written on their own.
const maxOpenWindows = 10_000

// Coalesced reports whether entries of action are coalesced.
func Coalesced(action string) bool { return action == "SubmitJob" || action == "SubmitJobs" }

type windowKey struct{ action, actor, peer, queue, code, reason string }

type window struct {
	e     *tandemv1.AuditEntry
	calls int
	last  time.Time
}

type pending struct {
	f jetstream.PubAckFuture
	e *tandemv1.AuditEntry
}

// confirmWait bounds the wait for one publish's acknowledgement.
const confirmWait = 30 * time.Second

// NewLog starts a log appending to b's audit stream.
func NewLog(b *broker.Broker, log *slog.Logger) *Log {
	l := &Log{b: b, log: log, pending: make(chan pending, 8192), done: make(chan struct{}), open: map[windowKey]*window{}}
	go l.confirm()
	return l
}

// Append logs the entry and publishes it without waiting for the ack (a
// submit's entry after its coalescing window).
func (l *Log) Append(e *tandemv1.AuditEntry) {
	if e.Time == nil {
		e.Time = timestamppb.Now()
	}
	if Coalesced(e.GetAction()) && l.gather(e) {
		return
	}
	l.write(e)
}

// gather adds a submit's entry to its open window, or opens one; false when
// too many are open (the entry is then written on its own).
func (l *Log) gather(e *tandemv1.AuditEntry) bool {
	k := windowKey{e.GetAction(), e.GetActor(), e.GetPeer(), e.GetQueue(), e.GetCode(), e.GetReason()}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if w, ok := l.open[k]; ok {
		w.calls++
		w.last = now
		w.e.JobCount += max(e.GetJobCount(), uint32(len(e.GetJobIds())))
		for _, id := range e.GetJobIds() {
			if len(w.e.JobIds) >= MaxJobIDs {
				break
			}
			w.e.JobIds = append(w.e.JobIds, id)
		}
		return true
	}
	if len(l.open) >= maxOpenWindows {
		return false
	}
	e.JobCount = max(e.GetJobCount(), uint32(len(e.GetJobIds())))
	l.open[k] = &window{e: e, calls: 1, last: now}
	time.AfterFunc(CoalesceWindow, func() { l.flush(k) })
	return true
}

// flush writes one window's entry.
func (l *Log) flush(k windowKey) {
	l.mu.Lock()
	w, ok := l.open[k]
	delete(l.open, k)
	l.mu.Unlock()
	if !ok {
		return
	}
	if w.calls > 1 {
		note := fmt.Sprintf("%d calls coalesced, the last at %s", w.calls, w.last.UTC().Format(time.RFC3339Nano))
		if w.e.Detail != "" {
			note = w.e.Detail + "; " + note
		}
		w.e.Detail = note
	}
	l.write(w.e)
}

// Flush writes every open window's entry now.
func (l *Log) Flush() {
	l.mu.Lock()
	keys := make([]windowKey, 0, len(l.open))
	for k := range l.open {
		keys = append(keys, k)
	}
	l.mu.Unlock()
	for _, k := range keys {
		l.flush(k)
	}
}

// write logs the entry and publishes it without waiting for the ack.
func (l *Log) write(e *tandemv1.AuditEntry) {
	Bound(e)
	LogLine(l.log, e)
	data, err := proto.Marshal(e)
	if err == nil {
		var f jetstream.PubAckFuture
		if f, err = l.b.JS().PublishAsync(Subject(e.GetAction()), data); err == nil {
			select {
			case l.pending <- pending{f, e}:
			case <-l.done:
			}
			return
		}
	}
	l.lost(e, err)
}

func (l *Log) lost(e *tandemv1.AuditEntry, err error) {
	l.log.Error("AUDIT ENTRY NOT WRITTEN to "+broker.AuditStream+" (the audit log line above is the only copy)",
		"error", err, "actor", e.GetActor(), "action", e.GetAction(), "queue", e.GetQueue(), "code", e.GetCode())
}

func (l *Log) confirm() {
	for {
		select {
		case <-l.done:
			return
		case p := <-l.pending:
			t := time.NewTimer(confirmWait)
			select {
			case <-p.f.Ok():
			case err := <-p.f.Err():
				l.lost(p.e, err)
			case <-t.C:
				l.lost(p.e, errors.New("no acknowledgement in "+confirmWait.String()))
			case <-l.done:
				t.Stop()
				return
			}
			t.Stop()
		}
	}
}

// Close stops confirming (after the connection is flushed).
func (l *Log) Close() { l.once.Do(func() { close(l.done) }) }

// List limits.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	// MaxScan bounds the entries one ListAudit reads; last_seq says where
	// it stopped.
	MaxScan = 10_000
)

// Validate checks a ListAudit request against the limits.
func Validate(req *tandemv1.ListAuditRequest) error {
	if req.GetLimit() > MaxLimit {
		return apierr.InvalidRequest("limit", "limit: %d is above the limit of %d", req.GetLimit(), MaxLimit)
	}
	if err := ident.Text("actor", req.GetActor(), MaxActor); err != nil {
		return err
	}
	if a := req.GetAction(); a != "" && !Audited(a) {
		return apierr.InvalidRequest("action", "action: %s is not an audited action (one of %s)", apierr.Quote(a), strings.Join(Actions, ", "))
	}
	if q := req.GetQueue(); q != "" {
		if err := ident.Queue("queue", q); err != nil {
			return err
		}
	}
	return nil
}

// List reads entries after req.after_seq, oldest first, that match the
// request's filters.
func List(ctx context.Context, s jetstream.Stream, req *tandemv1.ListAuditRequest) (*tandemv1.ListAuditResponse, error) {
	if err := Validate(req); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	if limit == 0 {
		limit = DefaultLimit
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info, err := s.Info(ctx)
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	out := &tandemv1.ListAuditResponse{LastSeq: req.GetAfterSeq()}
	last := info.State.LastSeq
	if info.State.Msgs == 0 || last <= req.GetAfterSeq() {
		return out, nil
	}
	filter := broker.AuditSubjects
	if a := req.GetAction(); a != "" {
		filter = Subject(a)
	}
	start := max(req.GetAfterSeq()+1, info.State.FirstSeq)
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start,
	})
	if err != nil {
		return nil, apierr.BrokerUnavailable(err)
	}
	scanned := 0
	for {
		batch, err := cons.Fetch(min(512, MaxScan-scanned), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, apierr.BrokerUnavailable(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			scanned++
			md, err := m.Metadata()
			if err != nil {
				return nil, apierr.BrokerUnavailable(err)
			}
			out.LastSeq = md.Sequence.Stream
			e := &tandemv1.AuditEntry{}
			if proto.Unmarshal(m.Data(), e) == nil && match(e, req) {
				e.Seq = md.Sequence.Stream
				out.Entries = append(out.Entries, e)
			}
			if len(out.Entries) >= limit || md.NumPending == 0 || scanned >= MaxScan {
				// Stop with the batch half read: the ordered consumer goes with it.
				if md.NumPending == 0 {
					out.LastSeq = max(out.LastSeq, last)
				}
				return out, nil
			}
		}
		if n == 0 {
			// Nothing more matches up to the end seen at the start.
			out.LastSeq = max(out.LastSeq, last)
			return out, nil
		}
	}
}

func match(e *tandemv1.AuditEntry, req *tandemv1.ListAuditRequest) bool {
	return (req.GetActor() == "" || e.GetActor() == req.GetActor()) &&
		(req.GetAction() == "" || e.GetAction() == req.GetAction()) &&
		(req.GetQueue() == "" || e.GetQueue() == req.GetQueue())
}

// Note is what a handler adds to its call's entry (the interceptor builds
// the rest from the request and the answer).
type Note struct {
	// Queue is the queue acted on when the request does not name it (CancelJob).
	Queue string
}

type noteKey struct{}

// WithNote returns ctx carrying a note for the call's entry.
func WithNote(ctx context.Context) (context.Context, *Note) {
	n := &Note{}
	return context.WithValue(ctx, noteKey{}, n), n
}

// SetQueue records the queue a call acted on, for its audit entry.
func SetQueue(ctx context.Context, queue string) {
	if n, ok := ctx.Value(noteKey{}).(*Note); ok {
		n.Queue = queue
	}
}
