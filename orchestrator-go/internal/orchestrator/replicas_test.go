package orchestrator_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/broker"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNATSCluster runs a three-node JetStream cluster in-process and returns
// its client URLs (comma-separated).
func startNATSCluster(t *testing.T) string {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var urls []string
	var srvs []*server.Server
	for i, p := range ports {
		ns, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true, MaxPayload: 8 << 20,
			Cluster: server.ClusterOpts{Name: "tandem-test", Host: "127.0.0.1", Port: p},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		})
		require.NoError(t, err)
		go ns.Start()
		srvs = append(srvs, ns)
	}
	for _, ns := range srvs {
		require.True(t, ns.ReadyForConnections(10*time.Second))
		urls = append(urls, ns.ClientURL())
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	}
	// Wait for a JetStream meta leader.
	require.Eventually(t, func() bool {
		for _, ns := range srvs {
			if ns.JetStreamIsLeader() {
				return true
			}
		}
		return false
	}, 20*time.Second, 50*time.Millisecond)
	return strings.Join(urls, ",")
}

// --stream-replicas applies to every stream, KV bucket and object store.
func TestStreamReplicasOnACluster(t *testing.T) {
	t.Parallel()
	url := startNATSCluster(t)
	b := startOrchestrator(t, setupOpts{natsURL: url, replicas: 3})
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("r3")})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())

	nc, err := nats.Connect(url)
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	ctx := ctxT(t)
	names := map[string]bool{}
	for name := range js.StreamNames(ctx).Name() {
		names[name] = true
	}
	for _, want := range []string{
		broker.QueueStream("default"), broker.DLQStream, "KV_" + broker.JobsBucket,
		"OBJ_" + broker.PayloadsBucket, "OBJ_" + broker.ResultsBucket("default"),
	} {
		require.True(t, names[want], "stream %s missing (have %v)", want, names)
	}
	for name := range names {
		s, err := js.Stream(ctx, name)
		require.NoError(t, err)
		require.Equal(t, 3, s.CachedInfo().Config.Replicas, name)
	}
}
