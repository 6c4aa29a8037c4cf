package orchestrator_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/orchestrator"
	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
)

// testPKI is a CA with a server and a client certificate in files.
type testPKI struct {
	dir string
	ca  *tlsconf.CA
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	ca, err := tlsconf.NewCA("test CA")
	require.NoError(t, err)
	p := &testPKI{dir: t.TempDir(), ca: ca}
	require.NoError(t, os.WriteFile(p.path("ca.pem"), ca.CertPEM, 0o644))
	p.issueServer(t)
	cc, ck, err := ca.Issue("test-client", nil, false)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(p.path("client.pem"), cc, 0o644))
	require.NoError(t, os.WriteFile(p.path("client-key.pem"), ck, 0o600))
	return p
}

func (p *testPKI) path(name string) string { return filepath.Join(p.dir, name) }

// issueServer writes a new server certificate and key (each file replaced
// whole) and returns the certificate's serial number.
func (p *testPKI) issueServer(t testing.TB) string {
	t.Helper()
	sc, sk, err := p.ca.Issue("test-server", []string{"127.0.0.1", "localhost"}, true)
	require.NoError(t, err)
	require.NoError(t, tlsconf.WriteFile(p.path("server-key.pem"), sk, 0o600))
	require.NoError(t, tlsconf.WriteFile(p.path("server.pem"), sc, 0o644))
	pair, err := tls.X509KeyPair(sc, sk)
	require.NoError(t, err)
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	require.NoError(t, err)
	return leaf.SerialNumber.String()
}

func (p *testPKI) serverSecurity(mutual bool) config.Security {
	s := config.Security{TLSCert: p.path("server.pem"), TLSKey: p.path("server-key.pem")}
	if mutual {
		s.TLSClientCA = p.path("ca.pem")
	}
	return s
}

func (p *testPKI) pool(t testing.TB) *x509.CertPool {
	pool, err := tlsconf.LoadPool(p.path("ca.pem"))
	require.NoError(t, err)
	return pool
}

// clientTLS trusts the CA and, when withCert, presents the client certificate.
func (p *testPKI) clientTLS(t testing.TB, withCert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: p.pool(t), MinVersion: tls.VersionTLS12}
	if withCert {
		c, err := tls.LoadX509KeyPair(p.path("client.pem"), p.path("client-key.pem"))
		require.NoError(t, err)
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

// servedSerial is the serial of the certificate a new TLS connection gets.
func servedSerial(t testing.TB, addr string, cfg *tls.Config) string {
	c, err := tls.Dial("tcp", addr, cfg)
	require.NoError(t, err)
	defer func() { _ = c.Close() }()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func TestTLSServesJobsAndRefusesPlaintextCleanly(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	b := setup(t, func(o *setupOpts) {
		o.security = p.serverSecurity(false)
		o.clientCreds = credentials.NewTLS(p.clientTLS(t, false))
		o.dashboard = true
	})
	job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("over tls")})
	final, _ := waitTerminal(t, b.client, job.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState())
	require.Equal(t, "over tls", string(final.GetResult()))

	// A plaintext client fails its call (no hang, no crash) ...
	plain, err := grpc.NewClient(b.orc.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer func() { _ = plain.Close() }()
	ctx, cancel := context.WithTimeout(ctxT(t), 5*time.Second)
	defer cancel()
	_, err = tandemv1.NewJobServiceClient(plain).GetJob(ctx, &tandemv1.GetJobRequest{JobId: job.GetId()})
	require.Equal(t, codes.Unavailable, status.Code(err), "plaintext against TLS: %v", err)
	// ... and the server goes on serving TLS clients.
	got, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: job.GetId(), IncludeResult: true})
	require.NoError(t, err)
	require.Equal(t, "over tls", string(got.GetJob().GetResult()))
	hc, err := healthpb.NewHealthClient(b.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{Service: orchestrator.ServiceName})
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, hc.GetStatus())

	// The dashboard serves HTTPS with the same certificate (and reads
	// JobService in memory).
	hcl := &http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS(t, false)}, Timeout: 10 * time.Second}
	resp, err := hcl.Get("https://" + b.orc.DashboardAddr() + "/jobs/" + job.GetId())
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	// Plain HTTP gets Go's "client sent an HTTP request to an HTTPS server".
	if resp, err := http.Get("http://" + b.orc.DashboardAddr() + "/"); err == nil {
		_ = resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	}
}

