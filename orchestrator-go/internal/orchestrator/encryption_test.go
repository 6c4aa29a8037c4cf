package orchestrator_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/computetest"
	"github.com/tandem/tandem/orchestrator-go/internal/config"
)

func keyLine(t testing.TB, id string) string {
	k := make([]byte, 32)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return id + ":" + base64.StdEncoding.EncodeToString(k)
}

// filesContaining lists the files under dir holding any of needles.
func filesContaining(t testing.TB, dir string, needles ...[]byte) []string {
	var hits []string
	require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, n := range needles {
			if bytes.Contains(data, n) {
				hits = append(hits, fmt.Sprintf("%s (needle %d)", path, i))
			}
		}
		return nil
	}))
	return hits
}

type sealedRun struct {
	ids     []string
	results map[string][]byte
	needles [][]byte
}

// runMarkedJobs runs jobs whose payloads and results carry a marker: small
// (inline in the message and the record) and large (in the object stores),
// and one that is dead-lettered (its payload copied to TANDEM_DLQ).
func runMarkedJobs(t *testing.T, b *testBundle) sealedRun {
	marker := make([]byte, 24)
	_, err := rand.Read(marker)
	require.NoError(t, err)
	marker = []byte("MARKER-" + base64.RawURLEncoding.EncodeToString(marker))
	small := append([]byte("small "), marker...)
	large := bytes.Repeat(append([]byte("large "), marker...), (3<<20)/len(marker)) // above the 2 MiB inline limit
	digest := sha256.Sum256(small)
	r := sealedRun{results: map[string][]byte{}, needles: [][]byte{marker, digest[:]}}
	for _, j := range []struct {
		steps   []*tandemv1.Step
		payload []byte
		result  []byte
	}{
		{[]*tandemv1.Step{step("test.echo")}, small, small},
		{[]*tandemv1.Step{step("hash.sha256")}, small, digest[:]},
		{[]*tandemv1.Step{step("test.echo")}, large, large},
	} {
		job := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: j.steps, Payload: j.payload})
		final, _ := waitTerminal(t, b.client, job.GetId())
		require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, final.GetState(), "%v", final.GetLastError())
		require.Equal(t, j.result, final.GetResult())
		r.ids = append(r.ids, job.GetId())
		r.results[job.GetId()] = j.result
	}
	dead := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.fail", "code", "UNAVAILABLE")}, Payload: small, MaxAttempts: 1})
	final, _ := waitTerminal(t, b.client, dead.GetId())
	require.Equal(t, tandemv1.JobState_JOB_STATE_DEAD, final.GetState())
	return r
}

func TestEncryptionAtRestAndKeyRotation(t *testing.T) {
	t.Parallel()
	compute := computetest.Start(t)
	k1, k2 := keyLine(t, "k1"), keyLine(t, "k2")
	dir := t.TempDir()
	start := func(keys string) *testBundle {
		return setup(t, func(o *setupOpts) {
			o.compute, o.dataDir = compute, dir
			o.security = config.Security{EncryptionKeys: config.Secret(keys)}
		})
	}

	b := start(k1)
	run := runMarkedJobs(t, b)
	b.orc.Shutdown(time.Second) // the store is flushed
	require.Empty(t, filesContaining(t, filepath.Join(dir, "jetstream"), run.needles...),
		"payload or result bytes in plaintext under the NATS store")

	// Rotation: a new active key first, the old one kept: old results read.
	b = start(k2 + "\n" + k1)
	for id, want := range run.results {
		got, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: id, IncludeResult: true})
		require.NoError(t, err)
		require.Equal(t, want, got.GetJob().GetResult())
	}
	fresh := submit(t, b.client, &tandemv1.SubmitJobRequest{Steps: []*tandemv1.Step{step("test.echo")}, Payload: []byte("sealed with k2")})
	final, _ := waitTerminal(t, b.client, fresh.GetId())
	require.Equal(t, "sealed with k2", string(final.GetResult()))
	b.orc.Shutdown(time.Second)

	// Without the old key: a clear error naming the key id; k2's data reads.
	b = start(k2)
	_, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: run.ids[0], IncludeResult: true})
	ei := errInfo(t, err)
	require.Equal(t, "INTERNAL_ERROR", ei.GetReason())
	require.ErrorContains(t, err, `encryption key id "k1"`)
	require.ErrorContains(t, err, run.ids[0])
	got, err := b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: fresh.GetId(), IncludeResult: true})
	require.NoError(t, err)
	require.Equal(t, "sealed with k2", string(got.GetJob().GetResult()))
	got, err = b.client.GetJob(ctxT(t), &tandemv1.GetJobRequest{JobId: run.ids[0]})
	require.NoError(t, err, "metadata stays readable without the key")
	require.Equal(t, tandemv1.JobState_JOB_STATE_SUCCEEDED, got.GetJob().GetState())
}

// The control: without a keyring the same bytes are found on disk, so the
// search above can fail.
func TestWithoutEncryptionPayloadsAreOnDisk(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := setup(t, func(o *setupOpts) { o.dataDir = dir })
	run := runMarkedJobs(t, b)
	b.orc.Shutdown(time.Second)
	hits := filesContaining(t, filepath.Join(dir, "jetstream"), run.needles...)
	require.NotEmpty(t, hits)
	t.Logf("plaintext found in %d places", len(hits))
}
