// Package dashboard is the orchestrator's web dashboard: server-rendered
// pages (queues, a throughput and latency chart, op workers, job search, a
// job's page, dead letters with retry and purge, pause and resume) served on
// their own HTTP port (--dashboard-listen, off by default). Every action goes
// through the orchestrator's own JobService over gRPC, the same API and the
// same authentication as every other client: with --auth on, every page
// needs a token (an `Authorization: Bearer` header, or the cookie the /login
// form sets) that reads at least one queue, and the token travels with each
// gRPC call, so a page shows only the queues and jobs it may read. Nothing
// is loaded from the internet: the one script and style sheet are embedded.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
)

//go:embed web
var webFS embed.FS

// historyKeep is how many samples per queue the chart shows (2 s apart: 10 min).
const (
	historyKeep  = 300
	historyEvery = 2 * time.Second
	callTimeout  = 10 * time.Second
)

// Server serves the dashboard.
type Server struct {
	jobs  tandemv1.JobServiceClient
	log   *slog.Logger
	hist  *history
	tmpl  *template.Template
	stop  context.CancelFunc
	check func(token string) error
}

// Options are the dashboard's optional parts.
type Options struct {
	// Sample reads every queue for the chart's history (nil: ListQueues
	// through jobs, without credentials). Pages show the history of the
	// queues their caller reads only.
	Sample func(ctx context.Context) ([]*tandemv1.QueueInfo, error)
	// Check, when set (--auth on), vets a page's token: nil, or a gRPC
	// status error (UNAUTHENTICATED, TOKEN_EXPIRED, PERMISSION_DENIED for a
	// token that reads no queue).
	Check func(token string) error
}

// TokenCookie is the cookie /login sets.
const TokenCookie = "tandem_token"

// New returns a dashboard that calls jobs; g (the orchestrator's metrics
// registry) gives the latency figures.
func New(jobs tandemv1.JobServiceClient, g prometheus.Gatherer, log *slog.Logger, opts Options) (*Server, error) {
	funcs := template.FuncMap{
		"state":    func(s tandemv1.JobState) string { return strings.TrimPrefix(s.String(), "JOB_STATE_") },
		"ts":       fmtTime,
		"dur":      fmtDur,
		"attemptd": attemptDuration,
		"pct":      func(f float64) string { return fmt.Sprintf("%.0f%%", f*100) },
		"params":   fmtParams,
		"bytes":    fmtBytes,
		"lower":    strings.ToLower,
	}
	tmpl, err := template.New("").Funcs(funcs).ParseFS(webFS, "web/*.html")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{jobs: jobs, log: log.With("component", "dashboard"), hist: newHistory(historyKeep), tmpl: tmpl, stop: cancel, check: opts.Check}
	sample := opts.Sample
	if sample == nil {
		sample = func(ctx context.Context) ([]*tandemv1.QueueInfo, error) {
			r, err := s.jobs.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
			return r.GetQueues(), err
		}
	}
	go s.hist.run(ctx, historyEvery, sample, g)
	return s, nil
}

// Close stops the sampler.
func (s *Server) Close() { s.stop() }

// Handler routes the dashboard.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(mustSub(webFS, "web/static"))))
	mux.HandleFunc("GET /{$}", s.overview)
	mux.HandleFunc("GET /api/overview", s.apiOverview)
	mux.HandleFunc("GET /jobs", s.search)
	mux.HandleFunc("GET /jobs/{id}", s.job)
	mux.HandleFunc("POST /jobs/{id}/cancel", s.cancel)
	mux.HandleFunc("GET /queues/{queue}/dlq", s.deadLetters)
	mux.HandleFunc("POST /queues/{queue}/dlq/{action}", s.dlqAction)
	mux.HandleFunc("POST /queues/{queue}/{action}", s.queueAction)
	if s.check == nil {
		return sameOrigin(mux)
	}
	mux.HandleFunc("GET /login", s.loginPage)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", s.logout)
	return sameOrigin(s.requireToken(mux))
}

type tokenKey struct{}

// bearer is the request's token: an Authorization: Bearer header, else the cookie.
func bearer(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if scheme, tok, ok := strings.Cut(h, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	if c, err := r.Cookie(TokenCookie); err == nil {
		return c.Value
	}
	return ""
}

// requireToken lets a request through with a token that reads some queue:
// 401 without one (the login form for a page), 403 for a token that reads
// nothing. The static files and the login form are open.
func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/static/") || r.URL.Path == "/login" {
			next.ServeHTTP(w, r)
			return
		}
		tok := bearer(r)
		if tok == "" {
			s.denied(w, r, http.StatusUnauthorized, "this dashboard needs a token")
			return
		}
		if err := s.check(tok); err != nil {
			code := httpCode(err)
			if code == http.StatusUnauthorized {
				clearCookie(w, r)
			}
			s.denied(w, r, code, status.Convert(err).Message())
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), tokenKey{}, tok)))
	})
}

