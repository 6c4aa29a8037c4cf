// Package ident holds the limits and alphabets of every identifier a caller
// sends the orchestrator (job ids, queue names, op names, param names and
// values, idempotency keys, labels), and checks them at the API edge, before
// any of them goes near a NATS subject, a KV key or a header.
//
// NATS closes a connection whose protocol line passes max_control_line
// (4 KiB by default), treats `.` as a token separator and `*`/`>` as
// wildcards, and accepts KV keys of [-/_=.a-zA-Z0-9]+ only. An identifier
// that reaches NATS unchecked can therefore take the whole connection down or
// act on things nobody named; each check here answers INVALID_ARGUMENT /
// REQUEST_INVALID naming the field and the limit instead.
//
// The limits are documented in docs/ARCHITECTURE.md ("Identifiers") and on
// the fields in proto/tandem/v1; keep the three in step.
package ident

import (
	"fmt"
	"strconv"
	"unicode/utf8"

	tandemv1 "github.com/tandem/tandem/orchestrator-go/gen/tandem/v1"
	"github.com/tandem/tandem/orchestrator-go/internal/apierr"
)

// Limits, in bytes unless said otherwise.
const (
	// MaxJobID bounds a job id. Ids the orchestrator makes are 26-character
	// ULIDs; the alphabet is one NATS subject token and one KV key.
	MaxJobID = 64
	// MaxQueue bounds a queue name (also checked in the queue config).
	MaxQueue = 64
	// MaxOp bounds an op name (dot-separated tokens such as "hash.sha256").
	MaxOp = 128
	// MaxParamName bounds a param name.
	MaxParamName = 64
	// MaxParamValue bounds a param value (any UTF-8 without control
	// characters); an op's own ParamSpec may allow less.
	MaxParamValue = 4096
	// MaxParams bounds the params of one step.
	MaxParams = 64
	// MaxIdempotencyKey bounds an idempotency key (any UTF-8 without control
	// characters: it is hashed before it reaches a KV key).
	MaxIdempotencyKey = 256
	// MaxLabels bounds the labels of one job.
	MaxLabels = 64
	// MaxLabelKey and MaxLabelValue bound one label.
	MaxLabelKey   = 64
	MaxLabelValue = 256
	// MaxIDsPerCall bounds the job ids of one call (watch, retry, purge).
	MaxIDsPerCall = 1000
)

// Alphabets, as documented.
const (
	// TokenAlphabet is the alphabet of job ids and queue names: one NATS
	// subject token, one KV key segment.
	TokenAlphabet = "A-Z a-z 0-9 _ -"
	// NameAlphabet is the alphabet of op names, param names and label keys.
	NameAlphabet = "A-Z a-z 0-9 _ - ."
	// TextAlphabet is the alphabet of param values, label values and
	// idempotency keys: valid UTF-8 without control characters.
	TextAlphabet = "UTF-8 without control characters"
)

func isTokenByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func isNameByte(c byte) bool { return isTokenByte(c) || c == '.' }

// bad builds the error for field: it names the field, the limit and what was
// wrong, and quotes at most a short prefix of the value.
func bad(field, what string, limit int, v string) *apierr.Error {
	return apierr.New(tandemv1.ErrorReason_REQUEST_INVALID,
		fmt.Sprintf("%s: %s (got %s)", field, what, apierr.Quote(v)),
		apierr.KeyField, field, apierr.KeyLimit, strconv.Itoa(limit), apierr.KeyActual, strconv.Itoa(len(v)))
}

func checkBytes(field, v string, maxLen int, alphabet string, ok func(byte) bool) error {
	if v == "" {
		return bad(field, fmt.Sprintf("must be 1 to %d characters of %s, is empty", maxLen, alphabet), maxLen, v)
	}
	if len(v) > maxLen {
		return bad(field, fmt.Sprintf("is %d bytes, longer than %d", len(v), maxLen), maxLen, v)
	}
	for i := 0; i < len(v); i++ {
		if !ok(v[i]) {
			return bad(field, fmt.Sprintf("character %d is not one of %s", i, alphabet), maxLen, v)
		}
	}
	return nil
}

// JobID checks a job id: 1 to MaxJobID characters of TokenAlphabet.
func JobID(field, v string) error { return checkBytes(field, v, MaxJobID, TokenAlphabet, isTokenByte) }

