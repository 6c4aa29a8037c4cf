// Package broker owns the connection to NATS JetStream: it starts the embedded
// nats-server when no URL is given, connects, and creates every stream, KV
// bucket and object store the orchestrator uses. The names live here, once.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// JetStream layout. See README.md.
const (
	JobsBucket      = "tandem_jobs"     // KV: job id -> Job record (protobuf)
	IdemBucket      = "tandem_idem"     // KV: <queue>.<sha256(key)> -> job id + request hash
	PayloadsBucket  = "tandem_payloads" // object store: large payloads, deleted when the job ends
	resultsBase     = "tandem_results_" // object store per queue: large results, expire with its result_ttl
	DLQStream       = "TANDEM_DLQ"      // dead letters, subject tandem.dlq.<queue>.<job id>
	ConsumerName    = "workers"         // the durable pull consumer of every queue stream
	EventsPrefix    = "tandem.events."  // core NATS: tandem.events.<queue>.<job id>, body = Job (no result)
	CancelSubject   = "tandem.cancel"   // core NATS: body = job id
	jobsSubjectBase = "tandem.jobs."
	dlqSubjectBase  = "tandem.dlq."
	queueStreamBase = "TANDEM_Q_"
	// DuplicateWindow is the Nats-Msg-Id dedup window of the queue streams.
	DuplicateWindow = 2 * time.Minute
)

// markerTTL is how long a KV keeps the delete marker of an expired key.
const markerTTL = 10 * time.Minute

// JobKVSubject is the subject a job record is stored under.
func JobKVSubject(id string) string { return "$KV." + JobsBucket + "." + id }

// ResultsBucket is the object store of a queue's large results.
func ResultsBucket(queue string) string { return resultsBase + queue }

// QueueStream is the work-queue stream of a queue.
func QueueStream(queue string) string { return queueStreamBase + queue }

// QueueSubject is the subject jobs of a queue are published on.
func QueueSubject(queue string) string { return jobsSubjectBase + queue }

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
}

// Broker is an open connection with every resource created.
type Broker struct {
	NC       *nats.Conn
	JS       jetstream.JetStream
	Jobs     jetstream.KeyValue
	Idem     jetstream.KeyValue
	Payloads jetstream.ObjectStore
	Results  map[string]jetstream.ObjectStore // by queue
	DLQ      jetstream.Stream
	Queues   map[string]jetstream.Stream

	srv      *server.Server
	log      *slog.Logger
	replicas int
	// disconnects counts lost connections: core NATS events published while
	// disconnected are lost, so a watcher that sees it change must re-sync.
	disconnects atomic.Uint64
}

// Disconnects is the number of times the connection was lost so far.
func (b *Broker) Disconnects() uint64 { return b.disconnects.Load() }

// Open starts the embedded server if needed, connects and sets up JetStream.
func Open(ctx context.Context, o Options) (*Broker, error) {
	b := &Broker{log: o.Logger, Queues: map[string]jetstream.Stream{}, replicas: max(1, o.Replicas)}
	if b.log == nil {
		b.log = slog.Default()
	}
	url := o.URL
	copts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			b.disconnects.Add(1)
			if !c.IsClosed() {
				b.log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) {
			b.log.Info("nats reconnected")
			// A server that came back without its store gets the resources again.
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := b.ensure(ctx, o.Queues); err != nil {
					b.log.Warn("re-creating JetStream resources after reconnect failed", "err", err)
				}
			}()
		}),
	}
	if url == "" {
		srv, err := startEmbedded(o)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		url = srv.ClientURL()
		if o.Listen == "" {
			// No TCP listener: connect in-process.
			copts = append(copts, nats.InProcessServer(srv))
			url = nats.DefaultURL
		}
		b.log.Info("embedded nats-server started", "client_url", srv.ClientURL(), "store_dir", srv.StoreDir(), "durability", o.Durability)
	}
	nc, err := nats.Connect(url, copts...)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("connect to NATS %s: %w", url, err)
	}
	b.NC = nc
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Close()
		return nil, err
	}
	b.JS = js
	if err := b.setup(ctx, o.Queues); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

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
func (b *Broker) ensure(ctx context.Context, qs []config.Queue) error {
	if b.JS == nil || b.Jobs == nil {
		return nil
	}
	shadow := &Broker{JS: b.JS, Queues: map[string]jetstream.Stream{}, log: b.log, replicas: b.replicas}
	return shadow.setup(ctx, qs)
}

func (b *Broker) setup(ctx context.Context, qs []config.Queue) error {
	var err error
	// Records have no bucket-wide expiry: the write that makes a job terminal
	// carries a per-message TTL (its queue's result_ttl), so a queued job's
	// record never expires. Expiry leaves a delete marker for watchers.
	if b.Jobs, err = b.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: JobsBucket, Description: "Tandem job records", History: 1, Storage: jetstream.FileStorage,
		LimitMarkerTTL: markerTTL, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create KV %s: %w", JobsBucket, err)
	}
	if b.Idem, err = b.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: IdemBucket, Description: "Tandem idempotency keys (per-key TTL = the queue's result_ttl)", History: 1, Storage: jetstream.FileStorage,
		LimitMarkerTTL: markerTTL, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create KV %s: %w", IdemBucket, err)
	}
	if b.Payloads, err = b.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: PayloadsBucket, Description: "Tandem payloads above the inline limit", Storage: jetstream.FileStorage, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create object store %s: %w", PayloadsBucket, err)
	}
	b.Results = map[string]jetstream.ObjectStore{}
	for _, q := range qs {
		name := ResultsBucket(q.Name)
		if b.Results[q.Name], err = b.JS.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket: name, Description: "Tandem results above the inline limit, queue " + q.Name, TTL: q.ResultTTL, Storage: jetstream.FileStorage, Replicas: b.replicas,
		}); err != nil {
			return fmt.Errorf("create object store %s: %w", name, err)
		}
	}
	if b.DLQ, err = b.JS.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: DLQStream, Description: "Tandem dead letters", Subjects: []string{dlqSubjectBase + ">"},
		Retention: jetstream.LimitsPolicy, MaxMsgsPerSubject: 1, Storage: jetstream.FileStorage, Duplicates: DuplicateWindow, Replicas: b.replicas,
	}); err != nil {
		return fmt.Errorf("create stream %s: %w", DLQStream, err)
	}
	for _, q := range qs {
		if err := b.setupQueue(ctx, q); err != nil {
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

func (b *Broker) setupQueue(ctx context.Context, q config.Queue) error {
	s, err := b.JS.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        QueueStream(q.Name),
		Description: "Tandem queue " + q.Name,
		Subjects:    []string{QueueSubject(q.Name)},
		Retention:   jetstream.WorkQueuePolicy,
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
	b.Queues[q.Name] = s
	return nil
}

// Connected reports whether the NATS connection is up.
func (b *Broker) Connected() bool { return b.NC != nil && b.NC.IsConnected() }

// Close drains the connection and shuts the embedded server down.
func (b *Broker) Close() {
	if b.NC != nil {
		_ = b.NC.FlushTimeout(2 * time.Second)
		b.NC.Close()
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
