package jobstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"

	"google.golang.org/grpc/metadata"
)

// HeaderTraceparent carries the W3C trace context of a job: from the submit's
// gRPC metadata (or a new trace), in the job message header, to the compute
// call's gRPC metadata. Logs carry its trace id.
const HeaderTraceparent = "traceparent"

// IncomingTraceparent returns the caller's traceparent, or starts a new trace.
func IncomingTraceparent(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(HeaderTraceparent); len(v) > 0 && TraceID(v[0]) != "" {
			return v[0]
		}
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// TraceID extracts the trace id of a traceparent ("" if malformed).
func TraceID(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) != 4 || len(parts[1]) != 32 {
		return ""
	}
	return parts[1]
}
