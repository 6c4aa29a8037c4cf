// Package compute is the orchestrator's client of tandem.v1.ComputeService: one
// gRPC connection and one circuit breaker per endpoint, round-robin over the
// endpoints whose breaker is closed, a cached ListOps, and request validation.
package compute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"google.golang.org/grpc/status"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/provider"
	"github.com/tandem/tandem/orchestrator-go/internal/tlsconf"
)

// ErrUnreachable marks a call that never reached a compute server (transport
// failure, every breaker open, a hung compute). Jobs failing this way keep
// their attempt.
var ErrUnreachable = provider.ErrUnreachable

// Options configure a Client.
type Options struct {
	Endpoints       []string
	MaxMessageBytes int
	// BreakerOpenFor is how long a breaker stays open before a ListOps probe (default 2s).
	BreakerOpenFor time.Duration
	// BreakerFailures is how many consecutive transport failures open a breaker (default 3).
	BreakerFailures uint32
	Logger          *slog.Logger
	// OnBreakerChange is called with the endpoint and its new state.
	OnBreakerChange func(endpoint string, state gobreaker.State)
	// TLS, when set, is TLS (or mutual TLS) to every endpoint; nil: plaintext.
	TLS *tlsconf.Client
	// Token, when set, is sent as a bearer token on every call.
	Token *TokenFile
}

type endpoint struct {
	addr   string
	conn   *grpc.ClientConn
	cli    tandemv1.ComputeServiceClient
	health healthpb.HealthClient
	cb     *gobreaker.CircuitBreaker[any]
}

// errHung marks a compute that accepts connections but answers nothing in
// time (a frozen process, a wedged runtime): an outage like a refused
// connection, counted by the breaker.
var errHung = errors.New("compute did not answer in time")

// probeTimeout bounds one liveness probe (ListOps or a health check). Both
// are answered by compute's async runtime, never queued behind CPU work, so
// a live compute answers them in milliseconds even when its pool is full.
const probeTimeout = 2 * time.Second

// Client calls the compute service.
type Client struct {
	eps  []*endpoint
	next atomic.Uint64
	log  *slog.Logger

	opsMu      sync.Mutex
	fetchMu    sync.Mutex // held by the first ListOps fetch, while no catalogue is loaded
	ops        *tandemv1.ListOpsResponse
	opNames    map[string]bool
	opsAt      time.Time
	opsTriedAt time.Time

	stop chan struct{}
	wg   sync.WaitGroup
}

// New dials (lazily) every endpoint and starts the breaker probes.
func New(o Options) (*Client, error) {
	if o.BreakerOpenFor <= 0 {
		o.BreakerOpenFor = 2 * time.Second
	}
	if o.BreakerFailures == 0 {
		o.BreakerFailures = 3
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{log: o.Logger, stop: make(chan struct{})}
	for _, addr := range o.Endpoints {
		creds := insecure.NewCredentials()
		if o.TLS != nil {
			creds = o.TLS.Credentials()
		}
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			// Spans for job calls (the trace context travels in metadata);
			// the liveness probes are not traced.
			grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelgrpc.WithFilter(filters.None(filters.MethodName("ListOps"), filters.HealthCheck())))),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.MaxMessageBytes), grpc.MaxCallSendMsgSize(o.MaxMessageBytes)),
			// Reconnect soon after compute comes back: gRPC's default
			// backoff grows to 120 s, so after a minute's outage calls would
			// fail fast (and keep the breaker open) long after compute is up.
			grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: 2 * time.Second,
				Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second}}),
		}
		if o.Token != nil {
			opts = append(opts, grpc.WithPerRPCCredentials(o.Token))
		}
		if strings.HasPrefix(addr, "dns:") {
			opts = append(opts, grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
		}
		conn, err := grpc.NewClient(addr, opts...)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("compute endpoint %q: %w", addr, err)
		}
		ep := &endpoint{addr: addr, conn: conn, cli: tandemv1.NewComputeServiceClient(conn), health: healthpb.NewHealthClient(conn)}
		failures := o.BreakerFailures
		ep.cb = gobreaker.NewCircuitBreaker[any](gobreaker.Settings{
			Name:        addr,
			MaxRequests: 1,
			Timeout:     o.BreakerOpenFor,
			ReadyToTrip: func(cn gobreaker.Counts) bool { return cn.ConsecutiveFailures >= failures },
			// Only transport failures count: an error the server answered with
			// (ErrorInfo attached) means compute is up.
			IsSuccessful: func(err error) bool { return err == nil || !transportFailure(err) },
			// A call that ran out of its caller's deadline (or was cancelled)
			// says nothing about compute by itself: Transform asks compute
			// with a health check and records the answer (checkAlive).
			IsExcluded: func(err error) bool {
				if errors.Is(err, errHung) || apierr.HasErrorInfo(err) {
					return false
				}
				code := status.Code(err)
				return code == codes.DeadlineExceeded || code == codes.Canceled
			},
			OnStateChange: func(name string, from, to gobreaker.State) {
				c.log.Warn("compute circuit breaker", "endpoint", name, "from", from.String(), "to", to.String())
				if o.OnBreakerChange != nil {
					o.OnBreakerChange(name, to)
				}
			},
		})
		c.eps = append(c.eps, ep)
	}
	c.wg.Add(1)
	go c.probe()
	return c, nil
}

