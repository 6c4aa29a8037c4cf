// Package jobstore keeps job records in the JetStream KV bucket (changed only by
// compare-and-set on the revision), large payloads and results in object stores,
// and encodes the job message published on a queue's stream.
package jobstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
	"github.com/tandem/tandem/orchestrator-go/internal/sealing"
)

// Headers of a job message.
const (
	HeaderJobID         = "Tandem-Job-Id"
	HeaderPayloadObject = "Tandem-Payload-Object" // set when the payload is in the object store
	// HeaderAttemptBase is set by RetryDeadLetters: attempts are numbered on
	// from the dead job's last attempt, and max_attempts counts from it.
	HeaderAttemptBase = "Tandem-Attempt-Base"
)

// ErrConflict is returned by Update when the record changed since it was read.
var ErrConflict = errors.New("job record changed concurrently")

// ErrExists is returned by Create when the record already exists.
var ErrExists = errors.New("job record exists")

// Record is a job record and the KV revision it was read at.
type Record struct {
	Job *tandemv1.Job
	Rev uint64
}

// Store reads and writes job records and blobs.
type Store struct {
	b *broker.Broker
	// InlineLimit is the largest payload or result kept inside the message or
	// record; larger ones go to an object store.
	InlineLimit int
	// Keys, when set, seal every payload and result written (inline in the
	// job message or record, or as an object) and open them on the read
	// paths (LoadPayload, View): see seal. nil: stored as they are, and
	// sealed bytes met on a read are an error naming their key id.
	Keys *sealing.Keyring
}

// Purposes of sealed bytes, bound into the seal with the job id: a payload
// cannot be opened as another job's, nor as a result.
const (
	purposePayload = "payload"
	purposeResult  = "result"
)

// seal and open are the only places payload and result bytes are encrypted
// and decrypted (encryption at rest, internal/sealing). Job metadata (ids,
// state, steps and op names, labels, attempts, errors, sizes) stays
// plaintext: the orchestrator reads it without a key and it is what the
// operator inspects.
func (s *Store) seal(purpose, jobID string, plain []byte) ([]byte, error) {
	b, err := s.Keys.Seal(purpose+":"+jobID, plain)
	if err != nil {
		return nil, apierr.Internal("sealing the %s of job %s: %v", purpose, jobID, err)
	}
	return b, nil
}

func (s *Store) open(purpose, jobID string, b []byte) ([]byte, error) {
	plain, err := s.Keys.Open(purpose+":"+jobID, b)
	if err != nil {
		return nil, apierr.New(tandemv1.ErrorReason_INTERNAL_ERROR, fmt.Sprintf("the %s of job %s cannot be decrypted: %v", purpose, jobID, err),
			apierr.KeyJobID, jobID)
	}
	return plain, nil
}

// New returns a Store. The inline limit follows the server's max_payload (read
// from the connection, so an external server's own setting counts): a quarter
// of it, leaving room for the record or message around the bytes. 2 MiB on the
// embedded server (max_payload 8 MiB), 256 KiB on a default nats-server (1 MiB).
func New(b *broker.Broker) *Store {
	return &Store{b: b, InlineLimit: InlineLimit(b.NC().MaxPayload())}
}

// InlineLimit is the largest payload or result kept inline for a server
// max_payload: a quarter of it (64 KiB when unknown).
func InlineLimit(maxPayload int64) int {
	if maxPayload <= 0 {
		return 64 << 10
	}
	return int(maxPayload / 4)
}

// Terminal reports whether a state has no way out but expiry.
func Terminal(s tandemv1.JobState) bool {
	switch s {
	case tandemv1.JobState_JOB_STATE_SUCCEEDED, tandemv1.JobState_JOB_STATE_FAILED,
		tandemv1.JobState_JOB_STATE_CANCELLED, tandemv1.JobState_JOB_STATE_DEAD:
		return true
	}
	return false
}

func brokerErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return err
	}
	if errors.Is(err, jetstream.ErrInvalidKey) {
		// Identifiers are checked at the API edge (internal/ident); an
		// invalid key here is bad input that slipped past, never an outage.
		return apierr.InvalidRequest("job_id", "not a valid key: %v", err)
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	// A NATS call that ran out of its own time (the caller's deadline is
	// enforced by gRPC before this matters) means NATS did not answer:
	// BROKER_UNAVAILABLE, retryable, not the caller's TIMEOUT.
	return apierr.BrokerUnavailable(err)
}

