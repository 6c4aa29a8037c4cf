package config_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := config.Parse(nil, env(nil), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:50051", c.Listen)
	require.Equal(t, []string{"127.0.0.1:50052"}, c.Compute)
	require.Equal(t, "", c.NATSURL)
	require.Equal(t, "127.0.0.1:4222", c.NATSListen)
	require.Equal(t, "./tandem-data", c.DataDir)
	require.Equal(t, config.DurabilityAlways, c.Durability)
	require.Equal(t, "127.0.0.1:9101", c.MetricsListen)
	require.Equal(t, 30*time.Second, c.DrainTimeout)
	require.Equal(t, 1, c.StreamReplicas)
	require.Len(t, c.Queues, 1)
	require.Equal(t, "default", c.Queues[0].Name)
}

func TestEnvAndFlagPrecedence(t *testing.T) {
	t.Parallel()
	e := env(map[string]string{
		"TANDEM_ORCH_LISTEN": "0.0.0.0:1", "TANDEM_ORCH_COMPUTE": "a:1, b:2", "TANDEM_ORCH_DURABILITY": "interval",
		"TANDEM_ORCH_DRAIN_TIMEOUT": "5s", "TANDEM_ORCH_METRICS_LISTEN": "",
	})
	c, err := config.Parse([]string{"--listen", "127.0.0.1:9"}, e, &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9", c.Listen, "flag wins over env")
	require.Equal(t, []string{"a:1", "b:2"}, c.Compute)
	require.Equal(t, config.DurabilityInterval, c.Durability)
	require.Equal(t, 5*time.Second, c.DrainTimeout)

	_, err = config.Parse([]string{"--durability", "never"}, env(nil), &bytes.Buffer{})
	require.ErrorContains(t, err, "--durability")
}

func TestHelpShowsEveryEnvVar(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	_, err := config.Parse([]string{"--help"}, env(nil), &out)
	require.Error(t, err)
	for _, v := range []string{"TANDEM_ORCH_LISTEN", "TANDEM_ORCH_COMPUTE", "TANDEM_ORCH_NATS_URL", "TANDEM_ORCH_NATS_LISTEN", "TANDEM_ORCH_DATA_DIR",
		"TANDEM_ORCH_CONFIG", "TANDEM_ORCH_DURABILITY", "TANDEM_ORCH_METRICS_LISTEN", "TANDEM_ORCH_DRAIN_TIMEOUT", "TANDEM_ORCH_LOG_LEVEL", "TANDEM_ORCH_STREAM_REPLICAS",
		"TANDEM_ORCH_TLS_CERT", "TANDEM_ORCH_TLS_KEY", "TANDEM_ORCH_TLS_CLIENT_CA", "TANDEM_ORCH_AUTH", "TANDEM_ORCH_INSECURE",
		"TANDEM_ORCH_COMPUTE_CA", "TANDEM_ORCH_COMPUTE_CERT", "TANDEM_ORCH_COMPUTE_KEY", "TANDEM_ORCH_COMPUTE_TOKEN_FILE",
		"TANDEM_ORCH_NATS_CREDS", "TANDEM_ORCH_NATS_NKEY", "TANDEM_ORCH_NATS_USER", "TANDEM_ORCH_NATS_PASSWORD_FILE",
		"TANDEM_ORCH_NATS_CA", "TANDEM_ORCH_NATS_CERT", "TANDEM_ORCH_NATS_KEY", "TANDEM_ORCH_ENCRYPTION_KEY_FILE", "TANDEM_ENCRYPTION_KEYS"} {
		require.Contains(t, out.String(), v)
	}
}

func TestExampleQueuesFile(t *testing.T) {
	t.Parallel()
	qs, err := config.LoadQueues(filepath.Join("..", "..", "examples", "queues.toml"))
	require.NoError(t, err)
	require.Len(t, qs, 2)
	require.Equal(t, "default", qs[0].Name)
	require.Equal(t, config.DefaultQueueSettings("default"), qs[0])
	img := qs[1]
	require.Equal(t, "images", img.Name)
	require.Equal(t, 4, img.MaxWorkers)
	require.Equal(t, 2*time.Minute, img.JobTimeout)
	require.Equal(t, 50.0, img.RateLimit)
	require.Equal(t, 72*time.Hour, img.ResultTTL)
}

func TestQueueFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "q.toml")
		require.NoError(t, os.WriteFile(p, []byte(s), 0o600))
		return p
	}
	_, err := config.LoadQueues(write("[[queue]]\nname = \"a b\"\n"))
	require.ErrorContains(t, err, "queue name")
	_, err = config.LoadQueues(write("[[queue]]\nname = \"a\"\nmax_wrokers = 3\n"))
	require.ErrorContains(t, err, "unknown keys")
	_, err = config.LoadQueues(write("[[queue]]\nname = \"a\"\nmin_workers = 5\nmax_workers = 2\n"))
	require.ErrorContains(t, err, "min_workers")
	qs, err := config.LoadQueues(write("[[queue]]\nname = \"x\"\n"))
	require.NoError(t, err)
	require.Equal(t, []string{"default", "x"}, []string{qs[0].Name, qs[1].Name})
}