func TestMutualTLSRejectsClientsWithoutACertOfItsCA(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	b := setup(t, func(o *setupOpts) {
		o.security = p.serverSecurity(true)
		o.clientCreds = credentials.NewTLS(p.clientTLS(t, true))
	})
	_, err := b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
	require.NoError(t, err, "a client certificate of the CA is accepted")

	call := func(cfg *tls.Config) error {
		conn, err := grpc.NewClient(b.orc.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		require.NoError(t, err)
		defer func() { _ = conn.Close() }()
		ctx, cancel := context.WithTimeout(ctxT(t), 5*time.Second)
		defer cancel()
		_, err = tandemv1.NewJobServiceClient(conn).ListQueues(ctx, &tandemv1.ListQueuesRequest{})
		return err
	}
	err = call(p.clientTLS(t, false))
	require.Equal(t, codes.Unavailable, status.Code(err), "no client certificate: %v", err)

	other := newPKI(t) // another CA: its client certificate is refused
	cfg := other.clientTLS(t, true)
	cfg.RootCAs = p.pool(t)
	err = call(cfg)
	require.Equal(t, codes.Unavailable, status.Code(err), "client certificate of another CA: %v", err)

	_, err = b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
	require.NoError(t, err, "still serving")
}

func TestCertificateRotationUnderLoad(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	b := setup(t, func(o *setupOpts) {
		o.security = p.serverSecurity(true)
		o.clientCreds = credentials.NewTLS(p.clientTLS(t, true))
	})
	known := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("k")})
	clientCfg := p.clientTLS(t, true)

	var (
		stop     atomic.Bool
		calls    atomic.Int64
		fresh    atomic.Int64
		failures = make(chan error, 100)
		wg       sync.WaitGroup
	)
	fail := func(err error) {
		select {
		case failures <- err:
		default:
		}
	}
	// Two callers on the existing connection, two on a new one per call.
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				cli, conn := b.client, (*grpc.ClientConn)(nil)
				if i >= 2 {
					var err error
					conn, err = grpc.NewClient(b.orc.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(clientCfg)))
					if err != nil {
						fail(err)
						return
					}
					cli = tandemv1.NewJobServiceClient(conn)
					fresh.Add(1)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := cli.GetJob(ctx, &tandemv1.GetJobRequest{JobId: known.GetId()})
				if err == nil {
					_, err = cli.SubmitJob(ctx, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("r")})
				}
				cancel()
				if conn != nil {
					_ = conn.Close()
				}
				if err != nil {
					fail(err)
				}
				calls.Add(1)
			}
		}()
	}
	// Rotate three times; each time wait until new connections get the new
	// certificate (the files are polled every second).
	for range 3 {
		want := p.issueServer(t)
		require.Eventually(t, func() bool { return servedSerial(t, b.orc.Addr(), clientCfg) == want }, 20*time.Second, 100*time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	close(failures)
	for err := range failures {
		t.Errorf("a call failed during rotation: %v", err)
	}
	require.Positive(t, fresh.Load())
	t.Logf("%d calls (%d on fresh connections) across 3 rotations", calls.Load(), fresh.Load())

	// A bad replacement is refused and the certificate before stays in use.
	before := servedSerial(t, b.orc.Addr(), clientCfg)
	require.NoError(t, tlsconf.WriteFile(p.path("server.pem"), []byte("not a certificate"), 0o644))
	b.orc.ServerTLS.Watcher().Check()
	b.orc.ServerTLS.Watcher().Check()
	require.Equal(t, before, servedSerial(t, b.orc.Addr(), clientCfg))
	_, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: known.GetId()})
	require.NoError(t, err)
}

