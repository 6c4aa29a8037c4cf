package telemetry_test

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tandem/tandem/orchestrator-go/internal/telemetry"
)

// Setup with export on must succeed (a schema clash between the SDK's
// default resource and ours once made the orchestrator exit at start-up
// whenever OTEL_EXPORTER_OTLP_ENDPOINT was set). The exporter connects
// lazily, so no receiver is needed here.
func TestSetupWithExportOn(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
	require.True(t, telemetry.Enabled())
	stop, err := telemetry.Setup(context.Background(), "tandem-orchestrator", "test", slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing to flush to: do not wait for the missing receiver
	_ = stop(ctx)
}
