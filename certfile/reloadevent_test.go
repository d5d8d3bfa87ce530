package certfile

import (
	"errors"
	"log/slog"
	"sync"
	"testing"

	"github.com/sepal-fl/sepal/selfsigned"
)

// TestFileSourceOnReload: OnReload hears the start, a refused reload (with
// the certificate still served) and a good one, in order.
func TestFileSourceOnReload(t *testing.T) {
	fx, first := newFixture(t)
	var mu sync.Mutex
	var events []ReloadEvent
	s, err := NewFileSource(FileSourceOptions{CAFile: fx.caFile, CertFile: fx.certFile, KeyFile: fx.keyFile,
		Logger: slog.New(slog.NewTextHandler(fx.log, nil)),
		OnReload: func(e ReloadEvent) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	next := fx.issue(t)
	fx.writePair(t, &selfsigned.Pair{CertPEM: next.CertPEM, KeyPEM: first.KeyPEM})
	if err := s.Reload(); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Reload of a mismatched pair: %v", err)
	}
	if err := s.Reload(); !errors.Is(err, ErrKeyMismatch) { // asked again: reported again
		t.Fatalf("second Reload: %v", err)
	}
	fx.writePair(t, next)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil { // unchanged: no event
		t.Fatal(err)
	}
	// A bad file, then the good one restored: good again, same certificate.
	fx.writePair(t, &selfsigned.Pair{CertPEM: next.CertPEM, KeyPEM: first.KeyPEM})
	if err := s.Reload(); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Reload of a mismatched pair: %v", err)
	}
	fx.writePair(t, next)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []struct {
		trigger string
		failed  bool
		serial  string
	}{
		{"start", false, first.Leaf.SerialNumber.String()},
		{"reload", true, first.Leaf.SerialNumber.String()},
		{"reload", true, first.Leaf.SerialNumber.String()},
		{"reload", false, next.Leaf.SerialNumber.String()},
		{"reload", true, next.Leaf.SerialNumber.String()},
		{"reload", false, next.Leaf.SerialNumber.String()},
	}
	if len(events) != len(want) {
		t.Fatalf("%d events, want %d: %+v", len(events), len(want), events)
	}
	for i, w := range want {
		e := events[i]
		if e.Trigger != w.trigger || (e.Err != nil) != w.failed || e.Certificate.Leaf.SerialNumber.String() != w.serial || e.Time.IsZero() {
			t.Errorf("event %d: trigger %q err %v serial %v time %v; want %q failed=%v serial %s",
				i, e.Trigger, e.Err, e.Certificate.Leaf.SerialNumber, e.Time, w.trigger, w.failed, w.serial)
		}
	}
}
