// Package tlsconf loads TLS certificates, keys and CA bundles from files and
// re-reads them when the files change, so a certificate is rotated by
// replacing its files, without a restart. Servers pick the current
// certificate and client-CA pool at each handshake (GetConfigForClient);
// clients build each handshake from the current files (ClientCredentials).
// A replacement that does not load (a bad PEM, a key that does not match its
// certificate) is logged once and the files loaded before stay in use.
package tlsconf

import (
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// PollInterval is how often watched files are checked for a change (their
// modification time and size).
const PollInterval = time.Second

type stamp struct {
	mod  time.Time
	size int64
	ok   bool
}

func stamps(files []string) []stamp {
	out := make([]stamp, len(files))
	for i, f := range files {
		if st, err := os.Stat(f); err == nil {
			out[i] = stamp{mod: st.ModTime(), size: st.Size(), ok: true}
		}
	}
	return out
}

// Watcher re-runs a load function when one of its files changes.
type Watcher struct {
	files []string
	what  string
	load  func() error
	log   *slog.Logger

	mu      sync.Mutex
	loaded  []stamp // the stamps of the last successful load
	failed  []stamp // the stamps of the last failed attempt
	logged  bool    // the failure at failed was logged
	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup
}

// Watch calls load once (its error is returned: a file that does not load at
// start is a configuration error) and then again whenever one of files
// changes. A later failure is logged once per change (what names the files'
// purpose, e.g. "--tls-cert/--tls-key"), and whatever load stored before
// stays in use. Close stops the polling.
func Watch(what string, files []string, log *slog.Logger, load func() error) (*Watcher, error) {
	if log == nil {
		log = slog.Default()
	}
	w := &Watcher{files: slices.Clone(files), what: what, load: load, log: log, stop: make(chan struct{})}
	st := stamps(w.files)
	if err := load(); err != nil {
		return nil, err
	}
	w.loaded = st
	w.wg.Add(1)
	go w.poll()
	return w, nil
}

func (w *Watcher) poll() {
	defer w.wg.Done()
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.Check()
		}
	}
}

// Check reloads now if a file changed since the last load (the poller calls
// it every PollInterval).
func (w *Watcher) Check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := stamps(w.files)
	if slices.Equal(st, w.loaded) {
		return
	}
	err := w.load()
	if err == nil {
		w.loaded, w.failed, w.logged = st, nil, false
		w.log.Info("reloaded after a file change", "files", w.what)
		return
	}
	// Several files replaced one after the other (a certificate, then its
	// key) can be caught half-way: an error is logged only when the files
	// stayed the same for one more poll.
	if slices.Equal(st, w.failed) {
		if !w.logged {
			w.logged = true
			w.log.Error("reloading failed; the files loaded before stay in use", "files", w.what, "error", err)
		}
		return
	}
	w.failed, w.logged = st, false
}

// Close stops watching.
func (w *Watcher) Close() {
	if w == nil {
		return
	}
	w.stopped.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// ErrNoFiles is returned when a certificate is given without its key or the
// other way round.
var ErrNoFiles = errors.New("certificate and key must be given together")
