package certfile

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/selfsigned"
)

// words says each remedy as a program would, with the file.
func words(r Remedy, path string) string {
	if r == RemedyRenewElsewhere {
		return "" // keep the general words
	}
	return "<" + r.String() + " for " + path + ">"
}

// TestFileErrorWorded: Worded says the remedy of a fix, and the completion
// of an interrupted write, in the caller's words, and keeps the rest.
func TestFileErrorWorded(t *testing.T) {
	e := &FileError{Path: "/c/server.key", Role: roleKey, Err: ErrKeyMismatch, Detail: "no match",
		Fix: "give the right key, or " + RemedyIssueServer.String(), Remedy: RemedyIssueServer}
	want := "key file /c/server.key: no match: give the right key, or <issue a new server certificate from the same CA for /c/server.key>"
	if got := e.Worded(words).Error(); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if e.Fix != "give the right key, or "+RemedyIssueServer.String() {
		t.Errorf("Worded changed e: %q", e.Fix)
	}
	pending := *e
	pending.Fix = "a write was interrupted: " + RemedyCompleteWrite.String() + "; or " + e.Fix
	pending.Interrupted = true
	if got := pending.Worded(words).Fix; got != "a write was interrupted: <complete it (RecoverSet) for /c/server.key>; or give the right key, or <issue a new server certificate from the same CA for /c/server.key>" {
		t.Errorf("interrupted: %q", got)
	}
	kept := &FileError{Fix: RemedyRenewElsewhere.String(), Remedy: RemedyRenewElsewhere}
	if got := kept.Worded(words).Fix; got != RemedyRenewElsewhere.String() {
		t.Errorf("a remedy the caller keeps: %q", got)
	}
	for r := RemedyNone + 1; r <= RemedyCompleteWrite; r++ {
		if r.String() == "" || strings.Contains(r.String(), "--") {
			t.Errorf("Remedy %d says %q", r, r.String())
		}
	}
}

// TestFileSourceRemedies: the log lines of a FileSource say remedies in
// the words of FileSourceOptions.Remedies: a failed reload, and a
// certificate that expires soon.
func TestFileSourceRemedies(t *testing.T) {
	fx, _ := newFixture(t)
	soon, err := fx.ca.IssueServer(selfsigned.ServerOptions{NotAfter: time.Now().Add(5 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	fx.writePair(t, soon)
	s, err := NewFileSource(FileSourceOptions{CAFile: fx.caFile, CertFile: fx.certFile, KeyFile: fx.keyFile,
		PollInterval: time.Hour, Logger: slog.New(slog.NewTextHandler(fx.log, nil)), Remedies: words})
	if err != nil {
		t.Fatal(err)
	}
	other := fx.issue(t)
	if err := WriteFileAtomic(fx.keyFile, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil || strings.Contains(err.Error(), "<") {
		t.Errorf("Reload = %v, want the error in the general words", err)
	}
	log := fx.log.String()
	for _, w := range []string{
		"expires on", "<issue a new server certificate from the same CA for " + fx.certFile + ">",
		"certificate reload failed", "or <issue a new server certificate from the same CA for " + fx.keyFile + ">",
	} {
		if !strings.Contains(log, w) {
			t.Errorf("the log lacks %q:\n%s", w, log)
		}
	}
}
