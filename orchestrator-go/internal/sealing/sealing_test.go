package sealing_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tandem/tandem/orchestrator-go/internal/sealing"
)

func key(t *testing.T) string {
	k := make([]byte, sealing.KeySize)
	_, err := rand.Read(k)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(k)
}

func TestSealOpenAndRotation(t *testing.T) {
	t.Parallel()
	k1, k2 := key(t), key(t)
	old, err := sealing.Parse("test", "# comment\n\nk1:"+k1+"\n")
	require.NoError(t, err)
	require.Equal(t, "k1", old.Active())
	plain := []byte("the secret payload")
	sealed, err := old.Seal("payload:J1", plain)
	require.NoError(t, err)
	require.True(t, sealing.IsSealed(sealed))
	require.False(t, bytes.Contains(sealed, plain))
	id, err := sealing.KeyID(sealed)
	require.NoError(t, err)
	require.Equal(t, "k1", id)
	again, err := old.Seal("payload:J1", plain)
	require.NoError(t, err)
	require.NotEqual(t, sealed, again, "a fresh nonce each time")

	// Rotated: k2 seals, k1 still opens.
	rot, err := sealing.Parse("test", "k2:"+k2+"\nk1:"+k1)
	require.NoError(t, err)
	require.Equal(t, []string{"k2", "k1"}, rot.IDs())
	got, err := rot.Open("payload:J1", sealed)
	require.NoError(t, err)
	require.Equal(t, plain, got)
	s2, err := rot.Seal("payload:J1", plain)
	require.NoError(t, err)
	id, _ = sealing.KeyID(s2)
	require.Equal(t, "k2", id)

	// Bound to its context.
	_, err = rot.Open("payload:J2", sealed)
	require.ErrorContains(t, err, `key id "k1"`)
	_, err = rot.Open("result:J1", sealed)
	require.Error(t, err)
	// Tampered.
	bad := append([]byte(nil), sealed...)
	bad[len(bad)-1] ^= 1
	_, err = rot.Open("payload:J1", bad)
	require.ErrorContains(t, err, "do not authenticate")

	// The old key dropped: a clear error naming it.
	only2, err := sealing.Parse("test", "k2:"+k2)
	require.NoError(t, err)
	_, err = only2.Open("payload:J1", sealed)
	require.ErrorIs(t, err, sealing.ErrUnknownKey)
	require.ErrorContains(t, err, `encryption key id "k1"`)
	// No keyring at all.
	var none *sealing.Keyring
	_, err = none.Open("payload:J1", sealed)
	require.ErrorContains(t, err, `"k1"`)
	require.ErrorContains(t, err, "TANDEM_ENCRYPTION_KEYS")
	// No keyring: nothing sealed, plaintext read as it is.
	out, err := none.Seal("payload:J1", plain)
	require.NoError(t, err)
	require.Equal(t, plain, out)
	out, err = rot.Open("payload:J1", plain)
	require.NoError(t, err)
	require.Equal(t, plain, out, "bytes written before encryption was on")
	out, err = rot.Seal("payload:J1", nil)
	require.NoError(t, err)
	require.Empty(t, out)
}

func TestParseErrorsNameTheLineNeverTheKey(t *testing.T) {
	t.Parallel()
	short := base64.StdEncoding.EncodeToString([]byte("sixteen byte key"))
	k := key(t)
	for text, want := range map[string]string{
		"":                                "no key",
		"# only a comment\n":              "no key",
		"nocolon":                         "line 1",
		"bad id!:" + k:                    "key id must be",
		"k1:" + short:                     "exactly 32 bytes",
		"k1:" + k + "\nk1:" + k:           "listed twice",
		"k1:not base64 at all!!!":         "base64",
		strings.Repeat("x", 65) + ":" + k: "key id must be",
	} {
		_, err := sealing.Parse("TANDEM_ENCRYPTION_KEYS", text)
		require.ErrorContains(t, err, want, "%q", text)
		require.NotContains(t, err.Error(), k)
		require.NotContains(t, err.Error(), short)
	}
	// Unpadded base64 is accepted too.
	_, err := sealing.Parse("t", "k1:"+strings.TrimRight(k, "="))
	require.NoError(t, err)
}

func TestLoad(t *testing.T) {
	t.Parallel()
	k := key(t)
	f := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.WriteFile(f, []byte("a:"+k+"\n"), 0o600))
	kr, err := sealing.Load(f, "")
	require.NoError(t, err)
	require.Equal(t, "a", kr.Active())
	require.NotContains(t, kr.String(), k)
	kr, err = sealing.Load("", "b:"+k)
	require.NoError(t, err)
	require.Equal(t, "b", kr.Active())
	kr, err = sealing.Load("", "")
	require.NoError(t, err)
	require.Nil(t, kr)
	_, err = sealing.Load(f, "b:"+k)
	require.ErrorContains(t, err, "both set")
	_, err = sealing.Load(filepath.Join(t.TempDir(), "missing"), "")
	require.ErrorContains(t, err, "--encryption-key-file")
}
