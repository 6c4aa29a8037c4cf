// Package provider holds what every op provider (the compute service, op
// workers) shares with the job executor: the mark of an outage.
package provider

import "errors"

// ErrUnreachable marks a step call that never reached a provider able to run
// it: a transport failure, every compute breaker open, a hung compute, no
// live worker for the op. Jobs failing this way are handed back with their
// attempt untouched: an outage delays jobs, it never burns their attempts.
var ErrUnreachable = errors.New("provider unreachable")

// IsUnreachable reports whether err is (or wraps) ErrUnreachable.
func IsUnreachable(err error) bool { return errors.Is(err, ErrUnreachable) }
