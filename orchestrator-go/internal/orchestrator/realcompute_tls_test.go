package orchestrator_test

import (
	"context"
	"crypto/sha256"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/credentials"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
)

// computeBinary is the Rust compute service: TANDEM_COMPUTE_BIN, else the
// release build of this checkout; "" when neither exists.
func computeBinary() string {
	for _, p := range []string{os.Getenv("TANDEM_COMPUTE_BIN"), filepath.Join("..", "..", "..", "compute-rs", "target", "release", "tandem-compute")} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// The real compute service over mutual TLS with a bearer token; the client
// reaches the orchestrator over mutual TLS too.
func TestRealComputeOverMutualTLSWithToken(t *testing.T) {
	t.Parallel()
	bin := computeBinary()
	if bin == "" {
		t.Skip("tandem-compute not built (cargo build --release in compute-rs, or TANDEM_COMPUTE_BIN)")
	}
	help, _ := exec.Command(bin, "--help").CombinedOutput()
	if !strings.Contains(string(help), "--tls-client-ca") || !strings.Contains(string(help), "--token-file") {
		t.Skip("this tandem-compute build has no TLS flags")
	}
	p := newPKI(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("real-compute-token\n"), 0o600))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close())
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--listen", addr, "--metrics-listen", "", "--workers", "1",
		"--tls-cert", p.path("server.pem"), "--tls-key", p.path("server-key.pem"), "--tls-client-ca", p.path("ca.pem"), "--token-file", tokenFile)
	cmd.Stderr, cmd.Stdout = os.Stderr, nil
	if os.Getenv("TANDEM_TEST_LOG") == "" {
		cmd.Stderr = nil
	}
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })

	b := setup(t, func(o *setupOpts) {
		o.compute = &computetest.Server{Addr: addr}
		o.security = p.serverSecurity(true)
		o.security.ComputeCA, o.security.ComputeCert, o.security.ComputeKey = p.path("ca.pem"), p.path("client.pem"), p.path("client-key.pem")
		o.security.ComputeTokenFile = tokenFile
		o.clientCreds = credentials.NewTLS(p.clientTLS(t, true))
	})
	require.Eventually(t, func() bool { return b.orc.Compute.Ready() }, 20*time.Second, 50*time.Millisecond)
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("real")})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "%v", final.GetLastError())
	want := sha256.Sum256([]byte("real"))
	require.Equal(t, want[:], final.GetResult())
}
