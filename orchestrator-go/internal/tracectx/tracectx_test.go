package tracectx_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/tandem/tandem/orchestrator-go/internal/tracectx"
)

func TestOnlyWellFormedTraceparentsAreKept(t *testing.T) {
	t.Parallel()
	good := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	require.True(t, tracectx.Valid(good))
	require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", tracectx.TraceID(good))
	for _, bad := range []string{"", "00-x", strings.Replace(good, "4b", "4B", 1), good + "0",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-" + strings.Repeat("a", 4096) + "-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", "01" + good[2:], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\n"} {
		require.False(t, tracectx.Valid(bad), "%q", bad)
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(tracectx.Header, bad))
		got := tracectx.Incoming(ctx)
		require.True(t, tracectx.Valid(got), "a new trace replaces %q", bad)
		require.NotEqual(t, bad, got)
	}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(tracectx.Header, good))
	require.Equal(t, good, tracectx.Incoming(ctx))
}
