package config

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// validate checks that the security flags that go together are given together.
func (s *Security) validate(natsURL string) error {
	pair := func(a, an, b, bn string) error {
		if (a == "") != (b == "") {
			return fmt.Errorf("%s and %s must be given together", an, bn)
		}
		return nil
	}
	if err := pair(s.TLSCert, "--tls-cert", s.TLSKey, "--tls-key"); err != nil {
		return err
	}
	if s.TLSClientCA != "" && s.TLSCert == "" {
		return errors.New("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
	}
	if err := pair(s.ComputeCert, "--compute-cert", s.ComputeKey, "--compute-key"); err != nil {
		return err
	}
	if err := pair(s.NATSCert, "--nats-cert", s.NATSKey, "--nats-key"); err != nil {
		return err
	}
	if err := pair(s.NATSUser, "--nats-user", s.NATSPasswordFile, "--nats-password-file"); err != nil {
		return err
	}
	var ways []string
	for _, w := range []struct{ v, name string }{{s.NATSCreds, "--nats-creds"}, {s.NATSNKey, "--nats-nkey"}, {s.NATSUser, "--nats-user"}} {
		if w.v != "" {
			ways = append(ways, w.name)
		}
	}
	if len(ways) > 1 {
		return fmt.Errorf("%s: give one way to authenticate to NATS", strings.Join(ways, ", "))
	}
	if natsURL == "" && (len(ways) > 0 || s.NATSCA != "" || s.NATSCert != "") {
		return errors.New("--nats-creds, --nats-nkey, --nats-user and --nats-ca/--nats-cert apply to an external server (--nats-url); the embedded server needs none")
	}
	if s.EncryptionKeyFile != "" && s.EncryptionKeys != "" {
		return errors.New("--encryption-key-file and TANDEM_ENCRYPTION_KEYS are both set: give the keys one way")
	}
	return nil
}

// TLS reports whether the gRPC port and the dashboard serve TLS.
func (s *Security) TLS() bool { return s.TLSCert != "" }

// Loopback reports whether a listen address only accepts local connections:
// a host in 127.0.0.0/8, ::1 or "localhost". An empty host (":50051"),
// 0.0.0.0 and :: listen on every interface and are not loopback; neither is
// any other name.
func Loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckExposure applies the insecure-refusal rule: a non-loopback --listen
// or --dashboard-listen must have TLS and authentication (--auth, or mutual
// TLS with --tls-client-ca), and the embedded server's --nats-listen (it has
// neither) must be loopback. Otherwise it is an error naming what is
// missing, unless --insecure: then each exposure is returned as a warning.
func CheckExposure(c *Config) (warnings []string, err error) {
	var problems []string
	check := func(flag, addr string) {
		if addr == "" || Loopback(addr) {
			return
		}
		var missing []string
		if !c.TLS() {
			missing = append(missing, "TLS (--tls-cert and --tls-key)")
		}
		if !c.Auth && c.TLSClientCA == "" {
			missing = append(missing, "authentication (--auth, or mutual TLS with --tls-client-ca)")
		}
		if len(missing) > 0 {
			problems = append(problems, fmt.Sprintf("%s %s is not a loopback address and has no %s", flag, addr, strings.Join(missing, " and no ")))
		}
	}
	check("--listen", c.Listen)
	check("--dashboard-listen", c.DashboardListen)
	if c.NATSURL == "" && c.NATSListen != "" && !Loopback(c.NATSListen) {
		problems = append(problems, fmt.Sprintf("--nats-listen %s is not a loopback address and the embedded nats-server has no TLS and no authentication (run nats-server with deploy/nats/tandem.conf and --nats-url instead)", c.NATSListen))
	}
	if len(problems) == 0 {
		return nil, nil
	}
	if c.Insecure {
		return problems, nil
	}
	return nil, fmt.Errorf("refusing to start: %s; listen on a loopback address (127.0.0.1, ::1, localhost), add what is missing, or pass --insecure to run exposed anyway", strings.Join(problems, "; "))
}
