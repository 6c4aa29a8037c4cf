package compute

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The orchestrator reads a token file as compute does (--token-file): one
// token a line, blank and # lines skipped; it sends the first.
func TestFirstToken(t *testing.T) {
	for in, want := range map[string]string{
		"abc\n":                          "abc",
		"  abc  ":                        "abc",
		"# compute tokens\n\nabc\ndef\n": "abc",
		"\r\nabc\r\n":                    "abc",
	} {
		got, err := firstToken([]byte(in))
		require.NoError(t, err, "%q", in)
		require.Equal(t, want, got, "%q", in)
	}
	for _, in := range []string{"", "\n\n", "# only a comment\n", "a b\n", "tok\x00en\n"} {
		_, err := firstToken([]byte(in))
		require.Error(t, err, "%q", in)
	}
}
