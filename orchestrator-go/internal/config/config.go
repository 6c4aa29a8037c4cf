// Package config is the orchestrator's one configuration loader: command-line
// flags, each also settable by a TANDEM_ORCH_* environment variable (a flag given
// on the command line wins), plus an optional TOML file declaring queues.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Durability selects how the embedded nats-server persists writes.
const (
	DurabilityAlways   = "always"   // fsync every write before acknowledging it
	DurabilityInterval = "interval" // nats-server default: fsync every 2 minutes
)

// DefaultQueue is the queue that always exists.
const DefaultQueue = "default"

// Config is the orchestrator's whole configuration.
type Config struct {
	Listen        string
	Compute       []string // addresses, or one dns:/// target
	NATSURL       string   // empty: embedded server
	NATSListen    string   // embedded server only; empty: no TCP listener
	DataDir       string
	ConfigFile    string
	Durability    string
	MetricsListen string
	// DashboardListen is the web dashboard's HTTP address (empty: off).
	DashboardListen string
	DrainTimeout    time.Duration
	LogLevel        slog.Level
	MaxMessageBytes int // gRPC max receive message size
	// StreamReplicas is the replica count of every stream, KV bucket and
	// object store the orchestrator creates (1..5; >1 needs a clustered server).
	StreamReplicas int
	// AuditMaxAge is how long the TANDEM_AUDIT stream keeps an entry.
	AuditMaxAge time.Duration
	// RateLimit is JobService calls per second per token (per peer address
	// when auth is off); 0 = no limit. RateBurst is the token-bucket burst.
	RateLimit float64
	RateBurst int

	Queues []Queue

	Security
}

// Security is the transport security, authentication and encryption
// settings (see internal/tlsconf, internal/sealing and CheckExposure).
type Security struct {
	// TLSCert and TLSKey turn TLS on for the gRPC port and the dashboard;
	// TLSClientCA (a PEM bundle) makes it mutual: every client must present
	// a certificate signed by one of its CAs.
	TLSCert, TLSKey, TLSClientCA string
	// Auth requires a bearer token (KV bucket tandem_tokens) on every
	// JobService and ComputeService call (health and reflection stay open).
	Auth bool
	// Insecure allows a non-loopback listener without TLS and authentication
	// (logged as a warning).
	Insecure bool
	// ComputeCA, ComputeCert, ComputeKey: TLS (and mTLS) to compute; TLS is
	// on when ComputeCA or ComputeCert is set. ComputeTokenFile holds the
	// bearer token sent on every compute call (re-read when it changes).
	ComputeCA, ComputeCert, ComputeKey, ComputeTokenFile string
	// NATS credentials (external server, --nats-url): a JWT creds file, an
	// nkey seed file, or a user with a password file; NATSCA, NATSCert,
	// NATSKey for TLS to NATS.
	NATSCreds, NATSNKey, NATSUser, NATSPasswordFile string
	NATSCA, NATSCert, NATSKey                       string
	// EncryptionKeyFile, or EncryptionKeys (the text of
	// TANDEM_ENCRYPTION_KEYS): the keyring that seals payloads and results.
	EncryptionKeyFile string
	EncryptionKeys    Secret
}

// Secret is text that must never be printed or logged.
type Secret string

// String hides the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString hides the secret from %#v.
func (s Secret) GoString() string { return s.String() }

