package compute

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
)

func reason(t *testing.T, err error) tandemv1.ErrorReason {
	t.Helper()
	var e *apierr.Error
	require.True(t, errors.As(err, &e), "%v", err)
	return e.Reason
}

func TestValidatePayloadLimitAtTheEdge(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	ops := &tandemv1.ListOpsResponse{Ops: []*tandemv1.OpSpec{{Name: "hash.sha256"}}, Limits: &tandemv1.Limits{MaxRequestBytes: limit}}
	steps := []*tandemv1.Step{{Op: "hash.sha256"}}
	fits := limit - requestOverhead(steps, limit)
	require.NoError(t, Validate(steps, fits, ops))
	err := Validate(steps, fits+1, ops)
	require.Equal(t, tandemv1.ErrorReason_PAYLOAD_TOO_LARGE, reason(t, err))
	var e *apierr.Error
	require.True(t, errors.As(err, &e))
	require.Equal(t, "payload", e.Metadata["field"])
	require.NotEmpty(t, e.Metadata["limit"])
}

func TestValidateParams(t *testing.T) {
	t.Parallel()
	ops := &tandemv1.ListOpsResponse{Ops: []*tandemv1.OpSpec{{Name: "compress.zstd", Params: []*tandemv1.ParamSpec{
		{Name: "level", Type: tandemv1.ParamType_PARAM_TYPE_INT, Min: 1, Max: 22},
		{Name: "mode", Type: tandemv1.ParamType_PARAM_TYPE_ENUM, Choices: []string{"a", "b"}},
		{Name: "fast", Type: tandemv1.ParamType_PARAM_TYPE_BOOL},
		{Name: "name", Type: tandemv1.ParamType_PARAM_TYPE_STRING, Max: 3},
	}}}, Limits: &tandemv1.Limits{MaxSteps: 2}}
	st := func(kv ...string) []*tandemv1.Step {
		s := &tandemv1.Step{Op: "compress.zstd", Params: map[string]string{}}
		for i := 0; i+1 < len(kv); i += 2 {
			s.Params[kv[i]] = kv[i+1]
		}
		return []*tandemv1.Step{s}
	}
	require.NoError(t, Validate(st("level", "3", "mode", "a", "fast", "true", "name", "abc"), 0, ops))
	err := Validate(st("level", "40"), 0, ops)
	require.Equal(t, tandemv1.ErrorReason_PARAM_OUT_OF_RANGE, reason(t, err))
	require.Equal(t, `step 0 (compress.zstd): param "level" = 40 is out of range [1, 22]`, err.(*apierr.Error).Message)
	require.Equal(t, tandemv1.ErrorReason_PARAM_INVALID, reason(t, Validate(st("level", "x"), 0, ops)))
	require.Equal(t, tandemv1.ErrorReason_PARAM_INVALID, reason(t, Validate(st("mode", "c"), 0, ops)))
	require.Equal(t, tandemv1.ErrorReason_PARAM_INVALID, reason(t, Validate(st("fast", "yes"), 0, ops)))
	require.Equal(t, tandemv1.ErrorReason_PARAM_OUT_OF_RANGE, reason(t, Validate(st("name", "abcd"), 0, ops)))
	require.Equal(t, tandemv1.ErrorReason_PARAM_INVALID, reason(t, Validate(st("colour", "blue"), 0, ops)))
	three := append(append(st(), st()...), st()...)
	require.Equal(t, tandemv1.ErrorReason_REQUEST_INVALID, reason(t, Validate(three, 0, ops)))
	require.Equal(t, tandemv1.ErrorReason_UNKNOWN_OP, reason(t, Validate([]*tandemv1.Step{{Op: "x"}}, 0, ops)))
	// Without ListOps (compute down), structure only.
	require.NoError(t, Validate([]*tandemv1.Step{{Op: "x"}}, 1<<30, nil))
	require.Equal(t, tandemv1.ErrorReason_REQUEST_INVALID, reason(t, Validate(nil, 0, nil)))
}
