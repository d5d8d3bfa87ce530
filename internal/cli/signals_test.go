package cli

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the log's concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestHangupLogs(t *testing.T) {
	var logs syncBuffer
	h := &Hangup{log: slog.New(slog.NewTextHandler(&logs, nil))}
	h.Handle()
	h.Nothing("plaintext (--insecure) has no certificate")
	h.Handle()
	calls := 0
	h.Add("certificate files", func() error { calls++; return nil })
	h.Add("revocation list", func() error { return errors.New("crl.pem: no PEM") })
	h.Handle()
	for _, want := range []string{
		`msg="SIGHUP: nothing to reload: this command reloads nothing; SIGINT or SIGTERM stop it"`,
		`msg="SIGHUP: nothing to reload: plaintext (--insecure) has no certificate; SIGINT or SIGTERM stop it"`,
		`level=INFO msg="SIGHUP: reloaded" reload="certificate files"`,
		`level=WARN msg="SIGHUP: reload failed, what was loaded before stays in use" reload="revocation list" error="crl.pem: no PEM"`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, logs.String())
		}
	}
	if calls != 1 {
		t.Errorf("reload called %d times", calls)
	}
}

// From Signals on, SIGHUP calls the Hangup instead of ending the process
// (this test binary); SIGTERM still ends the context.
func TestSignalsHangup(t *testing.T) {
	var logs syncBuffer
	ctx, hup, stop := Signals(context.Background(), slog.New(slog.NewTextHandler(&logs, nil)))
	defer stop()
	reloaded := make(chan struct{}, 4)
	hup.Add("test", func() error { reloaded <- struct{}{}; return nil })
	for range 3 {
		if err := syscall.Kill(syscall.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		select {
		case <-reloaded:
		case <-time.After(5 * time.Second):
			t.Fatal("SIGHUP did not reload")
		}
	}
	if ctx.Err() != nil {
		t.Fatal("SIGHUP ended the context")
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("SIGTERM did not end the context")
	}
	if n := strings.Count(logs.String(), `msg="SIGHUP: reloaded" reload=test`); n != 3 {
		t.Errorf("%d reload lines:\n%s", n, logs.String())
	}
}