// transportFailure reports whether err means the server was not reached
// (or did not answer a probe at all).
func transportFailure(err error) bool {
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) || errors.Is(err, errHung) {
		return true
	}
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch st.Code() {
	case codes.Unauthenticated, codes.PermissionDenied:
		// Compute refuses the orchestrator's own credentials (TLS client
		// certificate, --compute-token-file): no job can run there until
		// that is fixed, so it counts as an outage, never as the job's fault.
		return true
	}
	return st.Code() == codes.Unavailable && !apierr.HasErrorInfo(err)
}

// probe calls ListOps on every endpoint whose breaker is half-open, so a
// recovered endpoint closes its breaker without a job being spent on it.
func (c *Client) probe() {
	defer c.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	lastHealthy := time.Time{}
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		// Closed endpoints are probed every 2s too, so a compute that went
		// away while no job was running is noticed (health, pools) and the
		// ListOps cache stays fresh.
		probeClosed := time.Since(lastHealthy) >= 2*time.Second
		if probeClosed {
			lastHealthy = time.Now()
		}
		for _, ep := range c.eps {
			st := ep.cb.State()
			if st == gobreaker.StateOpen || st == gobreaker.StateClosed && !probeClosed {
				continue
			}
			_, _ = ep.cb.Execute(func() (any, error) {
				ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
				defer cancel()
				r, err := ep.cli.ListOps(ctx, &tandemv1.ListOpsRequest{})
				if err == nil {
					c.storeOps(r)
					return r, nil
				}
				if code := status.Code(err); code == codes.DeadlineExceeded || code == codes.Canceled {
					// ListOps is trivial: no answer in probeTimeout is a hung compute.
					return nil, fmt.Errorf("%w: ListOps probe: %v", errHung, err)
				}
				return r, err
			})
		}
	}
}

// Ready reports whether some endpoint's breaker is closed: the pools pull only then.
func (c *Client) Ready() bool {
	for _, ep := range c.eps {
		if ep.cb.State() == gobreaker.StateClosed {
			return true
		}
	}
	return false
}

// BreakerStates reports each endpoint's breaker state.
func (c *Client) BreakerStates() map[string]gobreaker.State {
	m := make(map[string]gobreaker.State, len(c.eps))
	for _, ep := range c.eps {
		m[ep.addr] = ep.cb.State()
	}
	return m
}

func (c *Client) pick() *endpoint {
	n := uint64(len(c.eps))
	start := c.next.Add(1)
	for i := range n {
		ep := c.eps[(start+i)%n]
		if ep.cb.State() == gobreaker.StateClosed {
			return ep
		}
	}
	return nil
}

// Transform runs one pipeline. Errors are *apierr.Error; transport failures
// also wrap ErrUnreachable.
func (c *Client) Transform(ctx context.Context, req *tandemv1.TransformRequest) (*tandemv1.TransformResponse, error) {
	ep := c.pick()
	if ep == nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, apierr.ComputeUnavailable("every compute endpoint's circuit breaker is open"))
	}
	r, err := ep.cb.Execute(func() (any, error) { return ep.cli.Transform(ctx, req) })
	if err != nil {
		code := status.Code(err)
		if !apierr.HasErrorInfo(err) && (code == codes.Canceled || code == codes.DeadlineExceeded) {
			// A server may answer CANCELLED when the deadline it was sent
			// expires (tonic does), a hair before the client notices.
			dl, hasDL := ctx.Deadline()
			if code == codes.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded) ||
				(ctx.Err() == nil && hasDL && time.Until(dl) < 250*time.Millisecond) {
				// A slow job, or a hung compute? Ask it: a live compute answers
				// a health check at once, however busy its CPU pool is.
				if perr := c.checkAlive(ep); perr != nil {
					return nil, fmt.Errorf("%w: %w", ErrUnreachable, apierr.ComputeUnavailable(
						"compute %s did not answer within the job's deadline, nor a health check within %s: an outage, the attempt does not count", ep.addr, probeTimeout))
				}
				return nil, apierr.Timeout("compute call to %s ran past its deadline", ep.addr)
			}
			if ctx.Err() != nil {
				return nil, apierr.Cancelled("compute call cancelled")
			}
		}
		if transportFailure(err) {
			return nil, fmt.Errorf("%w: %w", ErrUnreachable, apierr.ComputeUnavailable("compute %s: %v", ep.addr, status.Convert(err).Message()))
		}
		return nil, apierr.From(err)
	}
	return r.(*tandemv1.TransformResponse), nil
}