func TestComputeOverMutualTLSWithARotatedToken(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srvCert, err := tls.LoadX509KeyPair(p.path("server.pem"), p.path("server-key.pem"))
	require.NoError(t, err)
	stub := computetest.StartSecure(t, &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: p.pool(t), ClientAuth: tls.RequireAndVerifyClientCert}, "tok-1")
	tokenFile := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte("tok-1\n"), 0o600))
	b := setup(t, func(o *setupOpts) {
		o.compute = stub
		o.security = config.Security{ComputeCA: p.path("ca.pem"), ComputeCert: p.path("client.pem"), ComputeKey: p.path("client-key.pem"), ComputeTokenFile: tokenFile}
	})
	run := func(payload string) *tandemv1.Job {
		job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte(payload)})
		final, _ := waitTerminal(t, b.client, job.GetId())
		return final
	}
	final := run("one")
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "%v", final.GetLastError())
	require.Equal(t, "Bearer tok-1", stub.LastAuth())

	require.NoError(t, tlsconf.WriteFile(tokenFile, []byte("tok-2\n"), 0o600))
	// The breaker probes (every 2 s) carry the token too; compute still
	// wants the old one and refuses: an outage (breaker open, NOT_SERVING),
	// not a failure of the jobs submitted meanwhile.
	require.Eventually(t, func() bool { return stub.LastAuth() == "Bearer tok-2" }, 20*time.Second, 50*time.Millisecond)
	require.Eventually(t, func() bool { return !b.orc.Compute.Ready() }, 20*time.Second, 50*time.Millisecond)
	waiting := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("two")})
	stub.SetToken("tok-2")
	final, _ = waitTerminal(t, b.client, waiting.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "%v", final.GetLastError())
	require.Equal(t, "two", string(final.GetResult()))
	require.EqualValues(t, 1, final.GetAttempt(), "the refused calls did not count")
}

func TestRefusesAnExposedListenerWithoutTLSAndAuth(t *testing.T) {
	t.Parallel()
	qs, err := config.NormalizeQueues(nil)
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		cfg     func(c *config.Config)
		missing []string
	}{
		{"all interfaces", func(c *config.Config) { c.Listen = ":0" }, []string{"--listen :0", "TLS (--tls-cert and --tls-key)", "authentication"}},
		{"dashboard", func(c *config.Config) { c.DashboardListen = "0.0.0.0:0" }, []string{"--dashboard-listen 0.0.0.0:0", "TLS"}},
		{"tls without auth", func(c *config.Config) {
			c.Listen = "0.0.0.0:0"
			c.TLSCert, c.TLSKey = "c.pem", "k.pem"
		}, []string{"--listen 0.0.0.0:0", "no authentication (--auth"}},
		{"embedded nats", func(c *config.Config) { c.NATSListen = "0.0.0.0:0" }, []string{"--nats-listen 0.0.0.0:0", "embedded nats-server"}},
	} {
		cfg := &config.Config{Listen: "127.0.0.1:0", Compute: []string{"127.0.0.1:1"}, DataDir: t.TempDir(), Durability: config.DurabilityInterval,
			MaxMessageBytes: 4 << 20, StreamReplicas: 1, Queues: qs}
		tc.cfg(cfg)
		_, err := orchestrator.Start(context.Background(), orchestrator.Options{Config: cfg, Logger: testLogger()})
		require.Error(t, err, tc.name)
		for _, m := range tc.missing {
			require.ErrorContains(t, err, m, tc.name)
		}
		require.ErrorContains(t, err, "--insecure", tc.name)
	}

	// --insecure starts it anyway, with a warning.
	var logs lockedBuffer
	b := setup(t, func(o *setupOpts) {
		o.listen = ":0"
		o.security.Insecure = true
		o.logs = &logs
	})
	_, err = b.client.ListQueues(ctxT(t), &tandemv1.ListQueuesRequest{})
	require.NoError(t, err)
	require.Contains(t, logs.String(), `"level":"WARN","msg":"INSECURE`)
}
