// Package broker owns the connection to NATS JetStream: it starts the embedded
// nats-server when no URL is given, connects, and creates every stream, KV
// bucket and object store the orchestrator uses. The names live here, once.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// JetStream layout. See README.md.
const (
	JobsBucket      = "tandem_jobs"   // KV: job id -> Job record (protobuf)
	OpsBucket       = "tandem_ops"    // KV: op name -> OpSpec registered by op workers
	TokensBucket    = "tandem_tokens" // KV: token id -> salted hash and scopes (JSON, internal/auth)
	AuditStream     = "TANDEM_AUDIT"  // audit trail, subject tandem.audit.<action>.<...> (internal/audit)
	AuditSubjects   = "tandem.audit.>"
	PayloadsBucket  = "tandem_payloads" // object store: large payloads, deleted when the job ends
	resultsBase     = "tandem_results_" // object store per queue: large results, expire with its result_ttl
	DLQStream       = "TANDEM_DLQ"      // dead letters, subject tandem.dlq.<queue>.<job id>
	ConsumerName    = "workers"         // the durable pull consumer of every queue stream
	EventsPrefix    = "tandem.events."  // core NATS: tandem.events.<queue>.<job id>, body = Job (no result)
	CancelSubject   = "tandem.cancel"   // core NATS: body = job id
	jobsSubjectBase = "tandem.jobs."
	dlqSubjectBase  = "tandem.dlq."
	queueStreamBase = "TANDEM_Q_"
	// QueueStreamPrefix begins the name of every queue stream.
	QueueStreamPrefix = queueStreamBase
	// DuplicateWindow is the Nats-Msg-Id dedup window of the queue streams.
	DuplicateWindow = 2 * time.Minute
)

// markerTTL is how long a KV keeps the delete marker of an expired key (the
// records bucket needs one for per-message TTLs; nothing in Tandem reads the
// markers, so they stay only the minimum, and an expired record costs its
// bytes for its result_ttl plus a second, no more).
const markerTTL = time.Second

// JobKVSubject is the subject a job record is stored under.
func JobKVSubject(id string) string { return "$KV." + JobsBucket + "." + id }

// ResultsBucket is the object store of a queue's large results.
func ResultsBucket(queue string) string { return resultsBase + queue }

// QueueStream is the work-queue stream of a queue.
func QueueStream(queue string) string { return queueStreamBase + queue }

// QueueSubject is the subject jobs of a queue were published on before
// per-job subjects; the stream still takes it, so messages published by an
// older orchestrator are still consumed.
func QueueSubject(queue string) string { return jobsSubjectBase + queue }

// JobSubject is the subject one job's message is published on. The message
// is the job's QUEUED record until a worker writes one (GetJob reads it by
// this subject with a direct get), so a submit is one persisted write.
func JobSubject(queue, jobID string) string { return jobsSubjectBase + queue + "." + jobID }

// JobSubjectAnyQueue matches one job's message in whatever queue stream.
func JobSubjectAnyQueue(jobID string) string { return jobsSubjectBase + "*." + jobID }

// DLQSubject is the dead-letter subject of one job.
func DLQSubject(queue, jobID string) string { return dlqSubjectBase + queue + "." + jobID }

// DLQFilter matches every dead letter of a queue.
func DLQFilter(queue string) string { return dlqSubjectBase + queue + ".*" }

// EventsSubject is where the state changes of one job are published.
func EventsSubject(queue, jobID string) string { return EventsPrefix + queue + "." + jobID }

// QueueEventsFilter matches the events of every job of a queue.
func QueueEventsFilter(queue string) string { return EventsPrefix + queue + ".*" }

// JobEventsFilter matches the events of one job, whatever its queue.
func JobEventsFilter(jobID string) string { return EventsPrefix + "*." + jobID }

// HeaderEventRev carries, on an event, the KV revision of the record it announces.
const HeaderEventRev = "Tandem-Rev"

