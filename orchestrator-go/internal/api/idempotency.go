package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// Idempotency: a submit with a key atomically creates
// tandem_idem/<queue>.<sha256(key)[:16]> (KV create-if-absent, TTL = the
// queue's result_ttl) holding "<job id>:<request hash>". A later submit with
// the same key and the same request gets the first job; with a different
// request, IDEMPOTENCY_CONFLICT.

func idemKVKey(queue, key string) string {
	h := sha256.Sum256([]byte(key))
	return queue + "." + hex.EncodeToString(h[:16])
}

func requestHash(queue string, req *tandemv1.SubmitJobRequest) string {
	c := proto.Clone(req).(*tandemv1.SubmitJobRequest)
	c.Queue = queue
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// idemClaim is the outcome of claiming an idempotency key.
type idemClaim struct {
	id    string        // the job id to use: the new one, or the first submit's
	dedup bool          // the key was used before with the same request
	done  *tandemv1.Job // the first submit's record, when it exists
}

// claimIdempotency claims req's key for job id, or finds the job that holds it.
func (s *Service) claimIdempotency(ctx context.Context, q config.Queue, req *tandemv1.SubmitJobRequest, id string) (idemClaim, error) {
	key := req.GetIdempotencyKey()
	kvKey := idemKVKey(q.Name, key)
	hash := requestHash(q.Name, req)
	_, err := s.Broker.Idem().Create(ctx, kvKey, []byte(id+":"+hash), jetstream.KeyTTL(max(q.ResultTTL, time.Second)))
	switch {
	case err == nil:
		return idemClaim{id: id}, nil
	case !errors.Is(err, jetstream.ErrKeyExists):
		return idemClaim{}, apierr.BrokerUnavailable(err)
	}
	e, err := s.Broker.Idem().Get(ctx, kvKey)
	if err != nil {
		return idemClaim{}, apierr.BrokerUnavailable(err)
	}
	prevID, prevHash, _ := strings.Cut(string(e.Value()), ":")
	if prevHash != hash {
		return idemClaim{}, apierr.IdempotencyConflict(q.Name, key, prevID)
	}
	rec, err := s.Store.Get(ctx, prevID)
	if err == nil {
		return idemClaim{id: prevID, dedup: true, done: withoutResult(rec.Job)}, nil
	}
	var ae *apierr.Error
	if !errors.As(err, &ae) || ae.Reason != tandemv1.ErrorReason_JOB_NOT_FOUND {
		return idemClaim{}, err
	}
	// The first submit stopped before its record was written: finish it with
	// the same id (the Msg-Id dedups a message already published).
	return idemClaim{id: prevID, dedup: true}, nil
}
