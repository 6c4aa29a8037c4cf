// Package ratelimit bounds the calls per second of each caller (a token, or
// a peer address): one token bucket (golang.org/x/time/rate) per key, the
// keys kept in a bounded LRU so a flood of distinct callers cannot grow it
// without end. A bucket idle for burst/rate seconds is full again, so dropping
// the least recently used one loses nothing unless more than MaxKeys callers
// are active at once.
package ratelimit

import (
	"container/list"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// DefaultMaxKeys is how many callers' buckets are kept.
const DefaultMaxKeys = 100_000

// Limiter is the per-caller limiter.
type Limiter struct {
	limit   rate.Limit
	burst   int
	maxKeys int

	mu    sync.Mutex
	lru   *list.List // of *entry, most recent first
	byKey map[string]*list.Element
}

type entry struct {
	key string
	lim *rate.Limiter
}

// New returns a limiter of perSecond calls with burst per key; nil when
// perSecond is 0 (no limit).
func New(perSecond float64, burst, maxKeys int) *Limiter {
	if perSecond <= 0 {
		return nil
	}
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	return &Limiter{limit: rate.Limit(perSecond), burst: max(1, burst), maxKeys: maxKeys, lru: list.New(), byKey: map[string]*list.Element{}}
}

// Limit is the configured calls per second.
func (l *Limiter) Limit() float64 { return float64(l.limit) }

// Allow takes one call from key's bucket. When the bucket is empty it takes
// nothing and returns false with how long until a call would be allowed.
func (l *Limiter) Allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	var lim *rate.Limiter
	if el, ok := l.byKey[key]; ok {
		l.lru.MoveToFront(el)
		lim = el.Value.(*entry).lim
	} else {
		lim = rate.NewLimiter(l.limit, l.burst)
		l.byKey[key] = l.lru.PushFront(&entry{key: key, lim: lim})
		for l.lru.Len() > l.maxKeys {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.byKey, old.Value.(*entry).key)
		}
	}
	l.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// Len is the number of keys held.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
