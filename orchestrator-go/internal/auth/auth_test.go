package auth

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
)

func TestTokenTextRoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	tok, rec, err := New("ci-7", map[string]Scope{"a": Read | Submit}, Admin, time.Hour, "cli:me@here", now)
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(tok, "tdm_ci-7_"))
	require.Len(t, tok, len("tdm_ci-7_")+SecretLen)
	id, secret, err := Parse(tok)
	require.NoError(t, err)
	require.Equal(t, "ci-7", id)
	require.True(t, rec.Verify(secret))
	secret[0] ^= 1
	require.False(t, rec.Verify(secret))
	require.NotContains(t, string(must(rec.Encode())), tok[len(tok)-SecretLen:], "the secret is never stored")

	back, err := Decode(must(rec.Encode()))
	require.NoError(t, err)
	p := back.Principal()
	require.True(t, p.Can("a", Read|Submit))
	require.False(t, p.Can("a", Cancel))
	require.True(t, p.Can("b", Admin), "all-queues scope")
	require.False(t, p.Can("b", Read))
	require.True(t, p.CanEvery(Admin))
	require.False(t, p.CanEvery(Read))
	require.False(t, back.Expired(now.Add(59*time.Minute)))
	require.True(t, back.Expired(now.Add(time.Hour)))

	for _, bad := range []string{"", "tdm_", "tdm_x", "tdm__" + strings.Repeat("A", 43), "tdm_a.b_" + strings.Repeat("A", 43),
		"tdm_" + strings.Repeat("a", 65) + "_" + strings.Repeat("A", 43), "tdm_x_" + strings.Repeat("A", 42), "tdm_x_" + strings.Repeat("*", 43), "xyz_x_" + strings.Repeat("A", 43)} {
		_, _, err := Parse(bad)
		require.Error(t, err, "%q", bad)
	}
	_, err = ParseScopes([]string{"read", "write"})
	require.ErrorContains(t, err, `unknown scope "write"`)
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestAuthenticate(t *testing.T) {
	s := NewStore(nil)
	now := time.Unix(1_800_000_000, 0)
	s.now = func() time.Time { return now }
	good, rec, _ := New("good", map[string]Scope{"a": Read}, 0, 0, "t", now)
	old, orec, _ := New("old", map[string]Scope{"a": Read}, 0, time.Minute, "t", now.Add(-time.Hour))
	s.byID = map[string]*Record{"good": rec, "old": orec}
	p, _, err := s.Authenticate([]string{"Bearer " + good})
	require.NoError(t, err)
	require.Equal(t, "token:good", p.Actor)
	_, _, err = s.Authenticate([]string{"bearer " + good})
	require.NoError(t, err, "the scheme is case-insensitive")
	_, claimed, err := s.Authenticate([]string{"Bearer " + old})
	require.Equal(t, tandemv1.ErrorReason_TOKEN_EXPIRED, apierr.From(err).Reason)
	require.Equal(t, "old", claimed)
	for _, v := range [][]string{nil, {""}, {"Bearer"}, {"Bearer "}, {"Token " + good}, {good}, {"Bearer " + good, "Bearer " + good},
		{"Bearer " + good + strings.Repeat(" ", 5000)}, {"Bearer " + good[:len(good)-1] + "\x00"}, {"Bearer " + strings.Replace(good, "good", "gone", 1)},
		{"Bearer " + good[:len(good)-2] + "AA"}} {
		_, _, err := s.Authenticate(v)
		e := apierr.From(err)
		require.Equal(t, tandemv1.ErrorReason_UNAUTHENTICATED, e.Reason, "%q", v)
		require.NotContains(t, e.Message, good[len(good)-SecretLen:], "no secret in an error")
	}
	// Fail closed: no principal, no rights.
	require.Error(t, Require(context.Background(), "a", Read))
	require.NoError(t, Require(WithPrincipal(context.Background(), Anonymous("")), "a", Admin))
	ctx := WithPrincipal(context.Background(), p)
	require.NoError(t, Require(ctx, "a", Read))
	e := apierr.From(Require(ctx, "", Read))
	require.Equal(t, tandemv1.ErrorReason_PERMISSION_DENIED, e.Reason)
	require.Equal(t, map[string]string{"scope": "read", "queue": "default"}, e.Metadata)
}
