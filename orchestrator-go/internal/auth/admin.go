package auth

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tandem/tandem/orchestrator-go/internal/broker"
)

// ErrExists is returned by Create for an id already in use.
var ErrExists = errors.New("token id exists")

// ErrNotFound is returned by Revoke for an unknown id.
var ErrNotFound = errors.New("no such token")

// OpenBucket looks the token bucket up, creating it (with replicas) only when
// it does not exist: a tool must never re-configure the bucket running
// orchestrators made.
func OpenBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, broker.TokensBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, broker.TokensConfig(replicas))
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, broker.TokensBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s: %w", broker.TokensBucket, err)
	}
	return kv, nil
}

// Create stores a new token record; ErrExists if the id is taken.
func Create(ctx context.Context, kv jetstream.KeyValue, r *Record) error {
	data, err := r.Encode()
	if err != nil {
		return err
	}
	if _, err := kv.Create(ctx, r.ID, data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: %q (revoke it first, or pick another --id)", ErrExists, r.ID)
		}
		return err
	}
	return nil
}

// List reads every token record, sorted by id.
func List(ctx context.Context, kv jetstream.KeyValue) ([]*Record, error) {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	var out []*Record
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("token watch closed")
			}
			if e == nil {
				sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
				return out, nil
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			r, err := Decode(e.Value())
			if err != nil {
				r = &Record{ID: e.Key(), CreatedBy: "(unreadable record: " + err.Error() + ")"}
			}
			out = append(out, r)
		}
	}
}

// Revoke deletes a token: every orchestrator's watch drops it at once.
func Revoke(ctx context.Context, kv jetstream.KeyValue, id string) (*Record, error) {
	if err := ValidID(id); err != nil {
		return nil, err
	}
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	r, _ := Decode(e.Value())
	if err := kv.Delete(ctx, id, jetstream.LastRevision(e.Revision())); err != nil {
		return nil, err
	}
	return r, nil
}
