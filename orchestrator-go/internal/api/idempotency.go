package api

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/jobstore"
)

// Idempotency costs no write of its own. A submit with a key gets a job id
// derived from the queue and the key, so a retried or concurrent submit
// names the same job:
//   - within the queue stream's duplicate window, JetStream drops a second
//     copy of the job message (its Msg-Id is the job id);
//   - past it, the job itself is found by id: its record, or its message
//     while it waits in the queue.
//
// The request's hash travels with the job (Job.request_hash), so the same key
// with a different request is IDEMPOTENCY_CONFLICT. A key is remembered as
// long as its job is: until the record expires, the queue's result_ttl after
// the job finished (or until its dead letter is purged).

// idAlphabet is Crockford's base32, the alphabet of ULIDs: derived ids look
// like the ids made for submits without a key.
var idAlphabet = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// derivedID is the job id of a submit with an idempotency key.
func derivedID(queue, key string) string {
	h := sha256.Sum256([]byte(queue + "\x00" + key))
	return idAlphabet.EncodeToString(h[:])[:26]
}

func requestHash(queue string, req *tandemv1.SubmitJobRequest) string {
	c := proto.Clone(req).(*tandemv1.SubmitJobRequest)
	c.Queue = queue
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// idemClaim is what a key's lookup found.
type idemClaim struct {
	id   string        // the job id the key names
	hash string        // the request's hash
	done *tandemv1.Job // the job, when it exists already (a duplicate)
}

// claimIdempotency finds the job req's key names, if it exists.
// found, when not nil, is the queue's jobs looked up beforehand for a batch
// (an id absent from it has no job).
func (s *Service) claimIdempotency(ctx context.Context, q config.Queue, req *tandemv1.SubmitJobRequest, found map[string]*tandemv1.Job) (idemClaim, error) {
	c := idemClaim{id: derivedID(q.Name, req.GetIdempotencyKey()), hash: requestHash(q.Name, req)}
	var j *tandemv1.Job
	if found != nil {
		j = found[c.id]
	} else {
		rec, err := s.Store.GetInQueue(ctx, q.Name, c.id)
		if err != nil && !jobstore.IsNotFound(err) {
			return idemClaim{}, err
		}
		if rec != nil {
			j = rec.Job
		}
	}
	if j == nil {
		return c, nil
	}
	if err := c.check(q, req, j); err != nil {
		return idemClaim{}, err
	}
	c.done = withoutResult(j)
	return c, nil
}

// check compares the found job with the request.
func (c idemClaim) check(q config.Queue, req *tandemv1.SubmitJobRequest, j *tandemv1.Job) error {
	if j.GetRequestHash() != c.hash {
		return apierr.IdempotencyConflict(q.Name, req.GetIdempotencyKey(), j.GetId())
	}
	return nil
}

// duplicate settles a submit whose message JetStream reported as a
// duplicate (another submit with the same key got there first): the job
// that is there is the answer, or a conflict.
func (s *Service) duplicate(ctx context.Context, p *prepared) error {
	rec, err := s.Store.GetInQueue(ctx, p.q.Name, p.job.GetId())
	if jobstore.IsNotFound(err) {
		// The job the key named has finished and is gone (its record
		// expired or was purged) within the duplicate window: the key is
		// forgotten with it, so this is a new job. Publish it under a
		// Msg-Id of its own.
		_, err := s.Broker.JS().PublishMsg(ctx, p.msg, jetstream.WithMsgID(p.job.GetId()+"."+ulid.Make().String()))
		if err != nil {
			return s.publishErr(ctx, p, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	if rec.Job.GetRequestHash() != p.job.GetRequestHash() {
		return apierr.IdempotencyConflict(p.q.Name, p.job.GetIdempotencyKey(), rec.Job.GetId())
	}
	p.dedup, p.done = true, withoutResult(rec.Job)
	return nil
}
