package orchestrator_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

// The orchestrator serves tandem.v1.ComputeService too: ListOps from its
// cache, Transform/TransformBatch forwarded, compute's errors unchanged.
func TestComputeServiceThroughOrchestrator(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t)
	via := tandemv1.NewComputeServiceClient(b.conn)
	dconn, err := grpc.NewClient(b.compute.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer dconn.Close()
	direct := tandemv1.NewComputeServiceClient(dconn)

	ops, err := via.ListOps(ctx, &tandemv1.ListOpsRequest{})
	require.NoError(t, err)
	want, err := direct.ListOps(ctx, &tandemv1.ListOpsRequest{})
	require.NoError(t, err)
	require.True(t, proto.Equal(want, ops))

	r, err := via.Transform(ctx, &tandemv1.TransformRequest{Steps: []*tandemv1.Step{step("test.echo")}, Input: []byte("hi")})
	require.NoError(t, err)
	require.Equal(t, []byte("hi"), r.GetOutput())

	bad := &tandemv1.TransformRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "INVALID_ARGUMENT")}}
	_, errVia := via.Transform(ctx, bad)
	_, errDirect := direct.Transform(ctx, bad)
	require.Error(t, errDirect)
	require.True(t, proto.Equal(status.Convert(errDirect).Proto(), status.Convert(errVia).Proto()),
		"via orchestrator %v, direct %v", errVia, errDirect)
	require.Equal(t, tandemv1.ErrorReason_INJECTED_FAULT.String(), errInfo(t, errVia).GetReason())

	br, err := via.TransformBatch(ctx, &tandemv1.TransformBatchRequest{Items: []*tandemv1.TransformRequest{
		{Steps: []*tandemv1.Step{step("hash.sha256")}, Input: []byte("a")}, bad,
	}})
	require.NoError(t, err)
	require.Len(t, br.GetResults(), 2)
	require.Len(t, br.GetResults()[0].GetResponse().GetOutput(), 32)
	require.Equal(t, tandemv1.ErrorReason_INJECTED_FAULT, br.GetResults()[1].GetError().GetReason())

	// Health and reflection know the service.
	hc := healthpb.NewHealthClient(b.conn)
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "tandem.v1.ComputeService"})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 10*time.Second, 20*time.Millisecond)
	rs, err := reflectionpb.NewServerReflectionClient(b.conn).ServerReflectionInfo(ctx)
	require.NoError(t, err)
	require.NoError(t, rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	lr, err := rs.Recv()
	require.NoError(t, err)
	var names []string
	for _, s := range lr.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	require.Contains(t, names, "tandem.v1.ComputeService")
	require.Contains(t, names, "tandem.v1.JobService")

	// Compute gone: every breaker opens; the orchestrator answers UNAVAILABLE.
	b.compute.Stop()
	require.Eventually(t, func() bool {
		_, err := via.Transform(ctx, &tandemv1.TransformRequest{Steps: []*tandemv1.Step{step("test.echo")}})
		return err != nil && errInfoOK(err) == tandemv1.ErrorReason_COMPUTE_UNAVAILABLE.String()
	}, 20*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "tandem.v1.ComputeService"})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	}, 10*time.Second, 20*time.Millisecond)
}

func errInfoOK(err error) string {
	for _, d := range status.Convert(err).Details() {
		if ei, ok := d.(interface{ GetReason() string }); ok {
			return ei.GetReason()
		}
	}
	return ""
}