// Options configure Open.
type Options struct {
	URL        string // empty: embedded server
	Listen     string // embedded: host:port; port 0 = random; empty = no TCP listener
	DataDir    string
	Durability string
	Queues     []config.Queue
	Logger     *slog.Logger
	Name       string // connection name
	// Replicas of every stream, KV bucket and object store (0 or 1: one copy).
	Replicas int
	// AuditMaxAge is the retention of the audit stream (0: 720h).
	AuditMaxAge time.Duration
	// ClientOptions are added to every connection's options: credentials
	// and TLS (SecurityOptions).
	ClientOptions []nats.Option
}

// DefaultAuditMaxAge is the audit stream's retention when none is given.
const DefaultAuditMaxAge = 720 * time.Hour

// TokensConfig is the token bucket's configuration.
func TokensConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: TokensBucket, Description: "Tandem API tokens (id -> salted SHA-256 of the secret, scopes)", History: 1,
		Storage: jetstream.FileStorage, Replicas: max(1, replicas),
	}
}

// AuditConfig is the audit stream's configuration.
func AuditConfig(replicas int, maxAge time.Duration) jetstream.StreamConfig {
	if maxAge <= 0 {
		maxAge = DefaultAuditMaxAge
	}
	return jetstream.StreamConfig{
		Name: AuditStream, Description: "Tandem audit trail: one entry per state-changing call", Subjects: []string{AuditSubjects},
		Retention: jetstream.LimitsPolicy, MaxAge: maxAge, Storage: jetstream.FileStorage, Replicas: max(1, replicas),
	}
}

// Broker is the orchestrator's connection to NATS with every resource
// created. The connection can be replaced: nats.go reconnects by itself after
// a disconnect, but some server errors (a protocol line over
// max_control_line, for one) close the connection for good; the broker then
// opens a new one with backoff, and every accessor below answers from the
// current connection. Callers must not keep the handles across calls.
type Broker struct {
	opts     Options
	srv      *server.Server
	log      *slog.Logger
	replicas int
	url      string
	copts    []nats.Option

	cur atomic.Pointer[handles]
	// gen counts connections opened so far: a watcher that sees it change
	// knows its subscriptions died with the old connection.
	gen atomic.Uint64
	// disconnects counts lost connections: core NATS events published while
	// disconnected are lost, so a watcher that sees it change must re-sync.
	disconnects atomic.Uint64

	mu      sync.Mutex
	hooks   []func(*nats.Conn)
	closing bool
	loop    bool // a connect loop is running
	stop    chan struct{}
}

// handles are one connection and the resources looked up on it.
type handles struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	jobs     jetstream.KeyValue
	jobsSt   jetstream.Stream // the stream under the jobs bucket
	ops      jetstream.KeyValue
	tokens   jetstream.KeyValue
	audit    jetstream.Stream
	payloads jetstream.ObjectStore
	results  map[string]jetstream.ObjectStore // by queue
	dlq      jetstream.Stream
	queues   map[string]jetstream.Stream
}

func (b *Broker) h() *handles {
	h := b.cur.Load()
	if h == nil {
		panic("broker: used before its first connection")
	}
	return h
}

// NC is the current connection.
func (b *Broker) NC() *nats.Conn { return b.h().nc }

// JS is JetStream on the current connection.
func (b *Broker) JS() jetstream.JetStream { return b.h().js }

// Jobs is the job records bucket.
func (b *Broker) Jobs() jetstream.KeyValue { return b.h().jobs }

// JobsStream is the stream under the job records bucket (direct gets of a
// key's last message, markers included).
func (b *Broker) JobsStream() jetstream.Stream { return b.h().jobsSt }

// Ops is the bucket of ops registered by op workers.
func (b *Broker) Ops() jetstream.KeyValue { return b.h().ops }

// Tokens is the API token bucket.
func (b *Broker) Tokens() jetstream.KeyValue { return b.h().tokens }

// Audit is the audit stream.
func (b *Broker) Audit() jetstream.Stream { return b.h().audit }

// Payloads is the large payloads object store.
func (b *Broker) Payloads() jetstream.ObjectStore { return b.h().payloads }

// Results are the results object stores of the configured queues.
func (b *Broker) Results() map[string]jetstream.ObjectStore { return b.h().results }

// DLQ is the dead-letter stream.
func (b *Broker) DLQ() jetstream.Stream { return b.h().dlq }