// LogValue hides the secret from log/slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Queue is one queue's settings ([[queue]] in the TOML file). A field left
// out (zero) takes its default from DefaultQueueSettings, given here after
// each field.
type Queue struct {
	// Name is the queue's name: 1 to 64 of A-Z a-z 0-9 _ - (it is part of
	// NATS subjects and stream names). Required.
	Name string `toml:"name"`
	// MinWorkers is how many workers this orchestrator keeps for the queue
	// even when idle. Default 2 (at most MaxWorkers).
	MinWorkers int `toml:"min_workers"`
	// MaxWorkers bounds the pool, which grows while jobs wait and every
	// worker is busy. Default 16.
	MaxWorkers int `toml:"max_workers"`
	// MaxAttempts is how many attempts a job gets before a retryable failure
	// makes it DEAD (a submit may ask for fewer or more, up to 100). Default 5.
	MaxAttempts int `toml:"max_attempts"`
	// JobTimeout is the deadline of one attempt (a submit may override it);
	// the consumer's AckWait follows it. Default 60s.
	JobTimeout time.Duration `toml:"job_timeout"`
	// BackoffBase and BackoffCap shape the retry delay: uniform in
	// [0, min(BackoffCap, BackoffBase·2^(attempt-1))] (full jitter).
	// Defaults 1s and 1m.
	BackoffBase time.Duration `toml:"backoff_base"`
	BackoffCap  time.Duration `toml:"backoff_cap"`
	// RateLimit is how many jobs per second this orchestrator starts from
	// the queue; 0 = unlimited (the default). RateBurst is the token-bucket
	// burst, default max(1, RateLimit).
	RateLimit float64 `toml:"rate_limit"`
	RateBurst int     `toml:"rate_burst"`
	// MaxDepth bounds the jobs waiting or running; past it SubmitJob answers
	// RESOURCE_EXHAUSTED / QUEUE_FULL with a retry hint. Default 100000.
	MaxDepth int64 `toml:"max_depth"`
	// ResultTTL is how long a finished job's record, its large result and
	// its idempotency key are kept. Default 24h (at least 1s).
	ResultTTL time.Duration `toml:"result_ttl"`
}

// DefaultQueueSettings are the settings of the built-in default queue and the
// defaults of every field left out of a queue in the config file.
func DefaultQueueSettings(name string) Queue {
	return Queue{
		Name:        name,
		MinWorkers:  2,
		MaxWorkers:  16,
		MaxAttempts: 5,
		JobTimeout:  60 * time.Second,
		BackoffBase: time.Second,
		BackoffCap:  time.Minute,
		RateLimit:   0,
		RateBurst:   0,
		MaxDepth:    100_000,
		ResultTTL:   24 * time.Hour,
	}
}

func (q *Queue) fillDefaults() {
	d := DefaultQueueSettings(q.Name)
	if q.MaxWorkers <= 0 {
		q.MaxWorkers = d.MaxWorkers
	}
	if q.MinWorkers <= 0 {
		q.MinWorkers = min(d.MinWorkers, q.MaxWorkers)
	}
	if q.MaxAttempts <= 0 {
		q.MaxAttempts = d.MaxAttempts
	}
	if q.JobTimeout <= 0 {
		q.JobTimeout = d.JobTimeout
	}
	if q.BackoffBase <= 0 {
		q.BackoffBase = d.BackoffBase
	}
	if q.BackoffCap <= 0 {
		q.BackoffCap = max(d.BackoffCap, q.BackoffBase)
	}
	if q.RateLimit > 0 && q.RateBurst <= 0 {
		q.RateBurst = max(1, int(q.RateLimit))
	}
	if q.MaxDepth <= 0 {
		q.MaxDepth = d.MaxDepth
	}
	if q.ResultTTL <= 0 {
		q.ResultTTL = d.ResultTTL
	}
}

var queueNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate checks one queue's settings.
func (q Queue) Validate() error {
	if !queueNameRE.MatchString(q.Name) {
		return fmt.Errorf("queue name %q: must match %s", q.Name, queueNameRE)
	}
	if q.MinWorkers > q.MaxWorkers {
		return fmt.Errorf("queue %q: min_workers %d > max_workers %d", q.Name, q.MinWorkers, q.MaxWorkers)
	}
	if q.BackoffCap < q.BackoffBase {
		return fmt.Errorf("queue %q: backoff_cap %s < backoff_base %s", q.Name, q.BackoffCap, q.BackoffBase)
	}
	if q.ResultTTL < time.Second {
		return fmt.Errorf("queue %q: result_ttl %s is below 1s", q.Name, q.ResultTTL)
	}
	if q.RateLimit < 0 {
		return fmt.Errorf("queue %q: rate_limit must be >= 0", q.Name)
	}
	return nil
}

// fileFormat is the TOML file: an array of [[queue]] tables.
type fileFormat struct {
	Queue []Queue `toml:"queue"`
}

