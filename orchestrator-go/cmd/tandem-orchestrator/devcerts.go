package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
)

// devCerts is `tandem-orchestrator dev-certs --out DIR [--hosts a,b]`: a CA,
// a server and a client certificate for development, tests and compose.
// It writes nothing on stdout; the files it wrote are listed on stderr.
func devCerts(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("tandem-orchestrator dev-certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory to write ca.pem, server.pem, server-key.pem, client.pem, client-key.pem into (required)")
	hosts := fs.String("hosts", strings.Join(tlsconf.DefaultDevHosts, ","), "comma-separated DNS names and IP addresses of the server certificate")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: tandem-orchestrator dev-certs --out DIR [--hosts localhost,127.0.0.1,...]\n\nWrites a new development CA and a server and a client certificate (ECDSA P-256, valid one year, keys mode 0600).\nThe CA's key is not kept: run again to issue new ones.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "tandem-orchestrator dev-certs: --out DIR is required (and nothing else)")
		return 2
	}
	var hs []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hs = append(hs, h)
		}
	}
	if err := tlsconf.WriteDevCerts(*out, hs); err != nil {
		fmt.Fprintln(stderr, "tandem-orchestrator dev-certs:", err)
		return 1
	}
	for _, f := range []string{tlsconf.DevCA, tlsconf.DevServerCert, tlsconf.DevServerKey, tlsconf.DevClientCert, tlsconf.DevClientKey} {
		fmt.Fprintln(stderr, "wrote", filepath.Join(*out, f))
	}
	return 0
}