// Queue checks a queue name: 1 to MaxQueue characters of TokenAlphabet. The
// empty name (the default queue) is the caller's to handle before.
func Queue(field, v string) error { return checkBytes(field, v, MaxQueue, TokenAlphabet, isTokenByte) }

// Op checks an op name: 1 to MaxOp characters of NameAlphabet, not starting
// or ending with a dot and without empty tokens.
func Op(field, v string) error {
	if err := checkBytes(field, v, MaxOp, NameAlphabet, isNameByte); err != nil {
		return err
	}
	return dots(field, v, MaxOp)
}

// ParamName checks a param name: 1 to MaxParamName characters of NameAlphabet.
func ParamName(field, v string) error {
	return checkBytes(field, v, MaxParamName, NameAlphabet, isNameByte)
}

// LabelKey checks a label key: 1 to MaxLabelKey characters of NameAlphabet.
func LabelKey(field, v string) error {
	return checkBytes(field, v, MaxLabelKey, NameAlphabet, isNameByte)
}

func dots(field, v string, limit int) error {
	for i := 0; i < len(v); i++ {
		if v[i] == '.' && (i == 0 || i == len(v)-1 || v[i-1] == '.') {
			return bad(field, "has an empty dot-separated token", limit, v)
		}
	}
	return nil
}

// Text checks free text (param values, label values, idempotency keys): at
// most maxLen bytes of valid UTF-8 without control characters; empty allowed.
func Text(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return bad(field, fmt.Sprintf("is %d bytes, longer than %d", len(v), maxLen), maxLen, v)
	}
	if !utf8.ValidString(v) {
		return bad(field, "is not valid UTF-8", maxLen, v)
	}
	for i, r := range v {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return bad(field, fmt.Sprintf("has a control character at byte %d", i), maxLen, v)
		}
	}
	return nil
}

// JobIDs checks the ids of one call: at most MaxIDsPerCall, each a JobID.
func JobIDs(field string, ids []string) error {
	if len(ids) > MaxIDsPerCall {
		return apierr.New(tandemv1.ErrorReason_REQUEST_INVALID,
			fmt.Sprintf("%s: %d ids, more than %d in one call", field, len(ids), MaxIDsPerCall),
			apierr.KeyField, field, apierr.KeyLimit, strconv.Itoa(MaxIDsPerCall), apierr.KeyActual, strconv.Itoa(len(ids)))
	}
	for i, id := range ids {
		if err := JobID(fmt.Sprintf("%s[%d]", field, i), id); err != nil {
			return err
		}
	}
	return nil
}

// Steps checks the op and param identifiers of a pipeline (not their
// meaning: internal/compute validates ops and params against ListOps).
func Steps(steps []*tandemv1.Step) error {
	for i, s := range steps {
		f := fmt.Sprintf("steps[%d]", i)
		if err := Op(f+".op", s.GetOp()); err != nil {
			return err
		}
		if len(s.GetParams()) > MaxParams {
			return apierr.New(tandemv1.ErrorReason_REQUEST_INVALID,
				fmt.Sprintf("%s.params: %d params, more than %d", f, len(s.GetParams()), MaxParams),
				apierr.KeyField, f+".params", apierr.KeyStep, strconv.Itoa(i), apierr.KeyLimit, strconv.Itoa(MaxParams))
		}
		for k, v := range s.GetParams() {
			if err := ParamName(f+".params", k); err != nil {
				return err
			}
			if err := Text(f+".params["+k+"]", v, MaxParamValue); err != nil {
				return err
			}
		}
	}
	return nil
}

// Labels checks a job's labels.
func Labels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return apierr.New(tandemv1.ErrorReason_REQUEST_INVALID,
			fmt.Sprintf("labels: %d labels, more than %d", len(labels), MaxLabels),
			apierr.KeyField, "labels", apierr.KeyLimit, strconv.Itoa(MaxLabels), apierr.KeyActual, strconv.Itoa(len(labels)))
	}
	for k, v := range labels {
		if err := LabelKey("labels", k); err != nil {
			return err
		}
		if err := Text("labels["+k+"]", v, MaxLabelValue); err != nil {
			return err
		}
	}
	return nil
}
