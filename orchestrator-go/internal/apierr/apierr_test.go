package apierr_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
)

func TestStatusCarriesErrorInfoAndRetryInfo(t *testing.T) {
	t.Parallel()
	err := apierr.Status(fmt.Errorf("wrapped: %w", apierr.QueueFull("q", 10, 1500*time.Millisecond)))
	st := status.Convert(err)
	require.Equal(t, codes.ResourceExhausted, st.Code())
	var ei *errdetails.ErrorInfo
	var ri *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			ei = d
		case *errdetails.RetryInfo:
			ri = d
		}
	}
	require.Equal(t, "QUEUE_FULL", ei.GetReason())
	require.Equal(t, "tandem.dev", ei.GetDomain())
	require.Equal(t, "1500", ei.GetMetadata()["retry_after_ms"])
	require.Equal(t, 1500*time.Millisecond, ri.GetRetryDelay().AsDuration())

	back := apierr.FromStatus(st)
	require.Equal(t, tandemv1.ErrorReason_QUEUE_FULL, back.Reason)
	require.Equal(t, 1500*time.Millisecond, back.RetryAfter)
	require.True(t, errors.Is(back, &apierr.Error{Reason: tandemv1.ErrorReason_QUEUE_FULL}))
}

func TestFromClassifies(t *testing.T) {
	t.Parallel()
	require.Equal(t, tandemv1.ErrorReason_TIMEOUT, apierr.From(context.DeadlineExceeded).Reason)
	require.Equal(t, tandemv1.ErrorReason_CANCELLED, apierr.From(context.Canceled).Reason)
	require.Equal(t, tandemv1.ErrorReason_INTERNAL_ERROR, apierr.From(errors.New("boom")).Reason)
	require.Equal(t, tandemv1.ErrorReason_COMPUTE_UNAVAILABLE, apierr.From(status.Error(codes.Unavailable, "down")).Reason)
	require.True(t, apierr.Retryable(apierr.From(status.Error(codes.Unavailable, "down"))))
	require.True(t, apierr.Retryable(apierr.From(status.Error(codes.Internal, "bug"))))
	require.False(t, apierr.Retryable(apierr.From(status.Error(codes.InvalidArgument, "bad"))))
	require.False(t, apierr.Retryable(apierr.From(status.Error(codes.FailedPrecondition, "no"))))
	p := apierr.Proto(apierr.JobNotFound("x"))
	require.EqualValues(t, codes.NotFound, p.GetCode())
	require.Equal(t, "x", p.GetMetadata()["job_id"])
}

// TestCatalogueCoversEveryReason walks the whole ErrorReason enum: every
// reason but UNSPECIFIED has a catalogue entry, New gives it the catalogue's
// code, the status round-trips, and Retryable follows the catalogue.
func TestCatalogueCoversEveryReason(t *testing.T) {
	t.Parallel()
	values := tandemv1.ErrorReason(0).Descriptor().Values()
	require.Greater(t, values.Len(), 20)
	for i := range values.Len() {
		r := tandemv1.ErrorReason(values.Get(i).Number())
		spec, ok := apierr.Spec(r)
		if r == tandemv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
			require.False(t, ok)
			continue
		}
		require.True(t, ok, "reason %s has no (tandem.v1.reason) option in errors.proto", r)
		if spec.GetCode() == "" {
			require.Equal(t, tandemv1.ErrorReason_INJECTED_FAULT, r, "only INJECTED_FAULT may have no fixed code")
			continue
		}
		e := apierr.New(r, "m")
		var want codes.Code
		require.NoError(t, want.UnmarshalJSON([]byte(`"`+spec.GetCode()+`"`)))
		require.Equal(t, want, e.Code, "reason %s", r)
		require.Equal(t, spec.GetRetryable(), apierr.Retryable(e), "reason %s", r)
		back := apierr.FromStatus(status.Convert(apierr.Status(e)))
		require.Equal(t, r, back.Reason)
		require.Equal(t, e.Code, back.Code)
		require.Equal(t, spec.GetRetryable(), apierr.Retryable(back), "reason %s after a round trip", r)
	}
	// The case that drifted: a watch losing NATS is UNAVAILABLE and retryable.
	e := apierr.BrokerUnavailable(errors.New("gone"))
	require.Equal(t, codes.Unavailable, e.Code)
	require.True(t, apierr.Retryable(e))
}

func TestErrorsQuoteAShortPrefixOfCallerValues(t *testing.T) {
	t.Parallel()
	for _, n := range []int{apierr.MaxQuote - 1, apierr.MaxQuote, apierr.MaxQuote + 1, 1 << 20} {
		v := strings.Repeat("é", n/2) + strings.Repeat("a", n%2)
		q := apierr.Quote(v)
		if len(v) <= apierr.MaxQuote {
			require.Equal(t, fmt.Sprintf("%q", v), q)
			continue
		}
		require.Less(t, len(q), apierr.MaxQuote+40)
		require.Contains(t, q, fmt.Sprintf("(%d bytes)", len(v)))
		require.True(t, utf8.ValidString(q))
	}
	// Whatever a constructor was given, the status stays small.
	huge := strings.Repeat("x", 1<<20)
	st := status.Convert(apierr.Status(apierr.New(tandemv1.ErrorReason_UNKNOWN_OP, huge, apierr.KeyOp, huge)))
	require.LessOrEqual(t, len(st.Message()), apierr.MaxMessage+64)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			require.LessOrEqual(t, len(ei.GetMetadata()[apierr.KeyOp]), apierr.MaxMetadataValue+4)
		}
	}
	require.Less(t, proto.Size(st.Proto()), 4096)
	p := apierr.Proto(apierr.JobNotFound(huge))
	require.Less(t, proto.Size(p), 4096)
}
