package apierr

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
)

// The error catalogue is proto/tandem/v1/errors.proto: every ErrorReason value
// carries a (tandem.v1.reason) option with its gRPC code and retryability.
// It is read once, here, from the generated descriptor; nothing else in the
// orchestrator names a code for a reason.

type catalogueEntry struct {
	spec *tandemv1.ReasonSpec
	code codes.Code
	any  bool // no fixed code: the code decides
}

var catalogue = loadCatalogue()

func loadCatalogue() map[tandemv1.ErrorReason]catalogueEntry {
	out := map[tandemv1.ErrorReason]catalogueEntry{}
	values := tandemv1.ErrorReason(0).Descriptor().Values()
	for i := range values.Len() {
		v := values.Get(i)
		opts, ok := v.Options().(*descriptorpb.EnumValueOptions)
		if !ok || opts == nil || !proto.HasExtension(opts, tandemv1.E_Reason) {
			continue
		}
		spec := proto.GetExtension(opts, tandemv1.E_Reason).(*tandemv1.ReasonSpec)
		e := catalogueEntry{spec: spec, any: spec.GetCode() == ""}
		if !e.any {
			if err := e.code.UnmarshalJSON([]byte(strconv.Quote(spec.GetCode()))); err != nil {
				panic(fmt.Sprintf("errors.proto: reason %s has unknown code %q", v.Name(), spec.GetCode()))
			}
		}
		out[tandemv1.ErrorReason(v.Number())] = e
	}
	return out
}

// Spec is the catalogue entry of a reason (false for one without, i.e.
// ERROR_REASON_UNSPECIFIED).
func Spec(r tandemv1.ErrorReason) (*tandemv1.ReasonSpec, bool) {
	e, ok := catalogue[r]
	return e.spec, ok
}

// CodeOf is the gRPC code a reason travels with. A reason with no fixed code
// (INJECTED_FAULT, raised only by compute) or none in the catalogue gets
// UNKNOWN; the orchestrator does not raise those itself.
func CodeOf(r tandemv1.ErrorReason) codes.Code {
	if e, ok := catalogue[r]; ok && !e.any {
		return e.code
	}
	return codes.Unknown
}

// Caps on what an error carries back. Messages quote caller values through
// Quote; these bound everything else (a remote service's message, a
// metadata value holding a caller's string) so an error can never carry a
// caller's megabytes into a status (gRPC clients refuse metadata over 16 KiB
// by default).
const (
	// MaxQuote is how much of one caller value an error quotes.
	MaxQuote = 64
	// MaxMessage bounds an error message.
	MaxMessage = 1024
	// MaxMetadataValue bounds one ErrorInfo metadata value.
	MaxMetadataValue = 128
)

// cut returns s cut to at most n bytes on a UTF-8 boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Quote quotes a caller-supplied value for an error message: in full when it
// is at most MaxQuote bytes, else its first MaxQuote bytes and its length.
func Quote(v string) string {
	if len(v) <= MaxQuote {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("%s…(%d bytes)", strconv.Quote(cut(v, MaxQuote)), len(v))
}

func boundMessage(m string) string {
	if len(m) <= MaxMessage {
		return m
	}
	return fmt.Sprintf("%s…(message cut, %d bytes)", cut(m, MaxMessage), len(m))
}

func boundMetadata(md map[string]string) map[string]string {
	over := false
	for k, v := range md {
		if len(v) > MaxMetadataValue || len(k) > MaxMetadataValue {
			over = true
			break
		}
	}
	if !over {
		return md
	}
	out := make(map[string]string, len(md))
	for k, v := range md {
		if len(v) > MaxMetadataValue {
			v = cut(v, MaxMetadataValue) + "…"
		}
		out[cut(k, MaxMetadataValue)] = v
	}
	return out
}
