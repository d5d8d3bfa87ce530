package certfile

import (
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"
)

// With NoSIGHUP, Run leaves SIGHUP to the caller (flower-superlink reloads
// through its own handler): a SIGHUP reloads nothing, Reload does.
func TestFileSourceNoSIGHUP(t *testing.T) {
	fx, first := newFixture(t)
	s, err := NewFileSource(FileSourceOptions{CAFile: fx.caFile, CertFile: fx.certFile, KeyFile: fx.keyFile,
		PollInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(fx.log, nil)), NoSIGHUP: true})
	if err != nil {
		t.Fatal(err)
	}
	// The caller's handler, which keeps SIGHUP from ending this test.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	run(t, s)
	second := fx.issue(t)
	fx.writePair(t, second)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	<-hup
	time.Sleep(100 * time.Millisecond)
	if c, _ := s.GetCertificate(nil); c.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatal("a SIGHUP reloaded a source with NoSIGHUP")
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.GetCertificate(nil); c.Leaf.SerialNumber.Cmp(second.Leaf.SerialNumber) != 0 {
		t.Fatal("Reload did not serve the new certificate")
	}
}
