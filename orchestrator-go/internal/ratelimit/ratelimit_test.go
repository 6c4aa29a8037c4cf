package ratelimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestBurstThenRefusedWithDelayThenRefilled(t *testing.T) {
	l := New(2, 3, 0)
	now := time.Unix(1000, 0)
	for i := range 3 {
		ok, _ := l.Allow("a", now)
		require.True(t, ok, "call %d within the burst", i)
	}
	ok, d := l.Allow("a", now)
	require.False(t, ok)
	require.InDelta(t, float64(500*time.Millisecond), float64(d), float64(time.Millisecond), "one call refills in 1/rate")
	ok, _ = l.Allow("b", now)
	require.True(t, ok, "another key has its own bucket")
	ok, _ = l.Allow("a", now.Add(500*time.Millisecond))
	require.True(t, ok, "a refused call took nothing")
}

func TestKeysAreBounded(t *testing.T) {
	l := New(1, 1, 10)
	now := time.Unix(1000, 0)
	for i := range 1000 {
		l.Allow(string(rune('a'+i%26))+time.Duration(i).String(), now)
	}
	require.Equal(t, 10, l.Len())
	require.Nil(t, New(0, 1, 0), "rate 0 is no limiter")
}
