package compute

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"

	"google.golang.org/grpc/credentials"

	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
)

// TokenFile is the bearer token the orchestrator sends compute
// ("authorization: Bearer <token>" on every call, health checks included),
// read from a file and read again when the file changes.
type TokenFile struct {
	tok    atomic.Pointer[string]
	w      *tlsconf.Watcher
	secure bool
}

var _ credentials.PerRPCCredentials = (*TokenFile)(nil)

// NewTokenFile reads path and watches it. secure: the token is sent only
// over TLS (gRPC refuses the call otherwise).
func NewTokenFile(path string, secure bool, log *slog.Logger) (*TokenFile, error) {
	t := &TokenFile{secure: secure}
	w, err := tlsconf.Watch("--compute-token-file", []string{path}, log, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("--compute-token-file: %w", err)
		}
		tok, err := firstToken(b)
		if err != nil {
			return fmt.Errorf("--compute-token-file %s: %w", path, err)
		}
		t.tok.Store(&tok)
		return nil
	})
	if err != nil {
		return nil, err
	}
	t.w = w
	return t, nil
}

// firstToken is the token a token file gives: the file has compute's
// --token-file format (one token a line, blank lines and lines starting with
// # skipped), so one file can serve both sides; the first token is sent.
func firstToken(b []byte) (string, error) {
	for _, line := range strings.Split(string(b), "\n") {
		tok := strings.TrimSpace(line)
		if tok == "" || strings.HasPrefix(tok, "#") {
			continue
		}
		for _, c := range tok {
			if c <= ' ' || c > '~' {
				return "", fmt.Errorf("a token must be printable ASCII without spaces")
			}
		}
		return tok, nil
	}
	return "", fmt.Errorf("no token in it (blank and # lines are skipped)")
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (t *TokenFile) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + *t.tok.Load()}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (t *TokenFile) RequireTransportSecurity() bool { return t.secure }

// Watcher is the file watcher.
func (t *TokenFile) Watcher() *tlsconf.Watcher { return t.w }

// Close stops watching the file.
func (t *TokenFile) Close() {
	if t != nil {
		t.w.Close()
	}
}
