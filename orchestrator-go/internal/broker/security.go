package broker

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

// InboxPrefix is the prefix of the orchestrator's reply subjects (request
// replies, JetStream API answers, KV watches). It is not the default
// "_INBOX" so that a NATS user allowed to subscribe to _INBOX.> (an op
// worker, for its own requests) cannot read the orchestrator's answers:
// job records among them. deploy/nats/tandem.conf relies on it.
const InboxPrefix = "_INBOX_tandem_orch"

// SecurityOptions are the nats.go options for the NATS credential and TLS
// flags. nats.go reads every file again at each connect and reconnect (the
// creds file, the nkey seed at each signature, the CA bundle and the client
// certificate at each TLS handshake; the password file here), so replacing a
// file takes effect on the next connection, without a restart.
func SecurityOptions(s config.Security, log *slog.Logger) ([]nats.Option, error) {
	if log == nil {
		log = slog.Default()
	}
	var opts []nats.Option
	switch {
	case s.NATSCreds != "":
		if _, err := os.Stat(s.NATSCreds); err != nil {
			return nil, fmt.Errorf("--nats-creds: %w", err)
		}
		opts = append(opts, nats.UserCredentials(s.NATSCreds))
	case s.NATSNKey != "":
		o, err := nats.NkeyOptionFromSeed(s.NATSNKey)
		if err != nil {
			return nil, fmt.Errorf("--nats-nkey %s: %w", s.NATSNKey, err)
		}
		opts = append(opts, o)
	case s.NATSUser != "":
		pw, err := readPassword(s.NATSPasswordFile)
		if err != nil {
			return nil, err
		}
		var mu sync.Mutex
		last := pw
		user, file := s.NATSUser, s.NATSPasswordFile
		opts = append(opts, nats.UserInfoHandler(func() (string, string) {
			mu.Lock()
			defer mu.Unlock()
			if pw, err := readPassword(file); err == nil {
				last = pw
			} else {
				log.Error("reading the NATS password file failed; using the password read before", "error", err)
			}
			return user, last
		}))
	}
	if s.NATSCA != "" {
		opts = append(opts, nats.RootCAs(s.NATSCA))
	}
	if s.NATSCert != "" {
		opts = append(opts, nats.ClientCert(s.NATSCert, s.NATSKey))
	}
	return opts, nil
}

func readPassword(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--nats-password-file: %w", err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("--nats-password-file %s: empty", file)
	}
	return pw, nil
}
