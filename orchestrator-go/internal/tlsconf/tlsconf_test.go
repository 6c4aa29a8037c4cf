package tlsconf_test

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) { l.mu.Lock(); defer l.mu.Unlock(); return l.b.Write(p) }
func (l *logBuf) String() string              { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func leafOf(t *testing.T, s *tlsconf.Server) []byte {
	cfg, err := s.Config().GetConfigForClient(&tls.ClientHelloInfo{})
	require.NoError(t, err)
	return cfg.Certificates[0].Certificate[0]
}

func TestServerReloadsAndKeepsTheOldOnABadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, tlsconf.WriteDevCerts(dir, []string{"localhost", "127.0.0.1"}))
	for name, mode := range map[string]os.FileMode{tlsconf.DevServerKey: 0o600, tlsconf.DevClientKey: 0o600, tlsconf.DevCA: 0o644} {
		st, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err)
		require.Equal(t, mode, st.Mode().Perm(), name)
	}
	var logs logBuf
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	cert, key, ca := filepath.Join(dir, tlsconf.DevServerCert), filepath.Join(dir, tlsconf.DevServerKey), filepath.Join(dir, tlsconf.DevCA)
	s, err := tlsconf.NewServer(cert, key, ca, log)
	require.NoError(t, err)
	defer s.Close()
	require.True(t, s.MutualTLS())
	first := leafOf(t, s)

	// New files (another dev CA): picked up.
	other := t.TempDir()
	require.NoError(t, tlsconf.WriteDevCerts(other, []string{"localhost"}))
	for _, f := range []string{tlsconf.DevServerCert, tlsconf.DevServerKey, tlsconf.DevCA} {
		data, err := os.ReadFile(filepath.Join(other, f))
		require.NoError(t, err)
		require.NoError(t, tlsconf.WriteFile(filepath.Join(dir, f), data, 0o600))
	}
	s.Watcher().Check()
	second := leafOf(t, s)
	require.NotEqual(t, first, second)
	require.Contains(t, logs.String(), "reloaded")

	// A broken certificate: the one before stays, an error is logged once
	// the files stay as they are.
	require.NoError(t, tlsconf.WriteFile(cert, []byte("garbage"), 0o644))
	s.Watcher().Check()
	require.Equal(t, second, leafOf(t, s))
	s.Watcher().Check()
	require.Equal(t, second, leafOf(t, s))
	require.Contains(t, logs.String(), `"level":"ERROR","msg":"reloading failed; the files loaded before stay in use"`)

	// At start a bad file is an error.
	_, err = tlsconf.NewServer(cert, key, "", log)
	require.Error(t, err)
	_, err = tlsconf.NewServer(cert, "", "", log)
	require.ErrorContains(t, err, "--tls-key")
}

func TestClientConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, tlsconf.WriteDevCerts(dir, tlsconf.DefaultDevHosts))
	c, err := tlsconf.NewClient(filepath.Join(dir, tlsconf.DevCA), filepath.Join(dir, tlsconf.DevClientCert), filepath.Join(dir, tlsconf.DevClientKey), "--x", nil)
	require.NoError(t, err)
	defer c.Close()
	cfg := c.Config()
	require.NotNil(t, cfg.RootCAs)
	require.Len(t, cfg.Certificates, 1)
	_, err = tlsconf.NewClient("", filepath.Join(dir, tlsconf.DevClientCert), "", "--compute-cert/--compute-key", nil)
	require.ErrorContains(t, err, "--compute-cert/--compute-key")
	require.Error(t, tlsconf.WriteDevCerts(t.TempDir(), []string{"a b"}))
}