// checkAlive sends ep a health check; a failure to answer is recorded as a
// breaker failure (several open the breaker: the pools stop pulling and the
// orchestrator reports NOT_SERVING) and returned.
func (c *Client) checkAlive(ep *endpoint) error {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	_, err := ep.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		return nil
	}
	if st := status.Code(err); st == codes.Unimplemented || st == codes.NotFound {
		return nil // answered: alive, just without a health service
	}
	err = fmt.Errorf("%w: health check: %v", errHung, err)
	c.log.Warn("compute did not answer a health check after a call ran past its deadline", "endpoint", ep.addr, "error", err)
	_, _ = ep.cb.Execute(func() (any, error) { return nil, err })
	return err
}

func (c *Client) storeOps(r *tandemv1.ListOpsResponse) {
	names := make(map[string]bool, len(r.GetOps()))
	for _, o := range r.GetOps() {
		names[o.GetName()] = true
	}
	c.opsMu.Lock()
	c.ops, c.opsAt, c.opNames = r, time.Now(), names
	c.opsMu.Unlock()
}

// Serves reports whether compute's last ListOps answer lists op.
func (c *Client) Serves(op string) bool {
	c.opsMu.Lock()
	defer c.opsMu.Unlock()
	return c.opNames[op]
}

// opsTTL is how long a ListOps answer is trusted.
const opsTTL = 30 * time.Second

// Ops returns the cached ListOps answer, refreshing it when older than 30s.
// It returns nil when compute has never answered (validation then checks
// structure only; compute validates again when the job runs).
func (c *Client) Ops(ctx context.Context) *tandemv1.ListOpsResponse {
	c.opsMu.Lock()
	if c.ops == nil {
		// Never loaded yet: callers queue behind one fetch instead of all
		// but the first validating without the catalogue.
		c.opsMu.Unlock()
		c.fetchMu.Lock()
		defer c.fetchMu.Unlock()
		c.opsMu.Lock()
	}
	ops, at, tried := c.ops, c.opsAt, c.opsTriedAt
	stale := ops == nil || time.Since(at) > opsTTL
	if stale && time.Since(tried) > time.Second {
		c.opsTriedAt = time.Now()
		c.opsMu.Unlock()
		if ep := c.pick(); ep != nil {
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			r, err := ep.cli.ListOps(cctx, &tandemv1.ListOpsRequest{})
			cancel()
			if err == nil {
				c.storeOps(r)
				return r
			}
			c.log.Warn("compute ListOps failed; validating structure only", "error", err)
		}
		return ops
	}
	c.opsMu.Unlock()
	return ops
}

// Close closes every connection.
func (c *Client) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
	for _, ep := range c.eps {
		_ = ep.conn.Close()
	}
}

// Forward calls fn on one endpoint (round robin over the endpoints whose
// breaker is closed, through that endpoint's breaker) and returns its answer
// and its error unchanged (same code, message and details). Only when no
// endpoint could be tried is the error the orchestrator's own
// UNAVAILABLE / COMPUTE_UNAVAILABLE.
func (c *Client) Forward(ctx context.Context, fn func(ctx context.Context, cli tandemv1.ComputeServiceClient) (any, error)) (any, error) {
	ep := c.pick()
	if ep == nil {
		return nil, apierr.Status(apierr.ComputeUnavailable("every compute endpoint's circuit breaker is open"))
	}
	r, err := ep.cb.Execute(func() (any, error) { return fn(ctx, ep.cli) })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return nil, apierr.Status(apierr.ComputeUnavailable("compute %s: circuit breaker open", ep.addr))
	}
	return r, err
}
