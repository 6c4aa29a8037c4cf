package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
)

// LoadPool reads a PEM bundle of CA certificates.
func LoadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate in the file", file)
	}
	return pool, nil
}

// LoadPair reads a certificate (chain) and its private key.
func LoadPair(certFile, keyFile string) (*tls.Certificate, error) {
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%s, %s: %w", certFile, keyFile, err)
	}
	return &c, nil
}

// Server is a server's TLS configuration from files: a certificate and key,
// and, for mutual TLS, a bundle of CAs a client certificate must chain to.
type Server struct {
	cur atomic.Pointer[tls.Config]
	w   *Watcher
}

// NewServer loads the files and watches them. clientCAFile empty: clients
// are not asked for a certificate; set: every client must present one
// signed by a CA of the bundle (RequireAndVerifyClientCert).
func NewServer(certFile, keyFile, clientCAFile string, log *slog.Logger) (*Server, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("--tls-cert and --tls-key: %w", ErrNoFiles)
	}
	s := &Server{}
	files := []string{certFile, keyFile}
	what := "--tls-cert/--tls-key"
	if clientCAFile != "" {
		files = append(files, clientCAFile)
		what += "/--tls-client-ca"
	}
	w, err := Watch(what, files, log, func() error {
		cert, err := LoadPair(certFile, keyFile)
		if err != nil {
			return err
		}
		cfg := &tls.Config{
			MinVersion:   tls.VersionTLS12,
			Certificates: []tls.Certificate{*cert},
			NextProtos:   []string{"h2", "http/1.1"},
		}
		if clientCAFile != "" {
			pool, err := LoadPool(clientCAFile)
			if err != nil {
				return err
			}
			cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
		}
		s.cur.Store(cfg)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.w = w
	return s, nil
}

// Config is a tls.Config for a listener (gRPC credentials.NewTLS, or
// tls.NewListener for HTTP) that uses the files current at each handshake.
func (s *Server) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return s.cur.Load(), nil
		},
	}
}

// MutualTLS reports whether clients must present a certificate.
func (s *Server) MutualTLS() bool { return s.cur.Load().ClientAuth == tls.RequireAndVerifyClientCert }

// Watcher is the file watcher (tests call Check to reload at once).
func (s *Server) Watcher() *Watcher { return s.w }

// Close stops watching the files.
func (s *Server) Close() {
	if s != nil {
		s.w.Close()
	}
}

// Client is a client's TLS configuration from files: the CAs the server's
// certificate must chain to (empty: the system's), and for mutual TLS the
// client's own certificate and key.
type Client struct {
	cur atomic.Pointer[tls.Config]
	w   *Watcher
}

// NewClient loads the files and watches them. flags names the flags, for
// messages (e.g. "--compute-ca/--compute-cert/--compute-key").
func NewClient(caFile, certFile, keyFile, flags string, log *slog.Logger) (*Client, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%s: %w", flags, ErrNoFiles)
	}
	var files []string
	for _, f := range []string{caFile, certFile, keyFile} {
		if f != "" {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%s: no file given", flags)
	}
	c := &Client{}
	w, err := Watch(flags, files, log, func() error {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pool, err := LoadPool(caFile)
			if err != nil {
				return err
			}
			cfg.RootCAs = pool
		}
		if certFile != "" {
			cert, err := LoadPair(certFile, keyFile)
			if err != nil {
				return err
			}
			cfg.Certificates = []tls.Certificate{*cert}
		}
		c.cur.Store(cfg)
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.w = w
	return c, nil
}

// Config is a copy of the current configuration.
func (c *Client) Config() *tls.Config { return c.cur.Load().Clone() }

// Watcher is the file watcher.
func (c *Client) Watcher() *Watcher { return c.w }

// Close stops watching the files.
func (c *Client) Close() {
	if c != nil {
		c.w.Close()
	}
}

// Credentials are gRPC transport credentials that take the current files at
// each new connection (a rotated CA or client certificate is used from the
// next connection on; connections already open keep theirs).
func (c *Client) Credentials() credentials.TransportCredentials { return &clientCreds{c: c} }

type clientCreds struct {
	c          *Client
	serverName string
}

func (r *clientCreds) creds() credentials.TransportCredentials {
	cfg := r.c.Config()
	if r.serverName != "" {
		cfg.ServerName = r.serverName
	}
	return credentials.NewTLS(cfg)
}

func (r *clientCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return r.creds().ClientHandshake(ctx, authority, conn)
}

func (r *clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsconf: client credentials used on a server")
}

func (r *clientCreds) Info() credentials.ProtocolInfo { return r.creds().Info() }

func (r *clientCreds) Clone() credentials.TransportCredentials {
	return &clientCreds{c: r.c, serverName: r.serverName}
}

// OverrideServerName is part of the (deprecated) interface.
func (r *clientCreds) OverrideServerName(name string) error { //nolint:staticcheck // interface method
	r.serverName = name
	return nil
}

var _ credentials.TransportCredentials = (*clientCreds)(nil)