func TestStreamReplicas(t *testing.T) {
	t.Parallel()
	c, err := config.Parse(nil, env(map[string]string{"TANDEM_ORCH_STREAM_REPLICAS": "3", "TANDEM_ORCH_NATS_URL": "nats://a:4222"}), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 3, c.StreamReplicas)
	c, err = config.Parse([]string{"--stream-replicas", "5", "--nats-url", "nats://a:4222"}, env(map[string]string{"TANDEM_ORCH_STREAM_REPLICAS": "3"}), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, 5, c.StreamReplicas, "flag wins over env")
	for _, bad := range []string{"0", "6", "-1"} {
		_, err = config.Parse([]string{"--stream-replicas", bad, "--nats-url", "nats://a:4222"}, env(nil), &bytes.Buffer{})
		require.ErrorContains(t, err, "--stream-replicas")
	}
	_, err = config.Parse([]string{"--stream-replicas", "3"}, env(nil), &bytes.Buffer{})
	require.ErrorContains(t, err, "embedded", "the embedded server is one node")
}

func TestAccessFlags(t *testing.T) {
	t.Parallel()
	c, err := config.Parse(nil, env(nil), &bytes.Buffer{})
	require.NoError(t, err)
	require.False(t, c.Auth, "auth is off by default")
	require.Equal(t, 720*time.Hour, c.AuditMaxAge)
	require.Zero(t, c.RateLimit)

	c, err = config.Parse([]string{"--rate-limit", "2.5"}, env(map[string]string{"TANDEM_ORCH_AUTH": "true", "TANDEM_ORCH_AUDIT_MAX_AGE": "24h"}), &bytes.Buffer{})
	require.NoError(t, err)
	require.True(t, c.Auth)
	require.Equal(t, 24*time.Hour, c.AuditMaxAge)
	require.Equal(t, 2.5, c.RateLimit)
	require.Equal(t, 3, c.RateBurst, "burst defaults to ceil(rate)")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--rate-limit", "-1"}, "--rate-limit"},
		{[]string{"--rate-burst", "-1"}, "--rate-burst"},
		{[]string{"--audit-max-age", "1s"}, "--audit-max-age"},
	} {
		_, err := config.Parse(tc.args, env(nil), &bytes.Buffer{})
		require.ErrorContains(t, err, tc.want)
	}
	var out bytes.Buffer
	_, err = config.Parse([]string{"--help"}, env(nil), &out)
	require.Error(t, err)
	for _, v := range []string{"TANDEM_ORCH_AUTH", "TANDEM_ORCH_AUDIT_MAX_AGE", "TANDEM_ORCH_RATE_LIMIT", "TANDEM_ORCH_RATE_BURST"} {
		require.Contains(t, out.String(), v)
	}
	_, rest, err := config.ParseCommand("x", []string{"--nats-url", "nats://h:1", "ID"}, env(nil), &bytes.Buffer{}, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"ID"}, rest)
}

