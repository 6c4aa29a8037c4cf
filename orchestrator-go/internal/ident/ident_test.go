package ident_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
	"github.com/tandem/tandem/orchestrator-go/internal/ident"
)

// requireBad checks err is INVALID_ARGUMENT / REQUEST_INVALID naming field.
func requireBad(t *testing.T, err error, field string) {
	t.Helper()
	require.Error(t, err)
	e := apierr.From(err)
	require.Equal(t, tandemv1.ErrorReason_REQUEST_INVALID, e.Reason)
	require.Equal(t, field, e.Metadata[apierr.KeyField])
	require.NotEmpty(t, e.Metadata[apierr.KeyLimit])
	require.Less(t, len(e.Message), 300, "the message quotes a short prefix only")
}

func TestTokensAtTheirLimits(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		check func(string, string) error
		limit int
	}{
		{"job_id", ident.JobID, ident.MaxJobID},
		{"queue", ident.Queue, ident.MaxQueue},
		{"op", ident.Op, ident.MaxOp},
		{"param", ident.ParamName, ident.MaxParamName},
		{"label", ident.LabelKey, ident.MaxLabelKey},
	} {
		require.NoError(t, c.check(c.name, strings.Repeat("a", c.limit-1)), c.name)
		require.NoError(t, c.check(c.name, strings.Repeat("a", c.limit)), c.name)
		requireBad(t, c.check(c.name, strings.Repeat("a", c.limit+1)), c.name)
		requireBad(t, c.check(c.name, strings.Repeat("a", 1<<20)), c.name)
		requireBad(t, c.check(c.name, ""), c.name)
	}
}

// Every character class a subject, a KV key or a path could misread.
var hostile = []string{"*", ">", "a.*", "a.>", "a b", " ", "../..", "../../etc/passwd", "a/b", "a\\b", "a\x00b",
	"a\nb", "a\tb", "é", "a:b", "a=b", "$KV", "a,b", "\u200b", "a\x7f"}

func TestTokensRejectEveryOtherCharacterClass(t *testing.T) {
	t.Parallel()
	for _, v := range hostile {
		requireBad(t, ident.JobID("job_id", v), "job_id")
		requireBad(t, ident.Queue("queue", v), "queue")
	}
	require.NoError(t, ident.JobID("job_id", "01KBXYZ0123456789ABCDEFGHJ"))
	require.NoError(t, ident.JobID("job_id", "a-b_C9"))
	// Op names are dot-separated tokens: dots yes, wildcards and empty tokens no.
	require.NoError(t, ident.Op("op", "acme.ocr.v2"))
	for _, v := range append(hostile, ".a", "a.", "a..b") {
		requireBad(t, ident.Op("op", v), "op")
	}
}

func TestTextLimitsAndControlCharacters(t *testing.T) {
	t.Parallel()
	require.NoError(t, ident.Text("f", "", 8))
	require.NoError(t, ident.Text("f", "abc é * > ../..", 64))
	require.NoError(t, ident.Text("f", strings.Repeat("a", 7), 8))
	require.NoError(t, ident.Text("f", strings.Repeat("a", 8), 8))
	requireBad(t, ident.Text("f", strings.Repeat("a", 9), 8), "f")
	for _, v := range []string{"a\x00", "a\n", "\x1b[2J", "a\x7f", "a\u0085", string([]byte{0xff, 0xfe})} {
		requireBad(t, ident.Text("f", v, 64), "f")
	}
}

func TestJobIDsNamesTheBadIndexAndBoundsTheCount(t *testing.T) {
	t.Parallel()
	ids := make([]string, ident.MaxIDsPerCall)
	for i := range ids {
		ids[i] = "a"
	}
	require.NoError(t, ident.JobIDs("job_ids", ids))
	requireBad(t, ident.JobIDs("job_ids", append(ids, "a")), "job_ids")
	requireBad(t, ident.JobIDs("job_ids", []string{"ok", "*"}), "job_ids[1]")
}

func TestStepsAndLabels(t *testing.T) {
	t.Parallel()
	ok := &tandemv1.Step{Op: "hash.sha256", Params: map[string]string{"level": "3"}}
	require.NoError(t, ident.Steps([]*tandemv1.Step{ok}))
	requireBad(t, ident.Steps([]*tandemv1.Step{ok, {Op: strings.Repeat("x", 20000)}}), "steps[1].op")
	requireBad(t, ident.Steps([]*tandemv1.Step{{Op: "a", Params: map[string]string{"a b": "1"}}}), "steps[0].params")
	requireBad(t, ident.Steps([]*tandemv1.Step{{Op: "a", Params: map[string]string{"k": strings.Repeat("v", ident.MaxParamValue+1)}}}), "steps[0].params[k]")
	require.NoError(t, ident.Steps([]*tandemv1.Step{{Op: "a", Params: map[string]string{"k": strings.Repeat("v", ident.MaxParamValue)}}}))
	many := map[string]string{}
	for i := range ident.MaxParams + 1 {
		many[strings.Repeat("p", i+1)] = "1"
	}
	requireBad(t, ident.Steps([]*tandemv1.Step{{Op: "a", Params: many}}), "steps[0].params")

	require.NoError(t, ident.Labels(map[string]string{"team": "images", "k.v-1_x": strings.Repeat("v", ident.MaxLabelValue)}))
	requireBad(t, ident.Labels(map[string]string{"team": strings.Repeat("v", ident.MaxLabelValue+1)}), "labels[team]")
	requireBad(t, ident.Labels(map[string]string{"a*": "x"}), "labels")
	lots := map[string]string{}
	for i := range ident.MaxLabels + 1 {
		lots[strings.Repeat("l", i+1)] = ""
	}
	requireBad(t, ident.Labels(lots), "labels")
}
