// Package apierr is the orchestrator's one error mapping: typed errors that carry
// a tandem.v1.ErrorReason, and their conversion to and from gRPC statuses (with a
// google.rpc.ErrorInfo detail, domain "tandem.dev") and to tandem.v1.Error for
// storage in job records and batch results.
package apierr

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

// Domain is the ErrorInfo domain of every Tandem error.
const Domain = "tandem.dev"

// Metadata keys, as documented on ErrorReason.
const (
	KeyStep         = "step"
	KeyOp           = "op"
	KeyParam        = "param"
	KeyField        = "field"
	KeyLimit        = "limit"
	KeyActual       = "actual"
	KeyQueue        = "queue"
	KeyJobID        = "job_id"
	KeyRetryAfterMs = "retry_after_ms"
	KeyScope        = "scope"
)

// Error is a Tandem error: a gRPC code, a catalogue reason, a message naming
// the field and the limit, and metadata.
type Error struct {
	Code       codes.Code
	Reason     tandemv1.ErrorReason
	Message    string
	Metadata   map[string]string
	RetryAfter time.Duration // sent as google.rpc.RetryInfo when > 0
	// Remote is true when the error came from another service's status (compute)
	// rather than being raised here.
	Remote bool
}

func (e *Error) Error() string { return e.Reason.String() + ": " + e.Message }

// Is matches another *Error with the same reason, so errors.Is(err, &Error{Reason: X}) works.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Reason == e.Reason
}

// New builds an error with the gRPC code the catalogue gives reason (see
// catalogue.go); kv are metadata key/value pairs. The code is never chosen by
// the caller, so a reason cannot travel with two codes.
func New(reason tandemv1.ErrorReason, msg string, kv ...string) *Error {
	e := &Error{Code: CodeOf(reason), Reason: reason, Message: msg}
	if len(kv) > 0 {
		e.Metadata = make(map[string]string, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			e.Metadata[kv[i]] = kv[i+1]
		}
	}
	return e
}

// Constructors for the reasons the orchestrator raises itself.

func InvalidRequest(field, format string, a ...any) *Error {
	return New(tandemv1.ErrorReason_REQUEST_INVALID, fmt.Sprintf(format, a...), KeyField, field)
}

func QueueNotFound(queue string) *Error {
	return New(tandemv1.ErrorReason_QUEUE_NOT_FOUND, fmt.Sprintf("queue %s is not configured", Quote(queue)), KeyQueue, queue)
}

func QueueFull(queue string, limit uint64, retryAfter time.Duration) *Error {
	e := New(tandemv1.ErrorReason_QUEUE_FULL,
		fmt.Sprintf("queue %s holds its max_depth of %d jobs; retry after %s", Quote(queue), limit, retryAfter),
		KeyQueue, queue, KeyLimit, strconv.FormatUint(limit, 10), KeyRetryAfterMs, strconv.FormatInt(retryAfter.Milliseconds(), 10))
	e.RetryAfter = retryAfter
	return e
}

func JobNotFound(id string) *Error {
	return New(tandemv1.ErrorReason_JOB_NOT_FOUND, fmt.Sprintf("job %s not found", Quote(id)), KeyJobID, id)
}

func JobStateConflict(id string, state tandemv1.JobState, what string) *Error {
	return New(tandemv1.ErrorReason_JOB_STATE_CONFLICT,
		fmt.Sprintf("job %s is %s: cannot %s", Quote(id), state, what), KeyJobID, id)
}

func IdempotencyConflict(queue, key, jobID string) *Error {
	return New(tandemv1.ErrorReason_IDEMPOTENCY_CONFLICT,
		fmt.Sprintf("idempotency_key %s on queue %s was used by job %s with a different request", Quote(key), Quote(queue), Quote(jobID)),
		KeyField, "idempotency_key", KeyQueue, queue, KeyJobID, jobID)
}

func DeadLetterNotFound(queue, id string) *Error {
	return New(tandemv1.ErrorReason_DEAD_LETTER_NOT_FOUND,
		fmt.Sprintf("no dead letter for job %s in queue %s", Quote(id), Quote(queue)), KeyQueue, queue, KeyJobID, id)
}

func Unauthenticated(format string, a ...any) *Error {
	return New(tandemv1.ErrorReason_UNAUTHENTICATED, fmt.Sprintf(format, a...))
}

func TokenExpired(id string, at time.Time) *Error {
	return New(tandemv1.ErrorReason_TOKEN_EXPIRED, fmt.Sprintf("token %s expired at %s", Quote(id), at.UTC().Format(time.RFC3339)))
}

// PermissionDenied: the caller's token lacks scope on queue ("*": every queue).
func PermissionDenied(scope, queue string) *Error {
	where := "queue " + Quote(queue)
	if queue == "*" {
		where = "every queue"
	}
	return New(tandemv1.ErrorReason_PERMISSION_DENIED, fmt.Sprintf("this call needs scope %s on %s", scope, where),
		KeyScope, scope, KeyQueue, queue)
}