// Create writes a new record (KV create: fails with ErrExists if present).
func (s *Store) Create(ctx context.Context, j *tandemv1.Job) (*Record, error) {
	data, err := proto.Marshal(j)
	if err != nil {
		return nil, err
	}
	rev, err := s.b.Jobs().Create(ctx, j.GetId(), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, ErrExists
	}
	if err != nil {
		return nil, brokerErr(err)
	}
	return &Record{Job: j, Rev: rev}, nil
}

// Get reads a record; JOB_NOT_FOUND when absent.
func (s *Store) Get(ctx context.Context, id string) (*Record, error) {
	if id == "" || !validKey(id) {
		return nil, apierr.JobNotFound(id)
	}
	rec, err := s.record(ctx, id)
	if err == nil || !IsNotFound(err) {
		return rec, err
	}
	rec, err = s.queued(ctx, id)
	if err == nil || !IsNotFound(err) {
		return rec, err
	}
	// A worker may have written the record and acked the message between
	// the two looks (the record is always written before the message goes):
	// look at the record once more.
	return s.record(ctx, id)
}

// Record reads the job's record in KV only (JOB_NOT_FOUND when it has none:
// a queued job's message is then its record).
func (s *Store) Record(ctx context.Context, id string) (*Record, error) { return s.record(ctx, id) }

// QueuedRecord is the record a job message stands for while the job has no
// record in KV.
func QueuedRecord(spec *tandemv1.Job) *Record {
	j := Spec(spec)
	j.UpdatedAt = j.GetCreatedAt()
	return &Record{Job: j, Rev: 0}
}

func (s *Store) record(ctx context.Context, id string) (*Record, error) {
	e, err := s.b.Jobs().Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, apierr.JobNotFound(id)
	}
	if err != nil {
		return nil, brokerErr(err)
	}
	return Decode(e)
}

// GetInQueue is Get for a job known to belong to queue (a submit's): it
// looks at that queue's stream first, then at the record, and the record
// wins. In that order two reads cannot miss a job that exists (a worker
// writes the record before its message leaves the stream), and a job whose
// message is still there after its record was written reads as recorded.
func (s *Store) GetInQueue(ctx context.Context, queue, id string) (*Record, error) {
	var queued *Record
	if st, ok := s.b.Queues()[queue]; ok {
		var err error
		if queued, err = s.queuedIn(ctx, st, queue, id); err != nil {
			return nil, err
		}
	}
	rec, err := s.record(ctx, id)
	if IsNotFound(err) && queued != nil {
		return queued, nil
	}
	return rec, err
}

// findChunk is how many subjects one batched direct get asks for.
const findChunk = 256

