package auth

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
)

// Store is one orchestrator's view of the token bucket: every record, kept
// current by a watch of the bucket, so a token created or revoked anywhere
// takes effect here within the watch's delivery time (milliseconds), without
// a restart and without a NATS call per request. A token this cache does not
// hold is refused (fail closed): while the watch is down a newly created
// token is refused until the watch is back, never let through unchecked.
type Store struct {
	log *slog.Logger
	now func() time.Time

	mu     sync.RWMutex
	byID   map[string]*Record
	synced chan struct{} // closed at the first complete load
	once   sync.Once
	up     atomic.Bool

	cancelMu sync.Mutex
	cancel   context.CancelFunc
	stopped  bool
	wg       sync.WaitGroup
}

// NewStore returns an empty store; Watch fills it.
func NewStore(log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	return &Store{log: log.With("component", "auth"), now: time.Now, byID: map[string]*Record{}, synced: make(chan struct{})}
}

// Watch keeps the store current from b's token bucket, on every connection
// the broker opens (a replaced connection starts a new watch, which reloads
// every record).
func (s *Store) Watch(b *broker.Broker) {
	b.OnConnect(func(*nats.Conn) {
		kv := b.Tokens()
		s.cancelMu.Lock()
		defer s.cancelMu.Unlock()
		if s.stopped {
			return
		}
		if s.cancel != nil {
			s.cancel()
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel = cancel
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.run(ctx, kv, b) }()
	})
}

// Stop ends the watch.
func (s *Store) Stop() {
	s.cancelMu.Lock()
	s.stopped = true
	if s.cancel != nil {
		s.cancel()
	}
	s.cancelMu.Unlock()
	s.wg.Wait()
}

// WaitSynced waits for the first complete load of the bucket.
func (s *Store) WaitSynced(ctx context.Context) error {
	select {
	case <-s.synced:
		return nil
	case <-ctx.Done():
		return errors.New("the token bucket " + broker.TokensBucket + " was not loaded in time")
	}
}

// Up reports whether the watch is running and has loaded the bucket.
func (s *Store) Up() bool { return s.up.Load() }

// errReconnected ends a watch after the connection came back: the watch is
// made again (a full reload) rather than waiting for the ordered consumer to
// notice its missing heartbeats, which takes many seconds after a server
// restart.
var errReconnected = errors.New("reconnected to NATS")

func (s *Store) run(ctx context.Context, kv jetstream.KeyValue, b *broker.Broker) {
	delay := 250 * time.Millisecond
	for ctx.Err() == nil {
		err := s.watchOnce(ctx, kv, b)
		s.up.Store(false)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errReconnected) {
			s.log.Info("reloading tokens after a reconnect")
			delay = 250 * time.Millisecond
			continue
		}
		s.log.Warn("token watch ended; unknown tokens are refused until it is back", "error", err, "retry_in", delay.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(5*time.Second, delay*2)
	}
}

// watchOnce loads every record, swaps the cache, then applies changes until
// the watch ends.
func (s *Store) watchOnce(ctx context.Context, kv jetstream.KeyValue, b *broker.Broker) error {
	disc := b.Disconnects()
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	fresh := map[string]*Record{}
	loading := true
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if !b.Connected() {
				s.up.Store(false)
			} else if b.Disconnects() != disc {
				return errReconnected
			}
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch closed")
			}
			if e == nil {
				if loading {
					s.mu.Lock()
					s.byID = fresh
					s.mu.Unlock()
					loading = false
					s.up.Store(true)
					s.once.Do(func() { close(s.synced) })
					s.log.Info("tokens loaded", "tokens", len(fresh))
				}
				continue
			}
			if loading {
				s.apply(fresh, e, false)
			} else {
				s.mu.Lock()
				s.apply(s.byID, e, true)
				s.mu.Unlock()
			}
		}
	}
}

func (s *Store) apply(m map[string]*Record, e jetstream.KeyValueEntry, live bool) {
	if e.Operation() != jetstream.KeyValuePut {
		if _, ok := m[e.Key()]; ok && live {
			s.log.Info("token revoked", "token_id", e.Key())
		}
		delete(m, e.Key())
		return
	}
	r, err := Decode(e.Value())
	if err != nil || r.ID != e.Key() {
		// Refuse what cannot be read rather than guess at its rights.
		s.log.Error("unreadable token record ignored (the token is refused)", "token_id", e.Key(), "error", err)
		delete(m, e.Key())
		return
	}
	if _, ok := m[r.ID]; !ok && live {
		s.log.Info("token added", "token_id", r.ID, "all_queues", r.AllQueues, "queues", r.Queues)
	}
	m[r.ID] = r
}

// Len is the number of tokens held.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.byID)
}

// dummy is compared against when the id is unknown, so an unknown id costs
// the same hash as a known one.
var dummy = &Record{Salt: make([]byte, saltBytes), Hash: make([]byte, 32)}

// Authenticate checks the values of a call's `authorization` metadata: one
// value, "Bearer <token>", at most MaxHeaderLen bytes of printable ASCII, a
// known, unexpired token whose secret matches. claimed is the token id the
// caller named, when it named one (for the audit trail).
func (s *Store) Authenticate(values []string) (p *Principal, claimed string, err error) {
	if len(values) == 0 {
		return nil, "", apierr.Unauthenticated("this call needs a token: send the metadata `authorization: Bearer tdm_<id>_<secret>`")
	}
	if len(values) > 1 {
		return nil, "", apierr.Unauthenticated("authorization: %d values; send one", len(values))
	}
	v := values[0]
	if len(v) > MaxHeaderLen {
		return nil, "", apierr.Unauthenticated("authorization: %d bytes, longer than %d", len(v), MaxHeaderLen)
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return nil, "", apierr.Unauthenticated("authorization: byte %d is not printable ASCII", i)
		}
	}
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, "", apierr.Unauthenticated("authorization: must be `Bearer <token>`")
	}
	id, secret, perr := Parse(strings.TrimSpace(tok))
	if perr != nil {
		return nil, "", apierr.Unauthenticated("authorization: %v", perr)
	}
	s.mu.RLock()
	r, known := s.byID[id]
	s.mu.RUnlock()
	if !known {
		dummy.Verify(secret)
		return nil, id, apierr.Unauthenticated("token %s is unknown or revoked", apierr.Quote(id))
	}
	if !r.Verify(secret) {
		return nil, id, apierr.Unauthenticated("token %s is unknown or revoked", apierr.Quote(id))
	}
	if r.Expired(s.now()) {
		return nil, id, apierr.TokenExpired(id, *r.ExpiresAt)
	}
	return r.Principal(), id, nil
}
