package queue

import (
	"context"
	"errors"
	"sync"
)

// Running maps the ids of jobs running in this orchestrator to their cancel
// functions, so a cancel notice (from any orchestrator) stops the compute call.
type Running struct {
	mu sync.Mutex
	m  map[string]context.CancelCauseFunc
}

// NewRunning returns an empty registry.
func NewRunning() *Running { return &Running{m: map[string]context.CancelCauseFunc{}} }

func (r *Running) add(id string, c context.CancelCauseFunc) {
	r.mu.Lock()
	r.m[id] = c
	r.mu.Unlock()
}

func (r *Running) remove(id string) {
	r.mu.Lock()
	delete(r.m, id)
	r.mu.Unlock()
}

// ErrJobCancelled is the cancel cause of a job cancelled by CancelJob.
var ErrJobCancelled = errors.New("job cancelled")

// Cancel cancels the job's compute call if it runs here.
func (r *Running) Cancel(id string) bool {
	r.mu.Lock()
	c, ok := r.m[id]
	r.mu.Unlock()
	if ok {
		c(ErrJobCancelled)
	}
	return ok
}
