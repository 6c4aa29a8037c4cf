package orchestrator_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// The dashboard's pages over real HTTP against a real orchestrator: the
// queues page and its live JSON, job search, a job's page, and a dead
// letter retried with the page's own form.
func TestDashboardPagesAndRetry(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *setupOpts) { o.dashboard = true })
	base := "http://" + b.orc.DashboardAddr()
	ok := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("hash.sha256")}, Payload: []byte("d"), Labels: map[string]string{"team": "web"}})
	waitTerminal(t, b.client, ok.GetId())
	dead := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "UNAVAILABLE", "until", "1")}, MaxAttempts: 1})
	fin, _ := waitTerminal(t, b.client, dead.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, fin.GetState())

	code, body := get(t, base+"/")
	require.Equal(t, 200, code)
	require.Contains(t, body, `data-queue="default"`)
	require.NotContains(t, body, "http://", "no page loads anything from elsewhere")
	require.Eventually(t, func() bool {
		_, js := get(t, base+"/api/overview")
		var v struct {
			Queues []struct {
				Info    map[string]any   `json:"info"`
				History []map[string]any `json:"history"`
			} `json:"queues"`
		}
		return json.Unmarshal([]byte(js), &v) == nil && len(v.Queues) == 1 && len(v.Queues[0].History) >= 2
	}, 15*time.Second, 200*time.Millisecond, "the live history fills")

	code, body = get(t, base+"/jobs?label=team%3Dweb")
	require.Equal(t, 200, code)
	require.Contains(t, body, ok.GetId())
	require.NotContains(t, body, dead.GetId())
	code, body = get(t, base+"/jobs?state=dead")
	require.Equal(t, 200, code)
	require.Contains(t, body, dead.GetId())

	code, body = get(t, base+"/jobs/"+ok.GetId())
	require.Equal(t, 200, code)
	require.Contains(t, body, "SUCCEEDED")
	require.Contains(t, body, "hash.sha256")
	require.Regexp(t, `id="trace-id">[0-9a-f]{32}<`, body)
	code, _ = get(t, base+"/jobs/"+url.PathEscape("../../etc/passwd"))
	require.Equal(t, 400, code)

	code, body = get(t, base+"/queues/default/dlq")
	require.Equal(t, 200, code)
	require.Contains(t, body, dead.GetId())
	// A form post from another site is refused; from the page it works.
	req, _ := http.NewRequest(http.MethodPost, base+"/queues/default/dlq/retry", strings.NewReader("job_id="+dead.GetId()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	req, _ = http.NewRequest(http.MethodPost, base+"/queues/default/dlq/retry", strings.NewReader("job_id="+dead.GetId()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	b2, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode) // after the redirect
	require.Contains(t, string(b2), "retried 1")
	fin, _ = waitTerminal(t, b.client, dead.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, fin.GetState(), "retried from the page, it succeeds (until=1)")
}