// Queues are the streams of the configured queues.
func (b *Broker) Queues() map[string]jetstream.Stream { return b.h().queues }

// Gen is the number of connections opened so far (0: never connected).
func (b *Broker) Gen() uint64 { return b.gen.Load() }

// Disconnects is the number of times the connection was lost so far.
func (b *Broker) Disconnects() uint64 { return b.disconnects.Load() }

// OnConnect registers fn to run on every new connection (and on the current
// one, if any): subscriptions made there are re-made when the connection is
// replaced.
func (b *Broker) OnConnect(fn func(*nats.Conn)) {
	b.mu.Lock()
	b.hooks = append(b.hooks, fn)
	b.mu.Unlock()
	if h := b.cur.Load(); h != nil {
		fn(h.nc)
	}
}

// Open starts the embedded server if needed, connects and sets up JetStream:
// New then Connect.
func Open(ctx context.Context, o Options) (*Broker, error) {
	b, err := New(o)
	if err != nil {
		return nil, err
	}
	if err := b.Connect(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// New prepares a broker (and starts the embedded server when no URL is
// given) without connecting.
func New(o Options) (*Broker, error) {
	b := &Broker{opts: o, log: o.Logger, replicas: max(1, o.Replicas), stop: make(chan struct{})}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.url = o.URL
	b.copts = []nats.Option{
		nats.Name(o.Name),
		nats.CustomInboxPrefix(InboxPrefix),
		// Asynchronous errors: a permissions violation (a NATS user whose
		// permissions lack a subject Tandem needs), a slow consumer.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			b.log.Warn("nats error", "error", err, "subscription", subject)
		}),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			b.disconnects.Add(1)
			if !c.IsClosed() {
				b.log.Warn("nats disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			b.log.Info("nats reconnected")
			// A server that came back without its store gets the resources again.
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := b.ensure(ctx); err != nil {
					b.log.Warn("re-creating JetStream resources after reconnect failed", "error", err)
				}
			}()
		}),
		nats.ClosedHandler(func(c *nats.Conn) {
			b.mu.Lock()
			closing := b.closing
			b.mu.Unlock()
			// Only the loss of the current connection matters (not one that
			// failed its set-up, or one already replaced).
			if h := b.cur.Load(); closing || h == nil || h.nc != c {
				return
			}
			b.disconnects.Add(1)
			b.log.Error("nats connection closed; opening a new one", "error", c.LastError())
			go b.ConnectLoop(context.Background())
		}),
	}
	b.copts = append(b.copts, o.ClientOptions...)
	if b.url == "" {
		srv, err := startEmbedded(o)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		b.url = srv.ClientURL()
		if o.Listen == "" {
			// No TCP listener: connect in-process.
			b.copts = append(b.copts, nats.InProcessServer(srv))
			b.url = nats.DefaultURL
		}
		b.log.Info("embedded nats-server started", "client_url", srv.ClientURL(), "store_dir", srv.StoreDir(), "durability", o.Durability)
	}
	return b, nil
}

