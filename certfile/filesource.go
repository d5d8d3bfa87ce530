package certfile

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"time"
)

// DefaultPollInterval is how often a FileSource reads its files by default.
const DefaultPollInterval = 5 * time.Second

// FileSourceOptions configures NewFileSource.
type FileSourceOptions struct {
	// CAFile is the CA certificate the served certificate must chain to
	// (PEM, may hold several). "" skips the chain check, for a certificate
	// from a public CA.
	CAFile string
	// CertFile is the PEM certificate to serve, a leaf optionally followed
	// by intermediates; KeyFile its private key. Both are required.
	CertFile, KeyFile string
	// PollInterval is how often Run reads the three files; 0 means
	// DefaultPollInterval (5s). Negative is an error.
	PollInterval time.Duration
	// Logger receives reload successes and failures (never key bytes);
	// nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock certificates are validated against; nil means
	// time.Now.
	Now func() time.Time
	// Remedies, when set, words the remedies that the source's log lines
	// suggest for a file (Remedy values: a new server certificate, a new
	// CA, ...) for the program's users, such as with the command that
	// makes the file; given the remedy and the file's path, it returns
	// the words to log instead of Remedy.String, or "" to keep them.
	// It is called with the source's lock held and must be quick.
	// Default nil: the general words.
	Remedies func(r Remedy, path string) string
	// OnReload, when set, is told of every certificate served (at start
	// and on each reload), of files back to the served certificate after
	// a logged failure, and of every failed reload that is logged or
	// asked for (Reload); see ReloadEvent. It is called with the
	// source's lock held, so it must be quick and must not call the
	// source. Default: nothing is called.
	OnReload func(ReloadEvent)
}

// FileSource serves a certificate and key read from files, and reloads them
// when they change while it serves. It is a transport.CertSource with the
// Runner ability: Run polls the files every PollInterval, and Reload reads
// them at once (a command calls it on SIGHUP; the source handles no signal).
//
// A new pair replaces the served one only when it passes Check: while a
// certificate and key are replaced one after the other, the half-written
// pair does not match and the previous certificate stays. A failure is
// logged once per distinct content of the files, when two polls in a row
// find the same bad content (so a pair replaced one file at a time, or a
// file being written in place, is not reported), or at once on Reload. Once a failure was logged, the next good reload logs that the
// files are good again (also when they are back to the served content).
// A private key file open to other users is warned about (KeyModeWarning)
// whenever a key is loaded. Key bytes are never logged.
//
// All methods are safe for concurrent use.
type FileSource struct {
	o   FileSourceOptions
	log *slog.Logger
	reloader[*files, tls.Certificate]

	expiredLog bool // the served certificate's expiry was logged; guarded by reloader.mu
}

// NewFileSource validates the options, loads the files with the checks of
// Check and returns a source serving them. It fails with Check's *FileError
// when the files do not pass, and logs Warnings (such as an expiry within 30
// days) through the logger.
func NewFileSource(o FileSourceOptions) (*FileSource, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("FileSourceOptions needs both CertFile and KeyFile")
	}
	if err := sourceDefaults(&o.PollInterval, &o.Now, &o.Logger); err != nil {
		return nil, err
	}
	s := &FileSource{o: o, log: o.Logger}
	s.reloader = reloader[*files, tls.Certificate]{
		read:      func() (*files, error) { return readFiles(o.CAFile, o.CertFile, o.KeyFile) },
		check:     (*files).check,
		now:       o.Now,
		poll:      o.PollInterval,
		swapped:   s.swapped,
		failed:    s.failed,
		recovered: s.recovered,
		idle:      s.logExpired,
		retry:     errNotYetValid,
		attempted: s.report,
	}
	if _, err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate returns the certificate being served. It does no I/O and
// never fails: it is one atomic load, suitable for tls.Config.GetCertificate.
// The returned certificate is never modified.
func (s *FileSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cur.Load(), nil
}

// Run polls the files every PollInterval until ctx ends, then returns nil.
// A failed reload is logged, not returned: the previous certificate goes on
// being served.
func (s *FileSource) Run(ctx context.Context) error { return s.reloader.Run(ctx) }

// Reload reads the files now and serves them if they changed and pass
// Check. It returns nil when they are unchanged or were swapped in, and
// Check's error (also logged) when they fail; the previous certificate is
// then still served. It blocks for the file reads.
func (s *FileSource) Reload() error {
	return s.reload("reload", true)
}

// failed logs a failed reload. The reloader's mu is held.
func (s *FileSource) failed(trigger string, err error) {
	s.log.Error("certificate reload failed; serving the previous certificate",
		"trigger", trigger, "error", worded(err, s.o.Remedies), "serving_serial", serialHex(s.cur.Load().Leaf))
}

// recovered logs that the files are good again after a reported failure:
// back to the served content (unchanged), or a new pair about to be
// served. The reloader's mu is held.
func (s *FileSource) recovered(trigger string, unchanged bool) {
	if unchanged {
		s.log.Info("certificate files are good again; serving the same certificate as before the failure",
			"trigger", trigger, "cert_file", s.o.CertFile, "serial", serialHex(s.cur.Load().Leaf))
		return
	}
	s.log.Info("certificate files are good again after the failed reload", "trigger", trigger, "cert_file", s.o.CertFile)
}

// swapped logs the certificate c now served, read as f. The reloader's mu
// is held (or s is new).
func (s *FileSource) swapped(_ *files, c *tls.Certificate, trigger string) {
	s.expiredLog = false
	l := c.Leaf
	sans := append([]string{}, l.DNSNames...)
	for _, ip := range l.IPAddresses {
		sans = append(sans, ip.String())
	}
	for _, u := range l.URIs {
		sans = append(sans, u.String())
	}
	s.log.Info("serving certificate", "trigger", trigger, "cert_file", s.o.CertFile,
		"subject", l.Subject.String(), "sans", sans, "serial", serialHex(l),
		"not_after", l.NotAfter.UTC().Format(time.RFC3339), "chain_len", len(c.Certificate))
	for _, w := range warnings(s.o.CertFile, c, s.o.Now(), s.o.Remedies) {
		s.log.Warn(w)
	}
	if w := KeyModeWarning(s.o.KeyFile); w != "" {
		s.log.Warn(w, "key_file", s.o.KeyFile)
	}
}

// logExpired logs once that the served certificate has expired while no
// valid replacement was found. The reloader's mu is held.
func (s *FileSource) logExpired(now time.Time) {
	l := s.cur.Load().Leaf
	if s.expiredLog || !now.After(l.NotAfter) {
		return
	}
	s.expiredLog = true
	r := renewal(s.o.CertFile, l)
	s.log.Error("the served certificate has expired and no valid replacement is on disk: "+wordRemedies(r.String(), s.o.CertFile, s.o.Remedies, r),
		"cert_file", s.o.CertFile, "serial", serialHex(l), "not_after", l.NotAfter.UTC().Format(time.RFC3339))
}
