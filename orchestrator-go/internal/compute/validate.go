package compute

import (
	"fmt"
	"math"
	"slices"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
)

// Validate checks a pipeline and payload size against compute's ListOps answer.
// With ops == nil it checks structure only. Errors are INVALID_ARGUMENT
// *apierr.Error naming the step, op, param or field and the limit.
func Validate(steps []*tandemv1.Step, payloadLen int, ops *tandemv1.ListOpsResponse) error {
	if len(steps) == 0 {
		return apierr.InvalidRequest("steps", "steps: at least one step is required")
	}
	if ops == nil {
		for i, s := range steps {
			if s.GetOp() == "" {
				return apierr.InvalidRequest("steps", "step %d: op is empty", i)
			}
		}
		return nil
	}
	lim := ops.GetLimits()
	if ms := lim.GetMaxSteps(); ms > 0 && len(steps) > int(ms) {
		return apierr.New(tandemv1.ErrorReason_REQUEST_INVALID,
			fmt.Sprintf("steps: %d steps exceed the limit of %d", len(steps), ms),
			apierr.KeyField, "steps", apierr.KeyLimit, strconv.Itoa(int(ms)), apierr.KeyActual, strconv.Itoa(len(steps)))
	}
	// The job must fit the compute request limit together with the rest of
	// the TransformRequest, or it would be admitted and then fail on it.
	if mr := lim.GetMaxRequestBytes(); mr > 0 && uint64(payloadLen+requestOverhead(steps, payloadLen)) > mr {
		limit := mr - min(mr, uint64(requestOverhead(steps, payloadLen)))
		return apierr.New(tandemv1.ErrorReason_PAYLOAD_TOO_LARGE,
			fmt.Sprintf("payload: %d bytes exceed the limit of %d bytes for this pipeline (compute max_request_bytes %d)", payloadLen, limit, mr),
			apierr.KeyField, "payload", apierr.KeyLimit, strconv.FormatUint(limit, 10), apierr.KeyActual, strconv.Itoa(payloadLen))
	}
	byName := make(map[string]*tandemv1.OpSpec, len(ops.GetOps()))
	for _, o := range ops.GetOps() {
		byName[o.GetName()] = o
	}
	for i, s := range steps {
		si := strconv.Itoa(i)
		spec, ok := byName[s.GetOp()]
		if !ok {
			return apierr.New(tandemv1.ErrorReason_UNKNOWN_OP,
				fmt.Sprintf("step %d: unknown op %s", i, apierr.Quote(s.GetOp())), apierr.KeyStep, si, apierr.KeyOp, s.GetOp(), apierr.KeyField, "steps")
		}
		if err := validateParams(i, spec, s.GetParams()); err != nil {
			return err
		}
	}
	return nil
}

// requestOverhead is the size of a TransformRequest for these steps minus
// the payload bytes themselves (job id, attempt, framing at their largest).
func requestOverhead(steps []*tandemv1.Step, payloadLen int) int {
	r := &tandemv1.TransformRequest{Steps: steps, JobId: "01234567890123456789012345", Attempt: math.MaxUint32}
	return proto.Size(r) + 1 + protowire.SizeVarint(uint64(payloadLen))
}

func validateParams(i int, spec *tandemv1.OpSpec, params map[string]string) error {
	si, op := strconv.Itoa(i), spec.GetName()
	bad := func(reason tandemv1.ErrorReason, param, msg string, kv ...string) error {
		kv = append([]string{apierr.KeyStep, si, apierr.KeyOp, op, apierr.KeyParam, param}, kv...)
		return apierr.New(reason, fmt.Sprintf("step %d (%s): %s", i, op, msg), kv...)
	}
	known := make(map[string]*tandemv1.ParamSpec, len(spec.GetParams()))
	for _, p := range spec.GetParams() {
		known[p.GetName()] = p
	}
	names := make([]string, 0, len(params))
	for n := range params {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if _, ok := known[n]; !ok {
			return bad(tandemv1.ErrorReason_PARAM_INVALID, n, fmt.Sprintf("unknown param %s", apierr.Quote(n)))
		}
	}
	for _, p := range spec.GetParams() {
		v, ok := params[p.GetName()]
		if !ok {
			if p.GetRequired() {
				return bad(tandemv1.ErrorReason_PARAM_INVALID, p.GetName(), fmt.Sprintf("param %q is required", p.GetName()))
			}
			continue
		}
		switch p.GetType() {
		case tandemv1.ParamType_PARAM_TYPE_INT:
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return bad(tandemv1.ErrorReason_PARAM_INVALID, p.GetName(), fmt.Sprintf("param %q = %s is not an integer", p.GetName(), apierr.Quote(v)))
			}
			if n < p.GetMin() || n > p.GetMax() {
				return bad(tandemv1.ErrorReason_PARAM_OUT_OF_RANGE, p.GetName(),
					fmt.Sprintf("param %q = %d is out of range [%d, %d]", p.GetName(), n, p.GetMin(), p.GetMax()),
					apierr.KeyLimit, fmt.Sprintf("[%d, %d]", p.GetMin(), p.GetMax()), apierr.KeyActual, v)
			}
		case tandemv1.ParamType_PARAM_TYPE_ENUM:
			if !slices.Contains(p.GetChoices(), v) {
				return bad(tandemv1.ErrorReason_PARAM_INVALID, p.GetName(),
					fmt.Sprintf("param %q = %s is not one of %v", p.GetName(), apierr.Quote(v), p.GetChoices()), apierr.KeyActual, v)
			}
		case tandemv1.ParamType_PARAM_TYPE_BOOL:
			if v != "true" && v != "false" {
				return bad(tandemv1.ErrorReason_PARAM_INVALID, p.GetName(), fmt.Sprintf("param %q = %s is not true or false", p.GetName(), apierr.Quote(v)))
			}
		case tandemv1.ParamType_PARAM_TYPE_STRING:
			if p.GetMax() > 0 && int64(len(v)) > p.GetMax() {
				return bad(tandemv1.ErrorReason_PARAM_OUT_OF_RANGE, p.GetName(),
					fmt.Sprintf("param %q is %d bytes, longer than %d", p.GetName(), len(v), p.GetMax()),
					apierr.KeyLimit, strconv.FormatInt(p.GetMax(), 10), apierr.KeyActual, strconv.Itoa(len(v)))
			}
		}
	}
	return nil
}
