package orchestrator_test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
)

// The orchestrator connects to a nats-server that requires client
// certificates (--nats-ca, --nats-cert, --nats-key); a replaced client
// certificate is used from the next connection on.
func TestNATSOverMutualTLSReReadsTheClientCertificate(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	srvCert, err := tls.LoadX509KeyPair(p.path("server.pem"), p.path("server-key.pem"))
	require.NoError(t, err)
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true, MaxPayload: 8 << 20,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: p.pool(t), ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
		TLSVerify: true, TLSTimeout: 5,
	})
	require.NoError(t, err)
	go ns.Start()
	require.True(t, ns.ReadyForConnections(10*time.Second))
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })

	b := setup(t, func(o *setupOpts) {
		o.natsURL = ns.ClientURL()
		o.security = config.Security{NATSCA: p.path("ca.pem"), NATSCert: p.path("client.pem"), NATSKey: p.path("client-key.pem")}
	})
	run := func(payload string) {
		job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte(payload)})
		final, _ := waitTerminal(t, b.client, job.GetId())
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "%v", final.GetLastError())
		require.Equal(t, payload, string(final.GetResult()))
	}
	run("over tls")

	// The orchestrator's connection and the certificate it presented.
	orchConn := func() (uint64, string) {
		cz, err := ns.Connz(&server.ConnzOptions{Username: true})
		require.NoError(t, err)
		for _, c := range cz.Conns {
			if strings.HasPrefix(c.Name, "tandem-orchestrator") && len(c.TLSPeerCerts) > 0 {
				return c.Cid, c.TLSPeerCerts[0].CertSha256
			}
		}
		return 0, ""
	}
	cid, first := orchConn()
	require.NotEmpty(t, first)

	cc, ck, err := p.ca.Issue("rotated-client", nil, false)
	require.NoError(t, err)
	require.NoError(t, tlsconf.WriteFile(p.path("client-key.pem"), ck, 0o600))
	require.NoError(t, tlsconf.WriteFile(p.path("client.pem"), cc, 0o644))
	pair, err := tls.X509KeyPair(cc, ck)
	require.NoError(t, err)
	sum := sha256.Sum256(pair.Certificate[0])
	want := hex.EncodeToString(sum[:])
	require.NoError(t, ns.DisconnectClientByID(cid))
	require.Eventually(t, func() bool { _, got := orchConn(); return got == want }, 20*time.Second, 50*time.Millisecond,
		"the reconnect presents the new client certificate")
	run("after rotation")
}
