package certfile

import (
	"crypto/tls"
	"time"
)

// ReloadEvent is what a FileSource tells FileSourceOptions.OnReload: a
// certificate it now serves, or a reload that failed (the previous
// certificate is still served).
type ReloadEvent struct {
	// Trigger is what caused the attempt: "start", "poll" or "reload" (a
	// call of Reload).
	Trigger string
	// Time is when it happened, on the source's clock.
	Time time.Time
	// Err is nil when Certificate was swapped in (or, after a reported
	// failure, the files are back to the certificate served), else why
	// the files were refused (a *FileError for a file that fails Check). It never holds
	// key bytes.
	Err error
	// Certificate is the certificate served after the event (the new one
	// on success, the previous one on failure), Leaf set. It must not be
	// modified.
	Certificate *tls.Certificate
}

// report tells OnReload of an outcome. The reloader's mu is held (or s is
// new).
func (s *FileSource) report(trigger string, err error) {
	if s.o.OnReload == nil {
		return
	}
	s.o.OnReload(ReloadEvent{Trigger: trigger, Time: s.o.Now(), Err: err, Certificate: s.cur.Load()})
}
