package apierr_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
