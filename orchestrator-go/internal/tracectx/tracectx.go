// Package tracectx carries the W3C trace context of a job: from the submit's
// gRPC metadata (or a new trace), in the job message's NATS header, to the
// compute call's gRPC metadata. Logs carry its trace id.
//
// A traceparent is caller input that ends up in a NATS header, so only a
// well-formed one (version 00, 55 characters of lowercase hex and dashes) is
// kept; anything else starts a new trace.
package tracectx

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"google.golang.org/grpc/metadata"
)

// Header is the gRPC metadata key and NATS header of the trace context.
const Header = "traceparent"

// Incoming returns the caller's traceparent when well-formed, or starts a new trace.
func Incoming(ctx context.Context) string {
	if v := fromMetadata(ctx); v != "" {
		return v
	}
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// fromMetadata returns the caller's traceparent when well-formed, else "".
func fromMetadata(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(Header); len(v) > 0 && Valid(v[0]) {
			return v[0]
		}
	}
	return ""
}

// Valid reports whether tp is a version-00 traceparent:
// 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, ids not all zero.
func Valid(tp string) bool {
	if len(tp) != 55 || tp[:3] != "00-" || tp[35] != '-' || tp[52] != '-' {
		return false
	}
	for i, c := range []byte(tp) {
		if i == 2 || i == 35 || i == 52 {
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return tp[3:35] != "00000000000000000000000000000000" && tp[36:52] != "0000000000000000"
}

// TraceID extracts the trace id of a traceparent ("" if malformed).
func TraceID(tp string) string {
	if !Valid(tp) {
		return ""
	}
	return tp[3:35]
}