// LoadQueues reads the TOML queue file (see examples/queues.toml). The default
// queue is added with built-in settings unless the file declares it.
func LoadQueues(path string) ([]Queue, error) {
	var ff fileFormat
	if path != "" {
		md, err := toml.DecodeFile(path, &ff)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			return nil, fmt.Errorf("config file %s: unknown keys %v", path, und)
		}
	}
	return NormalizeQueues(ff.Queue)
}

// NormalizeQueues fills defaults, adds the default queue and validates.
func NormalizeQueues(in []Queue) ([]Queue, error) {
	seen := map[string]bool{}
	out := make([]Queue, 0, len(in)+1)
	for _, q := range in {
		q.fillDefaults()
		if err := q.Validate(); err != nil {
			return nil, err
		}
		if seen[q.Name] {
			return nil, fmt.Errorf("queue %q declared twice", q.Name)
		}
		seen[q.Name] = true
		out = append(out, q)
	}
	if !seen[DefaultQueue] {
		out = append(out, DefaultQueueSettings(DefaultQueue))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

type flagDef struct {
	name, env, usage string
}

// Parse parses args (without the program name) and the environment.
func Parse(args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	cfg, rest, err := ParseCommand("tandem-orchestrator", args, getenv, stderr, nil)
	if err != nil {
		return nil, err
	}
	if len(rest) > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", rest)
	}
	return cfg, nil
}

// ParseCommand parses like Parse for a subcommand (e.g. "tandem-orchestrator
// token create"): extra registers the subcommand's own flags on the same flag
// set, so the NATS connection flags and their TANDEM_ORCH_* variables are
// the orchestrator's. It returns the arguments left after the flags.
func ParseCommand(name string, args []string, getenv func(string) string, stderr io.Writer, extra func(fs *flag.FlagSet)) (*Config, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg          Config
		compute      string
		logLevel     string
		defs         []flagDef
		maxMsgBytes  int
		replicas     int
		drainTimeout time.Duration
	)
	str := func(p *string, name, env, def, usage string) {
		fs.StringVar(p, name, def, usage)
		defs = append(defs, flagDef{name, env, usage})
	}
	str(&cfg.Listen, "listen", "TANDEM_ORCH_LISTEN", "127.0.0.1:50051", "gRPC listen address")
	str(&compute, "compute", "TANDEM_ORCH_COMPUTE", "127.0.0.1:50052", "compute endpoints: comma-separated host:port list, or dns:///host:port")
	str(&cfg.NATSURL, "nats-url", "TANDEM_ORCH_NATS_URL", "", "NATS server URL; empty: start an embedded nats-server")
	str(&cfg.NATSListen, "nats-listen", "TANDEM_ORCH_NATS_LISTEN", "127.0.0.1:4222", "embedded nats-server client listen address (port 0: random; empty: no TCP listener)")
	str(&cfg.DataDir, "data-dir", "TANDEM_ORCH_DATA_DIR", "./tandem-data", "data directory (embedded JetStream file store under DIR/jetstream)")
	str(&cfg.ConfigFile, "config", "TANDEM_ORCH_CONFIG", "", "TOML queue config file; empty: built-in default queue only")
	str(&cfg.Durability, "durability", "TANDEM_ORCH_DURABILITY", DurabilityAlways, "embedded server fsync policy: always (fsync each write) or interval (fsync every 2 min)")
	str(&cfg.MetricsListen, "metrics-listen", "TANDEM_ORCH_METRICS_LISTEN", "127.0.0.1:9101", "Prometheus /metrics listen address; empty: off")
	str(&cfg.DashboardListen, "dashboard-listen", "TANDEM_ORCH_DASHBOARD_LISTEN", "", "web dashboard HTTP listen address (e.g. 127.0.0.1:8080); empty: off")
	fs.DurationVar(&drainTimeout, "drain-timeout", 30*time.Second, "how long SIGTERM waits for in-flight jobs before handing them back")
	defs = append(defs, flagDef{"drain-timeout", "TANDEM_ORCH_DRAIN_TIMEOUT", ""})
	str(&logLevel, "log-level", "TANDEM_ORCH_LOG_LEVEL", "info", "log level: debug, info, warn, error")
	fs.IntVar(&maxMsgBytes, "max-message-bytes", 64<<20+1<<20, "largest gRPC request accepted (a 64 MiB payload plus overhead)")
	defs = append(defs, flagDef{"max-message-bytes", "TANDEM_ORCH_MAX_MESSAGE_BYTES", ""})
	boolean := func(p *bool, name, env, usage string) {
		fs.BoolVar(p, name, false, usage)
		defs = append(defs, flagDef{name, env, usage})
	}
	sec := &cfg.Security
	str(&sec.TLSCert, "tls-cert", "TANDEM_ORCH_TLS_CERT", "", "PEM certificate (chain) of the gRPC port and the dashboard; with --tls-key turns TLS on (re-read when the file changes)")
	str(&sec.TLSKey, "tls-key", "TANDEM_ORCH_TLS_KEY", "", "PEM private key of --tls-cert")
	str(&sec.TLSClientCA, "tls-client-ca", "TANDEM_ORCH_TLS_CLIENT_CA", "", "PEM CA bundle: mutual TLS, every client must present a certificate signed by one of these CAs")
	boolean(&sec.Auth, "auth", "TANDEM_ORCH_AUTH", "require a bearer token (KV bucket tandem_tokens, made with: tandem-orchestrator token create) on JobService and ComputeService calls")
	boolean(&sec.Insecure, "insecure", "TANDEM_ORCH_INSECURE", "allow a non-loopback listen address without TLS and authentication (logs a warning)")
	str(&sec.ComputeCA, "compute-ca", "TANDEM_ORCH_COMPUTE_CA", "", "PEM CA bundle compute's certificate must chain to; turns TLS to compute on")
	str(&sec.ComputeCert, "compute-cert", "TANDEM_ORCH_COMPUTE_CERT", "", "PEM client certificate for mutual TLS to compute (turns TLS on; system CAs unless --compute-ca)")
	str(&sec.ComputeKey, "compute-key", "TANDEM_ORCH_COMPUTE_KEY", "", "PEM private key of --compute-cert")
	str(&sec.ComputeTokenFile, "compute-token-file", "TANDEM_ORCH_COMPUTE_TOKEN_FILE", "", "file holding the bearer token sent to compute on every call (re-read when it changes)")
	str(&sec.NATSCreds, "nats-creds", "TANDEM_ORCH_NATS_CREDS", "", "NATS JWT credentials file (--nats-url)")
	str(&sec.NATSNKey, "nats-nkey", "TANDEM_ORCH_NATS_NKEY", "", "NATS nkey seed file (--nats-url)")
	str(&sec.NATSUser, "nats-user", "TANDEM_ORCH_NATS_USER", "", "NATS user name, with --nats-password-file (--nats-url)")
	str(&sec.NATSPasswordFile, "nats-password-file", "TANDEM_ORCH_NATS_PASSWORD_FILE", "", "file holding the password of --nats-user (read at each connect)")
	str(&sec.NATSCA, "nats-ca", "TANDEM_ORCH_NATS_CA", "", "PEM CA bundle the NATS server's certificate must chain to; turns TLS to NATS on")
	str(&sec.NATSCert, "nats-cert", "TANDEM_ORCH_NATS_CERT", "", "PEM client certificate for mutual TLS to NATS")
	str(&sec.NATSKey, "nats-key", "TANDEM_ORCH_NATS_KEY", "", "PEM private key of --nats-cert")
	str(&sec.EncryptionKeyFile, "encryption-key-file", "TANDEM_ORCH_ENCRYPTION_KEY_FILE", "", "keyring file sealing payloads and results at rest: one \"<key-id>:<base64 of 32 bytes>\" per line, the first active (or env TANDEM_ENCRYPTION_KEYS with the same text)")
	fs.IntVar(&replicas, "stream-replicas", 1, "replicas of every JetStream stream, KV bucket and object store (1-5; above 1 needs a clustered server via --nats-url)")
	defs = append(defs, flagDef{"stream-replicas", "TANDEM_ORCH_STREAM_REPLICAS", ""})
	fs.DurationVar(&cfg.AuditMaxAge, "audit-max-age", 720*time.Hour, "how long the audit stream TANDEM_AUDIT keeps an entry")
	defs = append(defs, flagDef{"audit-max-age", "TANDEM_ORCH_AUDIT_MAX_AGE", ""})
	fs.Float64Var(&cfg.RateLimit, "rate-limit", 0, "JobService calls per second per token (per peer address when --auth is off); 0: no limit")
	defs = append(defs, flagDef{"rate-limit", "TANDEM_ORCH_RATE_LIMIT", ""})
	fs.IntVar(&cfg.RateBurst, "rate-burst", 0, "token-bucket burst of --rate-limit: calls allowed at once (default: max(1, rate-limit))")
	defs = append(defs, flagDef{"rate-burst", "TANDEM_ORCH_RATE_BURST", ""})
	if extra != nil {
		extra(fs)
	}

	envOf := map[string]string{}
	for _, d := range defs {
		envOf[d.name] = d.env
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\nEvery flag can also be set by its environment variable; a flag on the command line wins.\n\n", name)
		fs.VisitAll(func(f *flag.Flag) {
			if env := envOf[f.Name]; env != "" {
				fmt.Fprintf(stderr, "  --%s (env %s, default %q)\n    \t%s\n", f.Name, env, f.DefValue, f.Usage)
			} else {
				fmt.Fprintf(stderr, "  --%s (default %q)\n    \t%s\n", f.Name, f.DefValue, f.Usage)
			}
		})
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, d := range defs {
		if set[d.name] {
			continue
		}
		if v, ok := lookup(getenv, d.env); ok {
			if err := fs.Set(d.name, v); err != nil {
				return nil, nil, fmt.Errorf("%s=%q: %w", d.env, v, err)
			}
		}
	}
	cfg.DrainTimeout = drainTimeout
	if v, ok := lookup(getenv, "TANDEM_ENCRYPTION_KEYS"); ok {
		cfg.EncryptionKeys = Secret(v)
	}
	if err := cfg.Security.validate(cfg.NATSURL); err != nil {
		return nil, nil, err
	}
	cfg.MaxMessageBytes = maxMsgBytes
	cfg.StreamReplicas = replicas
	if replicas < 1 || replicas > 5 {
		return nil, nil, fmt.Errorf("--stream-replicas: %d is not between 1 and 5", replicas)
	}
	if replicas > 1 && cfg.NATSURL == "" {
		return nil, nil, fmt.Errorf("--stream-replicas %d needs a clustered NATS (--nats-url): the embedded server is a single node", replicas)
	}
	for _, c := range strings.Split(compute, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Compute = append(cfg.Compute, c)
		}
	}
	if len(cfg.Compute) == 0 {
		return nil, nil, errors.New("--compute: at least one endpoint is required")
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(logLevel)); err != nil {
		return nil, nil, fmt.Errorf("--log-level: %w", err)
	}
	if cfg.Durability != DurabilityAlways && cfg.Durability != DurabilityInterval {
		return nil, nil, fmt.Errorf("--durability: %q is neither %q nor %q", cfg.Durability, DurabilityAlways, DurabilityInterval)
	}
	if cfg.AuditMaxAge < time.Minute {
		return nil, nil, fmt.Errorf("--audit-max-age: %s is below 1m", cfg.AuditMaxAge)
	}
	if cfg.RateLimit < 0 {
		return nil, nil, fmt.Errorf("--rate-limit: %g is negative (0 turns the limit off)", cfg.RateLimit)
	}
	if cfg.RateBurst < 0 {
		return nil, nil, fmt.Errorf("--rate-burst: %d is negative", cfg.RateBurst)
	}
	if cfg.RateLimit > 0 && cfg.RateBurst == 0 {
		cfg.RateBurst = max(1, int(math.Ceil(cfg.RateLimit)))
	}
	if cfg.MaxMessageBytes < 1<<20 {
		return nil, nil, fmt.Errorf("--max-message-bytes: %d is below 1 MiB", cfg.MaxMessageBytes)
	}
	qs, err := LoadQueues(cfg.ConfigFile)
	if err != nil {
		return nil, nil, err
	}
	cfg.Queues = qs
	return &cfg, fs.Args(), nil
}

func lookup(getenv func(string) string, key string) (string, bool) {
	if getenv == nil {
		getenv = os.Getenv
	}
	v := getenv(key)
	return v, v != ""
}