// FindInQueue is GetInQueue for many ids at once, with batched direct gets
// (a few requests for a whole SubmitJobs call instead of two per job): the
// jobs found, by id; an id that is absent has no job.
func (s *Store) FindInQueue(ctx context.Context, queue string, ids []string) (map[string]*tandemv1.Job, error) {
	found := map[string]*tandemv1.Job{}
	if len(ids) == 0 {
		return found, nil
	}
	subjects := make([]string, 0, len(ids))
	for _, id := range ids {
		subjects = append(subjects, broker.JobSubject(queue, id))
	}
	err := s.lastMsgs(ctx, broker.QueueStream(queue), subjects, func(m *jetstream.RawStreamMsg) {
		if spec, _, _, err := DecodeMsg(m.Header, m.Data); err == nil {
			found[spec.GetId()] = QueuedRecord(spec).Job
		}
	})
	if err != nil {
		return nil, err
	}
	// Then every record (a record wins over a message still in the stream).
	subjects = subjects[:0]
	for _, id := range ids {
		subjects = append(subjects, broker.JobKVSubject(id))
	}
	err = s.lastMsgs(ctx, "KV_"+broker.JobsBucket, subjects, func(m *jetstream.RawStreamMsg) {
		if m.Header.Get("KV-Operation") != "" || len(m.Data) == 0 {
			return // the marker of a deleted or expired record
		}
		j := &tandemv1.Job{}
		if proto.Unmarshal(m.Data, j) == nil {
			found[j.GetId()] = j
		}
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// lastMsgs calls fn with the last message of each subject that has one.
func (s *Store) lastMsgs(ctx context.Context, stream string, subjects []string, fn func(*jetstream.RawStreamMsg)) error {
	for len(subjects) > 0 {
		n := min(findChunk, len(subjects))
		msgs, err := jetstreamext.GetLastMsgsFor(ctx, s.b.JS(), stream, subjects[:n])
		if err != nil {
			return brokerErr(err)
		}
		for m, err := range msgs {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			if err != nil {
				return brokerErr(err)
			}
			fn(m)
		}
		subjects = subjects[n:]
	}
	return nil
}

// IsNotFound reports whether err is JOB_NOT_FOUND.
func IsNotFound(err error) bool {
	var ae *apierr.Error
	return errors.As(err, &ae) && ae.Reason == tandemv1.ErrorReason_JOB_NOT_FOUND
}

// queued finds a job that has no record yet: its message, still in its
// queue's stream, is its QUEUED record (Rev 0: the first write creates the
// record). The queues this orchestrator serves are looked at first, then any
// other queue stream on the server that holds the job's subject.
func (s *Store) queued(ctx context.Context, id string) (*Record, error) {
	seen := map[string]bool{}
	for name, st := range s.b.Queues() {
		seen[broker.QueueStream(name)] = true
		if rec, err := s.queuedIn(ctx, st, name, id); rec != nil || err != nil {
			return rec, err
		}
	}
	names := s.b.JS().StreamNames(ctx, jetstream.WithStreamListSubject(broker.JobSubjectAnyQueue(id)))
	for name := range names.Name() {
		if seen[name] || !strings.HasPrefix(name, broker.QueueStreamPrefix) {
			continue
		}
		st, err := s.b.JS().Stream(ctx, name)
		if err != nil {
			continue
		}
		if rec, err := s.queuedIn(ctx, st, strings.TrimPrefix(name, broker.QueueStreamPrefix), id); rec != nil || err != nil {
			return rec, err
		}
	}
	if err := names.Err(); err != nil && !errors.Is(err, jetstream.ErrEndOfData) {
		return nil, brokerErr(err)
	}
	return nil, apierr.JobNotFound(id)
}

func (s *Store) queuedIn(ctx context.Context, st jetstream.Stream, queue, id string) (*Record, error) {
	m, err := st.GetLastMsgForSubject(ctx, broker.JobSubject(queue, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, brokerErr(err)
	}
	spec, _, _, err := DecodeMsg(m.Header, m.Data)
	if err != nil {
		return nil, apierr.Internal("job message %s is corrupt: %v", id, err)
	}
	return QueuedRecord(spec), nil
}

// Decode turns a KV entry into a Record.
func Decode(e jetstream.KeyValueEntry) (*Record, error) {
	j := &tandemv1.Job{}
	if err := proto.Unmarshal(e.Value(), j); err != nil {
		return nil, apierr.Internal("job record %s is corrupt: %v", e.Key(), err)
	}
	return &Record{Job: j, Rev: e.Revision()}, nil
}

// Update writes rec.Job if the record is still at rec.Rev, and advances rec.Rev.
func (s *Store) Update(ctx context.Context, rec *Record) error { return s.UpdateTTL(ctx, rec, 0) }

// UpdateTTL is Update with a time to live for the written value (0 = none):
// the terminal write of a job carries its queue's result TTL.
func (s *Store) UpdateTTL(ctx context.Context, rec *Record, ttl time.Duration) error {
	rec.Job.UpdatedAt = timestamppb.Now()
	data, err := proto.Marshal(rec.Job)
	if err != nil {
		return err
	}
	// A KV update is a publish expecting the key's last sequence (done by
	// hand: kv.Update takes no TTL). Rev 0 expects no record at all: the
	// first write of a job whose message was its QUEUED record.
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rec.Rev)}
	if ttl > 0 {
		opts = append(opts, jetstream.WithMsgTTL(max(ttl, time.Second)))
	}
	var rev uint64
	ack, err := s.b.JS().Publish(ctx, broker.JobKVSubject(rec.Job.GetId()), data, opts...)
	if rec.Rev == 0 && isWrongLastSeq(err) {
		// The key may hold only the delete marker of an expired or purged
		// record: a new record replaces the marker.
		if m, gerr := s.b.JobsStream().GetLastMsgForSubject(ctx, broker.JobKVSubject(rec.Job.GetId())); gerr == nil && (m.Header.Get("KV-Operation") != "" || m.Header.Get("Nats-Marker-Reason") != "") {
			opts[0] = jetstream.WithExpectLastSequencePerSubject(m.Sequence)
			ack, err = s.b.JS().Publish(ctx, broker.JobKVSubject(rec.Job.GetId()), data, opts...)
		}
	}
	if err == nil {
		rev = ack.Sequence
	}
	if errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSeq(err) {
		return ErrConflict
	}
	if err != nil {
		return brokerErr(err)
	}
	rec.Rev = rev
	return nil
}

func isWrongLastSeq(err error) bool {
	var ae *jetstream.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// Mutate reads the record, applies fn and writes it back by CAS, retrying on
// conflicts. fn returning an error aborts without writing; fn returning
// (false, nil) means "no change needed".
// ttl, when set, gives the TTL of the written value (see UpdateTTL).
func (s *Store) Mutate(ctx context.Context, id string, ttl func(j *tandemv1.Job) time.Duration, fn func(j *tandemv1.Job) (bool, error)) (*Record, error) {
	for i := 0; ; i++ {
		rec, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		changed, err := fn(rec.Job)
		if err != nil || !changed {
			return rec, err
		}
		var d time.Duration
		if ttl != nil {
			d = ttl(rec.Job)
		}
		err = s.UpdateTTL(ctx, rec, d)
		if errors.Is(err, ErrConflict) && i < 100 {
			continue
		}
		return rec, err
	}
}

func validKey(k string) bool {
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '=' || c == '/' || c == '.') {
			return false
		}
	}
	return true
}

// Spec returns the part of a record that travels in the job message.
func Spec(j *tandemv1.Job) *tandemv1.Job {
	return &tandemv1.Job{
		Id: j.GetId(), Queue: j.GetQueue(), Steps: j.GetSteps(), MaxAttempts: j.GetMaxAttempts(),
		IdempotencyKey: j.GetIdempotencyKey(), Labels: j.GetLabels(), PayloadSize: j.GetPayloadSize(),
		CreatedAt: j.GetCreatedAt(), Timeout: j.GetTimeout(), State: tandemv1.JobState_JOB_STATE_QUEUED,
		RequestHash: j.GetRequestHash(),
	}
}

// EncodeMsg builds the job message: body = uvarint(len(spec)) | spec | inline payload.
// When payloadObject is set the payload is in the payloads object store.
func EncodeMsg(subject string, spec *tandemv1.Job, payload []byte, payloadObject string) (*nats.Msg, error) {
	sb, err := proto.Marshal(spec)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(binary.MaxVarintLen64 + len(sb) + len(payload))
	var n [binary.MaxVarintLen64]byte
	buf.Write(n[:binary.PutUvarint(n[:], uint64(len(sb)))])
	buf.Write(sb)
	if payloadObject == "" {
		buf.Write(payload)
	}
	m := nats.NewMsg(subject)
	m.Header.Set(HeaderJobID, spec.GetId())
	if payloadObject != "" {
		m.Header.Set(HeaderPayloadObject, payloadObject)
	}
	m.Data = buf.Bytes()
	return m, nil
}

// NewJobMsg is the message of a newly submitted job: EncodeMsg with the
// inline payload sealed. (EncodeMsg itself takes the payload as stored: a
// dead letter and its retry carry the bytes of the original message.)
func (s *Store) NewJobMsg(subject string, spec *tandemv1.Job, payload []byte, payloadObject string) (*nats.Msg, error) {
	if payloadObject == "" {
		var err error
		if payload, err = s.seal(purposePayload, spec.GetId(), payload); err != nil {
			return nil, err
		}
	}
	return EncodeMsg(subject, spec, payload, payloadObject)
}

// DecodeMsg splits a job message into its spec, inline payload and payload object name.
func DecodeMsg(h nats.Header, data []byte) (spec *tandemv1.Job, payload []byte, payloadObject string, err error) {
	l, n := binary.Uvarint(data)
	if n <= 0 || uint64(len(data)-n) < l {
		return nil, nil, "", fmt.Errorf("job message: bad framing")
	}
	spec = &tandemv1.Job{}
	if err := proto.Unmarshal(data[n:n+int(l)], spec); err != nil {
		return nil, nil, "", fmt.Errorf("job message: %w", err)
	}
	return spec, data[n+int(l):], h.Get(HeaderPayloadObject), nil
}

// PayloadObject is the object name of a job's payload.
func PayloadObject(jobID string) string { return "payload/" + jobID }

// ResultObject is the object name of a job's result.
func ResultObject(jobID string) string { return "result/" + jobID }

// PutPayload stores a large payload.
func (s *Store) PutPayload(ctx context.Context, jobID string, payload []byte) (string, error) {
	name := PayloadObject(jobID)
	payload, err := s.seal(purposePayload, jobID, payload)
	if err != nil {
		return "", err
	}
	if _, err := s.b.Payloads().PutBytes(ctx, name, payload); err != nil {
		return "", brokerErr(err)
	}
	return name, nil
}

// LoadPayload returns the (opened) payload of job jobID's message.
func (s *Store) LoadPayload(ctx context.Context, jobID string, inline []byte, object string) ([]byte, error) {
	if object == "" {
		return s.open(purposePayload, jobID, inline)
	}
	data, err := s.b.Payloads().GetBytes(ctx, object)
	if err != nil {
		return nil, brokerErr(fmt.Errorf("payload %s: %w", object, err))
	}
	return s.open(purposePayload, jobID, data)
}

// DeletePayload removes a payload object (best effort).
func (s *Store) DeletePayload(ctx context.Context, object string) {
	if object != "" {
		_ = s.b.Payloads().Delete(ctx, object)
	}
}

// AttachResult puts the result inline in the record when small, else in the
// results object store (the record then has result_size > 0 and no bytes).
func (s *Store) AttachResult(ctx context.Context, j *tandemv1.Job, result []byte, contentType string) error {
	j.ResultSize = uint64(len(result))
	j.ResultContentType = contentType
	inline := len(result) <= s.InlineLimit
	result, err := s.seal(purposeResult, j.GetId(), result)
	if err != nil {
		return err
	}
	if inline {
		j.Result = result
		return nil
	}
	store, err := s.results(ctx, j.GetQueue())
	if err != nil {
		return err
	}
	if _, err := store.PutBytes(ctx, ResultObject(j.GetId()), result); err != nil {
		return brokerErr(err)
	}
	j.Result = nil
	return nil
}

// results is the results object store of a queue (one configured in another
// orchestrator sharing the NATS server is looked up by name).
func (s *Store) results(ctx context.Context, queue string) (jetstream.ObjectStore, error) {
	if store, ok := s.b.Results()[queue]; ok {
		return store, nil
	}
	store, err := s.b.JS().ObjectStore(ctx, broker.ResultsBucket(queue))
	if err != nil {
		return nil, brokerErr(fmt.Errorf("results of queue %s: %w", queue, err))
	}
	return store, nil
}

// View returns a copy of the record fit for a client: with the result bytes
// (loaded from the object store if needed) when includeResult, else without.
func (s *Store) View(ctx context.Context, j *tandemv1.Job, includeResult bool) (*tandemv1.Job, error) {
	out := proto.Clone(j).(*tandemv1.Job)
	if !includeResult || out.GetState() != tandemv1.JobState_JOB_STATE_SUCCEEDED {
		out.Result = nil
		return out, nil
	}
	if out.GetResultSize() > 0 && len(out.GetResult()) == 0 {
		store, err := s.results(ctx, out.GetQueue())
		if err != nil {
			return nil, err
		}
		data, err := store.GetBytes(ctx, ResultObject(out.GetId()))
		if err != nil {
			return nil, brokerErr(fmt.Errorf("result of job %s: %w", out.GetId(), err))
		}
		out.Result = data
	}
	plain, err := s.open(purposeResult, out.GetId(), out.GetResult())
	if err != nil {
		return nil, err
	}
	out.Result = plain
	return out, nil
}

// CloseAttempt marks attempt number n of j finished (now) with error e
// (nil: it succeeded), unless it is already closed.
func CloseAttempt(j *tandemv1.Job, n uint32, e *tandemv1.Error) {
	for _, a := range j.GetAttempts() {
		if a.GetNumber() == n && a.FinishedAt == nil {
			a.FinishedAt = Now()
			a.Error = e
		}
	}
}

// Now is a timestamp for records.
func Now() *timestamppb.Timestamp { return timestamppb.New(time.Now()) }

// Timestamp is a timestamp for records of a given time.
func Timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

// PublishEvent announces a state change on tandem.events.<queue>.<job id> (core
// NATS, not persisted: the record in KV is the durable truth). rev is the KV
// revision the change was written at (header Tandem-Rev), so a watcher can
// order events against records it read.
// j must not be in use by another goroutine (its result is set aside, not
// copied, while the event is encoded).
func (s *Store) PublishEvent(j *tandemv1.Job, rev uint64) {
	result := j.Result
	j.Result = nil
	data, err := proto.Marshal(j)
	j.Result = result
	if err != nil {
		return
	}
	m := nats.NewMsg(broker.EventsSubject(j.GetQueue(), j.GetId()))
	m.Header.Set(broker.HeaderEventRev, strconv.FormatUint(rev, 10))
	m.Data = data
	_ = s.b.NC().PublishMsg(m)
}

// EventRev is the record revision an event announces (0 if absent).
func EventRev(m *nats.Msg) uint64 {
	v, _ := strconv.ParseUint(m.Header.Get(broker.HeaderEventRev), 10, 64)
	return v
}