// Connect makes one attempt to open a connection and set up every resource
// on it; on success it becomes the current connection.
func (b *Broker) Connect(ctx context.Context) error {
	nc, err := nats.Connect(b.url, b.copts...)
	if err != nil {
		return fmt.Errorf("connect to NATS %s: %w", b.url, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		return err
	}
	h := &handles{nc: nc, js: js}
	if err := b.setup(ctx, h); err != nil {
		nc.Close() // never current: its ClosedHandler does nothing
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closing {
		nc.Close()
		return errors.New("broker closed")
	}
	b.cur.Store(h)
	b.gen.Add(1)
	for _, fn := range b.hooks {
		fn(nc)
	}
	if nc.IsClosed() {
		// Closed between set-up and now: its handler may have seen it as not
		// current yet.
		go b.ConnectLoop(context.Background())
	}
	return nil
}

// Dial opens a connection with the broker's connection options (name,
// credentials, TLS) that creates nothing and never becomes the current one:
// for tools such as `tandem-orchestrator token`, which must not re-configure
// the streams of running orchestrators.
func (b *Broker) Dial() (*nats.Conn, error) {
	nc, err := nats.Connect(b.url, append(append([]nats.Option{}, b.copts...), nats.MaxReconnects(0))...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS %s: %w", b.url, err)
	}
	return nc, nil
}

// ConnectLoop calls Connect until it succeeds, the broker is closed or ctx
// ends, waiting between tries with capped exponential backoff and jitter.
// Only one loop runs at a time.
func (b *Broker) ConnectLoop(ctx context.Context) error {
	b.mu.Lock()
	if b.loop || b.closing {
		b.mu.Unlock()
		return nil
	}
	b.loop = true
	b.mu.Unlock()
	defer func() { b.mu.Lock(); b.loop = false; b.mu.Unlock() }()
	delay := 250 * time.Millisecond
	for try := 1; ; try++ {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := b.Connect(cctx)
		cancel()
		if err == nil {
			b.log.Info("nats connected", "url", b.url, "tries", try)
			return nil
		}
		wait := delay/2 + time.Duration(rand.Int64N(int64(delay/2)+1))
		b.log.Warn("nats not reachable; trying again", "url", b.url, "try", try, "retry_in", wait.String(), "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-b.stop:
			return errors.New("broker closed")
		case <-time.After(wait):
		}
		delay = min(5*time.Second, delay*2)
	}
}

// URL is the NATS URL the broker connects to.
func (b *Broker) URL() string { return b.url }

// ClientURL is the embedded server's client URL ("" when external or not listening).
func (b *Broker) ClientURL() string {
	if b.srv == nil {
		return ""
	}
	return b.srv.ClientURL()
}

func startEmbedded(o Options) (*server.Server, error) {
	opts := &server.Options{
		ServerName: "tandem-embedded",
		JetStream:  true,
		StoreDir:   o.DataDir, // nats-server adds /jetstream
		NoSigs:     true,
		NoLog:      true,
		SyncAlways: o.Durability != config.DurabilityInterval,
		MaxPayload: 8 << 20,
	}
	if o.Listen == "" {
		opts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(o.Listen)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen %q: %w", o.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen %q: %w", o.Listen, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		opts.Host, opts.Port = host, p
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded nats-server did not become ready in 30s")
	}
	return srv, nil
}

// ensure re-creates (idempotently) every resource without touching the handles.
func (b *Broker) ensure(ctx context.Context) error {
	h := b.cur.Load()
	if h == nil {
		return nil
	}
	return b.setup(ctx, &handles{nc: h.nc, js: h.js})
}

// setup creates (or updates) every resource on h's connection and fills h.
func (b *Broker) setup(ctx context.Context, h *handles) error {
	qs := b.opts.Queues
	h.queues = map[string]jetstream.Stream{}
	var err error
	// Records have no bucket-wide expiry: the write that makes a job terminal
	// carries a per-message TTL (its queue's result_ttl), so a queued job's
	// record never expires. Expiry leaves a delete marker for watchers.
	if h.jobs, err = h.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: JobsBucket, Description: "Tandem job records", History: 1, Storage: jetstream.FileStorage,
		LimitMarkerTTL: markerTTL, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create KV %s: %w", JobsBucket, err)
	}
	if h.jobsSt, err = h.js.Stream(ctx, "KV_"+JobsBucket); err != nil {
		return fmt.Errorf("open the stream of KV %s: %w", JobsBucket, err)
	}
	if h.ops, err = h.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: OpsBucket, Description: "Tandem ops registered by op workers (op name -> OpSpec)", History: 1, Storage: jetstream.FileStorage,
		Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create KV %s: %w", OpsBucket, err)
	}
	if h.tokens, err = h.js.CreateOrUpdateKeyValue(ctx, TokensConfig(b.replicas)); err != nil {
		return fmt.Errorf("create KV %s: %w", TokensBucket, err)
	}
	if h.audit, err = h.js.CreateOrUpdateStream(ctx, AuditConfig(b.replicas, b.opts.AuditMaxAge)); err != nil {
		return fmt.Errorf("create stream %s: %w", AuditStream, err)
	}
	if h.payloads, err = h.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: PayloadsBucket, Description: "Tandem payloads above the inline limit", Storage: jetstream.FileStorage, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create object store %s: %w", PayloadsBucket, err)
	}
	h.results = map[string]jetstream.ObjectStore{}
	for _, q := range qs {
		name := ResultsBucket(q.Name)
		if h.results[q.Name], err = h.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: name, Description: "Tandem results above the inline limit, queue " + q.Name, TTL: q.ResultTTL, Storage: jetstream.FileStorage, Replicas: b.replicas,
		}); err != nil {
			return fmt.Errorf("create object store %s: %w", name, err)
		}
	}
	if h.dlq, err = h.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: DLQStream, Description: "Tandem dead letters", Subjects: []string{dlqSubjectBase + ">"},
		Retention: jetstream.LimitsPolicy, MaxMsgsPerSubject: 1, Storage: jetstream.FileStorage, Duplicates: DuplicateWindow, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create stream %s: %w", DLQStream, err)
	}
	for _, q := range qs {
		if err := b.setupQueue(ctx, h, q); err != nil {
			return err
		}
	}
	return nil
}

