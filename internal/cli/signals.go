package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// Hangup is what a long-running command does on SIGHUP: it reloads what
// was added to it, in order, and logs each reload, or logs that there is
// nothing to reload and why. SIGHUP never ends the command. Its methods
// are safe for concurrent use, also while signals arrive.
type Hangup struct {
	log     *slog.Logger
	ctx     context.Context
	mu      sync.Mutex
	reloads []reload
	nothing string
}

type reload struct {
	what string
	fn   func() error
}

// Add makes SIGHUP call fn, which reloads what ("certificate files"). fn
// runs on the signal goroutine, one SIGHUP at a time: it must not block
// long, and on failure it must keep serving what it had and return why.
func (h *Hangup) Add(what string, fn func() error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reloads = append(h.reloads, reload{what, fn})
}

// Nothing sets why nothing reloads in this mode, such as "plaintext
// (--insecure) has no certificate": SIGHUP logs it when no reload was
// added.
func (h *Hangup) Nothing(why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nothing = why
}

// Handle does what one SIGHUP does: each reload in order, logged, or one
// line saying that there is nothing to reload. It is what the signal
// calls; tests call it directly.
func (h *Hangup) Handle() {
	h.mu.Lock()
	reloads, nothing := append([]reload(nil), h.reloads...), h.nothing
	h.mu.Unlock()
	if h.ctx != nil && h.ctx.Err() != nil {
		h.log.Info("SIGHUP: stopping, nothing reloaded")
		return
	}
	if len(reloads) == 0 {
		if nothing == "" {
			nothing = "this command reloads nothing"
		}
		h.log.Info("SIGHUP: nothing to reload: " + nothing + "; SIGINT or SIGTERM stop it")
		return
	}
	for _, r := range reloads {
		if err := r.fn(); err != nil {
			h.log.Warn("SIGHUP: reload failed, what was loaded before stays in use", "reload", r.what, "error", err)
			continue
		}
		h.log.Info("SIGHUP: reloaded", "reload", r.what)
	}
}

// Signals returns a context that ends on SIGINT or SIGTERM, as
// SignalContext, and the Hangup that handles SIGHUP: from the call until
// stop is called, SIGHUP no longer ends the process (its default) but
// calls Hangup.Handle, which logs to log. Long-running commands call it
// first thing, before anything a SIGHUP could interrupt.
func Signals(parent context.Context, log *slog.Logger) (ctx context.Context, hup *Hangup, stop context.CancelFunc) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	ctx, cancel := SignalContext(parent)
	hup = &Hangup{log: log, ctx: ctx}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-ch:
				hup.Handle()
			case <-done:
				return
			}
		}
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			close(done)
			wg.Wait()
			signal.Stop(ch)
		})
	}
	return ctx, hup, stop
}

// IgnoreHangup makes SIGHUP do nothing until Signals handles it: long-
// running commands call it first in main, so that a SIGHUP during
// start-up (a systemd reload right after the start) does not end them.
func IgnoreHangup() { signal.Ignore(syscall.SIGHUP) }