func RateLimited(limit float64, retryAfter time.Duration) *Error {
	retryAfter = max(retryAfter, time.Millisecond)
	e := New(tandemv1.ErrorReason_RATE_LIMITED,
		fmt.Sprintf("more than %g calls per second from this caller; retry after %s", limit, retryAfter.Round(time.Millisecond)),
		KeyLimit, strconv.FormatFloat(limit, 'g', -1, 64), KeyRetryAfterMs, strconv.FormatInt(max(1, retryAfter.Milliseconds()), 10))
	e.RetryAfter = retryAfter
	return e
}

func ComputeUnavailable(format string, a ...any) *Error {
	return New(tandemv1.ErrorReason_COMPUTE_UNAVAILABLE, fmt.Sprintf(format, a...))
}

func BrokerUnavailable(err error) *Error {
	return New(tandemv1.ErrorReason_BROKER_UNAVAILABLE, "NATS JetStream unavailable: "+err.Error())
}

func ShuttingDown() *Error {
	return New(tandemv1.ErrorReason_SHUTTING_DOWN, "the orchestrator is draining for shutdown")
}

func Timeout(format string, a ...any) *Error {
	return New(tandemv1.ErrorReason_TIMEOUT, fmt.Sprintf(format, a...))
}

func Cancelled(format string, a ...any) *Error {
	return New(tandemv1.ErrorReason_CANCELLED, fmt.Sprintf(format, a...))
}

func Internal(format string, a ...any) *Error {
	return New(tandemv1.ErrorReason_INTERNAL_ERROR, fmt.Sprintf(format, a...))
}

// From turns any error into an *Error. Typed errors pass through; gRPC statuses
// carrying a tandem.dev ErrorInfo are decoded; context errors become TIMEOUT or
// CANCELLED; anything else is INTERNAL_ERROR.
func From(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return Timeout("%v", err)
	}
	if errors.Is(err, context.Canceled) {
		return Cancelled("%v", err)
	}
	if st, ok := status.FromError(err); ok {
		return FromStatus(st)
	}
	return Internal("%v", err)
}

// FromStatus decodes a gRPC status. Without a tandem.dev ErrorInfo the reason is
// derived from the code (UNAVAILABLE → COMPUTE_UNAVAILABLE, etc.).
func FromStatus(st *status.Status) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), Remote: true}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == Domain {
				if v, ok := tandemv1.ErrorReason_value[d.GetReason()]; ok {
					e.Reason = tandemv1.ErrorReason(v)
				}
				e.Metadata = d.GetMetadata()
			}
		case *errdetails.RetryInfo:
			e.RetryAfter = d.GetRetryDelay().AsDuration()
		}
	}
	if e.Reason == tandemv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
		switch st.Code() {
		case codes.Unavailable:
			e.Reason = tandemv1.ErrorReason_COMPUTE_UNAVAILABLE
		case codes.DeadlineExceeded:
			e.Reason = tandemv1.ErrorReason_TIMEOUT
		case codes.Canceled:
			e.Reason = tandemv1.ErrorReason_CANCELLED
		case codes.ResourceExhausted:
			e.Reason = tandemv1.ErrorReason_OVERLOADED
		case codes.InvalidArgument:
			e.Reason = tandemv1.ErrorReason_REQUEST_INVALID
		default:
			e.Reason = tandemv1.ErrorReason_INTERNAL_ERROR
		}
	}
	return e
}

// HasErrorInfo reports whether err is a gRPC status carrying a tandem.dev
// ErrorInfo, i.e. the remote service answered (as opposed to a transport failure).
func HasErrorInfo(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == Domain {
			return true
		}
	}
	return false
}

// Status converts err into the gRPC status a handler returns.
func Status(err error) error {
	if err == nil {
		return nil
	}
	e := From(err)
	st := status.New(e.Code, boundMessage(e.Message))
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: e.Reason.String(), Domain: Domain, Metadata: boundMetadata(e.Metadata)}}
	if e.RetryAfter > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(e.RetryAfter)})
	}
	ds, derr := st.WithDetails(details...)
	if derr != nil {
		return st.Err()
	}
	return ds.Err()
}

// Proto converts err into the tandem.v1.Error stored in records.
func Proto(err error) *tandemv1.Error {
	if err == nil {
		return nil
	}
	e := From(err)
	return &tandemv1.Error{Code: int32(e.Code), Reason: e.Reason, Message: boundMessage(e.Message), Metadata: boundMetadata(e.Metadata)}
}

// FromProto is the inverse of Proto.
func FromProto(p *tandemv1.Error) *Error {
	if p == nil {
		return nil
	}
	return &Error{Code: codes.Code(p.GetCode()), Reason: p.GetReason(), Message: p.GetMessage(), Metadata: p.GetMetadata()}
}

// Retryable reports whether the orchestrator retries a job that failed with
// e, and a client a call: the catalogue's retryable flag for e's reason when
// e travels with the reason's own code. Otherwise (a reason with no fixed
// code such as INJECTED_FAULT, or a remote status without ErrorInfo whose
// reason was guessed from the code) the code decides: UNAVAILABLE,
// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN and ABORTED are
// transient.
func Retryable(e *Error) bool {
	if spec, ok := Spec(e.Reason); ok && spec.GetCode() != "" && CodeOf(e.Reason) == e.Code {
		return spec.GetRetryable()
	}
	switch e.Code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Internal, codes.Unknown, codes.Aborted:
		return true
	}
	return false
}