func TestLoopback(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]bool{
		"127.0.0.1:1": true, "127.1.2.3:1": true, "[::1]:1": true, "localhost:1": true, "LOCALHOST:1": true,
		":50051": false, "0.0.0.0:1": false, "[::]:1": false, "10.0.0.1:1": false, "example.com:1": false, "localhost.evil:1": false, "nonsense": false,
	} {
		require.Equal(t, want, config.Loopback(addr), addr)
	}
}

func TestSecurityFlags(t *testing.T) {
	t.Parallel()
	c, err := config.Parse([]string{"--tls-cert", "c", "--tls-key", "k", "--auth", "--nats-url", "nats://x:4222", "--nats-user", "orchestrator", "--nats-password-file", "pw"},
		env(map[string]string{"TANDEM_ORCH_TLS_CLIENT_CA": "ca", "TANDEM_ORCH_INSECURE": "true", "TANDEM_ENCRYPTION_KEYS": "k1:AAAA"}), &bytes.Buffer{})
	require.NoError(t, err)
	require.True(t, c.TLS())
	require.True(t, c.Auth)
	require.True(t, c.Insecure)
	require.Equal(t, "ca", c.TLSClientCA)
	require.Equal(t, "orchestrator", c.NATSUser)
	require.Equal(t, config.Secret("k1:AAAA"), c.EncryptionKeys)
	require.Equal(t, "[redacted]", c.EncryptionKeys.String())
	require.NotContains(t, fmt.Sprintf("%v %+v %#v", c.EncryptionKeys, c.Security, c.Security), "AAAA")

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-cert", "c"}, "--tls-cert and --tls-key"},
		{[]string{"--tls-client-ca", "ca"}, "--tls-client-ca needs --tls-cert"},
		{[]string{"--compute-key", "k"}, "--compute-cert and --compute-key"},
		{[]string{"--nats-url", "nats://x", "--nats-user", "u"}, "--nats-user and --nats-password-file"},
		{[]string{"--nats-url", "nats://x", "--nats-creds", "a", "--nats-nkey", "b"}, "one way to authenticate"},
		{[]string{"--nats-creds", "a"}, "external server"},
		{[]string{"--encryption-key-file", "f"}, "both set"},
	} {
		_, err := config.Parse(tc.args, env(map[string]string{"TANDEM_ENCRYPTION_KEYS": "x"}), &bytes.Buffer{})
		if tc.want != "both set" {
			_, err = config.Parse(tc.args, env(nil), &bytes.Buffer{})
		}
		require.ErrorContains(t, err, tc.want, "%v", tc.args)
	}
}

func TestCheckExposure(t *testing.T) {
	t.Parallel()
	base := func() *config.Config {
		c, err := config.Parse(nil, env(nil), &bytes.Buffer{})
		require.NoError(t, err)
		return c
	}
	c := base()
	w, err := config.CheckExposure(c)
	require.NoError(t, err, "the defaults are loopback")
	require.Empty(t, w)

	c = base()
	c.Listen = "0.0.0.0:50051"
	_, err = config.CheckExposure(c)
	require.ErrorContains(t, err, "--listen 0.0.0.0:50051 is not a loopback address and has no TLS (--tls-cert and --tls-key) and no authentication")
	c.TLSCert, c.TLSKey = "c", "k"
	_, err = config.CheckExposure(c)
	require.ErrorContains(t, err, "no authentication")
	require.NotContains(t, err.Error(), "no TLS")
	c.Auth = true
	_, err = config.CheckExposure(c)
	require.NoError(t, err)
	c.Auth, c.TLSClientCA = false, "ca"
	_, err = config.CheckExposure(c)
	require.NoError(t, err, "mutual TLS authenticates")

	c = base()
	c.DashboardListen, c.NATSListen = ":8080", ":4222"
	_, err = config.CheckExposure(c)
	require.ErrorContains(t, err, "--dashboard-listen :8080")
	require.ErrorContains(t, err, "--nats-listen :4222")
	c.Insecure = true
	w, err = config.CheckExposure(c)
	require.NoError(t, err)
	require.Len(t, w, 2)
	c.Insecure, c.NATSURL = false, "nats://n:4222"
	_, err = config.CheckExposure(c)
	require.NotContains(t, err.Error(), "--nats-listen", "an external server's listener is not ours")
}