func (s *Server) denied(w http.ResponseWriter, r *http.Request, code int, msg string) {
	w.Header().Set("Cache-Control", "no-store")
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="tandem"`)
	}
	if strings.HasPrefix(r.URL.Path, "/api/") || r.Method != http.MethodGet {
		http.Error(w, msg, code)
		return
	}
	w.WriteHeader(code)
	if code == http.StatusUnauthorized {
		s.render(w, "login.html", map[string]any{"Message": msg})
		return
	}
	s.render(w, "error.html", map[string]any{"Code": code, "Message": msg})
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	s.render(w, "login.html", map[string]any{})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	if err := s.check(tok); tok == "" || err != nil {
		msg := "no token given"
		if err != nil {
			msg = status.Convert(err).Message()
		}
		w.WriteHeader(http.StatusUnauthorized)
		s.render(w, "login.html", map[string]any{"Message": msg})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: TokenCookie, Value: tok, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	clearCookie(w, r)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func clearCookie(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: TokenCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

// httpCode is the HTTP status for a gRPC error.
func httpCode(err error) int {
	switch status.Code(err) {
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.FailedPrecondition:
		return http.StatusConflict
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	}
	return http.StatusBadGateway
}

// sameOrigin refuses a state-changing request sent from another site.
func sameOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			origin := r.Header.Get("Origin")
			if origin == "" {
				origin = r.Header.Get("Referer")
			}
			if u, err := url.Parse(origin); origin != "" && (err != nil || u.Host != r.Host) {
				http.Error(w, "cross-origin request refused", http.StatusForbidden)
				return
			}
		}
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// ctx is a gRPC call's context: the request's, with its token.
func (s *Server) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	ctx := r.Context()
	if tok, ok := ctx.Value(tokenKey{}).(string); ok {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	return context.WithTimeout(ctx, callTimeout)
}

func (s *Server) render(w http.ResponseWriter, name string, data any) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := s.tmpl.ExecuteTemplate(w, name, data); err != nil {
		s.log.Warn("rendering a dashboard page failed", "page", name, "error", err)
	}
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	if st, ok := status.FromError(err); ok {
		code = httpCode(err)
		w.WriteHeader(code)
		s.render(w, "error.html", map[string]any{"Code": code, "Message": st.Message()})
		return
	}
	w.WriteHeader(code)
	s.render(w, "error.html", map[string]any{"Code": code, "Message": err.Error()})
}

type overviewData struct {
	Queues  []*tandemv1.QueueInfo
	Workers []*tandemv1.WorkerInfo
	Now     time.Time
}

func (s *Server) load(r *http.Request) (*overviewData, error) {
	ctx, cancel := s.ctx(r)
	defer cancel()
	qs, err := s.jobs.ListQueues(ctx, &tandemv1.ListQueuesRequest{})
	if err != nil {
		return nil, err
	}
	ws, err := s.jobs.ListWorkers(ctx, &tandemv1.ListWorkersRequest{})
	if err != nil {
		return nil, err
	}
	return &overviewData{Queues: qs.GetQueues(), Workers: ws.GetWorkers(), Now: time.Now()}, nil
}

func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	d, err := s.load(r)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.render(w, "overview.html", d)
}

// apiOverview is what the overview page's script polls: the queue figures
// and the recent history of each queue.
func (s *Server) apiOverview(w http.ResponseWriter, r *http.Request) {
	d, err := s.load(r)
	if err != nil {
		http.Error(w, status.Convert(err).Message(), httpCode(err))
		return
	}
	type queue struct {
		Info    json.RawMessage `json:"info"`
		History []sample        `json:"history"`
	}
	out := struct {
		Queues  []queue           `json:"queues"`
		Workers []json.RawMessage `json:"workers"`
	}{}
	mo := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}
	for _, q := range d.Queues {
		b, _ := mo.Marshal(q)
		out.Queues = append(out.Queues, queue{Info: b, History: s.hist.get(q.GetName())})
	}
	for _, wk := range d.Workers {
		wk.Ops = nil // names are enough here
		b, _ := mo.Marshal(wk)
		out.Workers = append(out.Workers, b)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}

type searchData struct {
	Query    url.Values
	Jobs     []*tandemv1.Job
	Scanned  uint64
	Trunc    bool
	States   []string
	Searched bool
}

func (s *Server) search(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if id := strings.TrimSpace(q.Get("id")); id != "" {
		if ident.JobID("id", id) != nil {
			w.WriteHeader(http.StatusBadRequest)
			s.render(w, "error.html", map[string]any{"Code": 400, "Message": "not a job id (1 to 64 of A-Z a-z 0-9 _ -)"})
			return
		}
		http.Redirect(w, r, "/jobs/"+url.PathEscape(id), http.StatusSeeOther)
		return
	}
	d := searchData{Query: q}
	for _, n := range tandemv1.JobState_name {
		if n != "JOB_STATE_UNSPECIFIED" {
			d.States = append(d.States, strings.TrimPrefix(n, "JOB_STATE_"))
		}
	}
	sortStates(d.States)
	req := &tandemv1.ListJobsRequest{Queue: q.Get("queue"), Limit: 100}
	if st := q.Get("state"); st != "" {
		v, ok := tandemv1.JobState_value["JOB_STATE_"+strings.ToUpper(st)]
		if !ok {
			w.WriteHeader(http.StatusBadRequest)
			s.render(w, "error.html", map[string]any{"Code": 400, "Message": "unknown state " + st})
			return
		}
		req.State = tandemv1.JobState(v)
	}
	if l := q.Get("label"); l != "" {
		req.LabelKey, req.LabelValue, _ = strings.Cut(l, "=")
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	resp, err := s.jobs.ListJobs(ctx, req)
	if err != nil {
		s.fail(w, err)
		return
	}
	d.Jobs, d.Scanned, d.Trunc, d.Searched = resp.GetJobs(), resp.GetScanned(), resp.GetTruncated(), true
	s.render(w, "jobs.html", d)
}

func sortStates(st []string) {
	order := map[string]int{"QUEUED": 1, "RUNNING": 2, "RETRYING": 3, "SUCCEEDED": 4, "FAILED": 5, "DEAD": 6, "CANCELLED": 7}
	for i := 1; i < len(st); i++ {
		for j := i; j > 0 && order[st[j]] < order[st[j-1]]; j-- {
			st[j], st[j-1] = st[j-1], st[j]
		}
	}
}

func (s *Server) job(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r)
	defer cancel()
	resp, err := s.jobs.GetJob(ctx, &tandemv1.GetJobRequest{JobId: r.PathValue("id")})
	if err != nil {
		s.fail(w, err)
		return
	}
	j := resp.GetJob()
	trace := ""
	for _, a := range j.GetAttempts() {
		if a.GetTraceId() != "" {
			trace = a.GetTraceId()
		}
	}
	s.render(w, "job.html", map[string]any{"Job": j, "TraceID": trace, "Terminal": terminal(j.GetState())})
}

func terminal(s tandemv1.JobState) bool {
	switch s {
	case tandemv1.JobState_JOB_STATE_SUCCEEDED, tandemv1.JobState_JOB_STATE_FAILED, tandemv1.JobState_JOB_STATE_DEAD, tandemv1.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

func (s *Server) cancel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r)
	defer cancel()
	id := r.PathValue("id")
	if _, err := s.jobs.CancelJob(ctx, &tandemv1.CancelJobRequest{JobId: id}); err != nil {
		s.fail(w, err)
		return
	}
	http.Redirect(w, r, "/jobs/"+url.PathEscape(id), http.StatusSeeOther)
}

func (s *Server) deadLetters(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r)
	defer cancel()
	q := r.PathValue("queue")
	resp, err := s.jobs.ListDeadLetters(ctx, &tandemv1.ListDeadLettersRequest{Queue: q, Limit: 1000})
	if err != nil {
		s.fail(w, err)
		return
	}
	s.render(w, "dlq.html", map[string]any{"Queue": q, "Jobs": resp.GetJobs(), "Total": resp.GetTotal(), "Done": r.URL.Query().Get("done")})
}

func (s *Server) dlqAction(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	ctx, cancel := s.ctx(r)
	defer cancel()
	q := r.PathValue("queue")
	ids := r.PostForm["job_id"]
	all := r.PostForm.Get("all") == "true"
	if len(ids) == 0 && !all {
		http.Redirect(w, r, "/queues/"+url.PathEscape(q)+"/dlq?done="+url.QueryEscape("nothing selected"), http.StatusSeeOther)
		return
	}
	var done string
	switch r.PathValue("action") {
	case "retry":
		resp, err := s.jobs.RetryDeadLetters(ctx, &tandemv1.RetryDeadLettersRequest{Queue: q, JobIds: ids, All: all && len(ids) == 0})
		if err != nil {
			s.fail(w, err)
			return
		}
		done = fmt.Sprintf("retried %d", len(resp.GetRetriedJobIds()))
	case "purge":
		resp, err := s.jobs.PurgeDeadLetters(ctx, &tandemv1.PurgeDeadLettersRequest{Queue: q, JobIds: ids, All: all && len(ids) == 0})
		if err != nil {
			s.fail(w, err)
			return
		}
		done = fmt.Sprintf("purged %d", resp.GetPurged())
	default:
		http.NotFound(w, r)
		return
	}
	http.Redirect(w, r, "/queues/"+url.PathEscape(q)+"/dlq?done="+url.QueryEscape(done), http.StatusSeeOther)
}

func (s *Server) queueAction(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.ctx(r)
	defer cancel()
	q := r.PathValue("queue")
	var err error
	switch r.PathValue("action") {
	case "pause":
		_, err = s.jobs.PauseQueue(ctx, &tandemv1.PauseQueueRequest{Queue: q})
	case "resume":
		_, err = s.jobs.ResumeQueue(ctx, &tandemv1.ResumeQueueRequest{Queue: q})
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// Serve runs the dashboard on lis until it is closed.
func Serve(lis net.Listener, h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 60 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Default().Warn("dashboard server stopped", "error", err)
		}
	}()
	return srv
}