// AckWait is the consumer AckWait for a job timeout: the timeout plus a margin
// (a quarter of it, between 1s and 15s) for the state writes around the call.
// A delivery not acked by then is redelivered: that is how a job whose worker
// died is picked up again.
func AckWait(jobTimeout time.Duration) time.Duration {
	return jobTimeout + min(15*time.Second, max(time.Second, jobTimeout/4))
}

// MaxAckPending bounds the messages delivered and not yet acked per queue,
// across every orchestrator. Jobs waiting out a NakWithDelay backoff count too,
// so it is well above the worker count.
func MaxAckPending(q config.Queue) int { return max(1000, 4*q.MaxWorkers) }

func (b *Broker) setupQueue(ctx context.Context, h *handles, q config.Queue) error {
	s, err := h.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        QueueStream(q.Name),
		Description: "Tandem queue " + q.Name,
		Subjects:    []string{QueueSubject(q.Name), JobSubject(q.Name, "*")},
		Retention:   jetstream.WorkQueuePolicy,
		AllowDirect: true, // GetJob reads a queued job's message by its subject
		Storage:     jetstream.FileStorage,
		MaxMsgs:     q.MaxDepth,
		Discard:     jetstream.DiscardNew,
		Duplicates:  DuplicateWindow,
		Replicas:    b.replicas,
	})
	if err != nil {
		return fmt.Errorf("create stream for queue %s: %w", q.Name, err)
	}
	// Keep a pause (PauseQueue) across restarts: an update without PauseUntil would lift it.
	var pauseUntil *time.Time
	if c, err := s.Consumer(ctx, ConsumerName); err == nil {
		if ci := c.CachedInfo(); ci != nil && ci.Paused {
			pauseUntil = ci.Config.PauseUntil
		}
	}
	if _, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		PauseUntil:    pauseUntil,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait(q.JobTimeout),
		MaxAckPending: MaxAckPending(q),
		MaxDeliver:    -1, // attempts are counted in the job record, not by deliveries
		MaxWaiting:    512,
	}); err != nil {
		return fmt.Errorf("create consumer for queue %s: %w", q.Name, err)
	}
	h.queues[q.Name] = s
	return nil
}

// Connected reports whether the current NATS connection is up.
func (b *Broker) Connected() bool {
	h := b.cur.Load()
	return h != nil && h.nc.IsConnected()
}

// Close flushes and closes the connection (ending a connect loop) and shuts
// the embedded server down.
func (b *Broker) Close() {
	b.mu.Lock()
	already := b.closing
	b.closing = true
	b.mu.Unlock()
	if !already {
		close(b.stop)
	}
	if h := b.cur.Load(); h != nil {
		_ = h.nc.FlushTimeout(2 * time.Second)
		h.nc.Close()
	}
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}

// IsMaxMsgs reports whether a publish failed because the stream is full
// (DiscardNew with MaxMsgs reached).
func IsMaxMsgs(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return containsMaxMsgs(apiErr.Description)
	}
	return err != nil && containsMaxMsgs(err.Error())
}

func containsMaxMsgs(s string) bool { return strings.Contains(s, "maximum messages exceeded") }
