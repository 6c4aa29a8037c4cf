package api

import (
	"context"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/compute"
)

// The caller's deadline is the same context, and its trace context travels
// through the gRPC stats handlers (internal/telemetry).

// ComputeProxy serves tandem.v1.ComputeService on the orchestrator's address,
// so clients need one address: ListOps from the cached compute answer,
// Transform and TransformBatch forwarded to compute through the per-endpoint
// breakers and round robin. Compute's errors are passed through unchanged.
type ComputeProxy struct {
	tandemv1.UnimplementedComputeServiceServer
	Compute *compute.Client
	// Jobs gives ListOps the whole catalogue (compute's ops and the ops of
	// op workers).
	Jobs *Service
}

// ListOps implements ComputeService from the cached ListOps (refreshed when
// older than 30 s).
func (p *ComputeProxy) ListOps(ctx context.Context, _ *tandemv1.ListOpsRequest) (*tandemv1.ListOpsResponse, error) {
	ops := p.Jobs.Catalogue(ctx)
	if ops == nil {
		return nil, apierr.Status(apierr.ComputeUnavailable("no compute endpoint has answered ListOps yet"))
	}
	return ops, nil
}

// Transform implements ComputeService by forwarding to compute.
func (p *ComputeProxy) Transform(ctx context.Context, req *tandemv1.TransformRequest) (*tandemv1.TransformResponse, error) {
	r, err := p.Compute.Forward(ctx, func(ctx context.Context, cli tandemv1.ComputeServiceClient) (any, error) {
		return cli.Transform(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	return r.(*tandemv1.TransformResponse), nil
}

// TransformBatch implements ComputeService by forwarding to compute.
func (p *ComputeProxy) TransformBatch(ctx context.Context, req *tandemv1.TransformBatchRequest) (*tandemv1.TransformBatchResponse, error) {
	r, err := p.Compute.Forward(ctx, func(ctx context.Context, cli tandemv1.ComputeServiceClient) (any, error) {
		return cli.TransformBatch(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	return r.(*tandemv1.TransformBatchResponse), nil
}
