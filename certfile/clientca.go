package certfile

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// crlSkew is how far in the future a CRL's ThisUpdate may lie (the clock of
// the machine that signed it running ahead) before the CRL is refused as
// not valid yet.
const crlSkew = 5 * time.Minute

// ClientCAOptions configures NewClientCAFile.
type ClientCAOptions struct {
	// CAFile holds the CA certificates that client certificates must
	// chain to (PEM, one or more). Required.
	CAFile string
	// CRLFile is a CRL (PEM "X509 CRL") signed by a CA of CAFile; the
	// certificates it lists are refused. "" means no revocation list.
	CRLFile string
	// PollInterval is how often Run reads the files; 0 means
	// DefaultPollInterval (5s). Negative is an error.
	PollInterval time.Duration
	// Logger receives loads and failures; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock the files are validated against; nil means
	// time.Now.
	Now func() time.Time
	// Remedies words the remedies of the failures the source logs, as
	// FileSourceOptions.Remedies does. Default nil: the general words.
	Remedies func(r Remedy, path string) string
}

// ClientCAFile serves the CAs that client certificates must chain to and
// the list of revoked ones, read from a CA file and an optional CRL file,
// and reloads them while it serves, as FileSource does its certificate: it
// polls every PollInterval (Run), reloads at once on Reload, and
// replaces what it serves only by files that pass its checks, keeping the
// last good ones otherwise (and logging why once). ClientCAs satisfies
// transport.ClientCASource.
//
// The checks, at start and on every reload, each a *FileError naming the
// file and the fix: a missing, unreadable, empty or malformed file; a CA
// file that holds a certificate that is not a CA (ErrNotCA), a CA with an
// RSA key under MinRSABits (ErrWeakKey), or a CA that has expired or is not
// valid yet; a CRL file that holds something else
// than one CRL, a CRL no CA of the CA file signed (ErrCRLIssuer), or one
// whose ThisUpdate is more than 5 minutes ahead (ErrNotYetValid). A CRL
// past its NextUpdate is used, with a warning.
//
// All methods are safe for concurrent use.
type ClientCAFile struct {
	o   ClientCAOptions
	log *slog.Logger
	reloader[*clientCAFiles, clientTrust]
}

// clientCAFiles is the content of a client CA file and CRL file.
type clientCAFiles struct {
	caFile, crlFile string
	ca, crl         []byte
}

//lint:ignore U1000 used through the reloader's generic constraint (comparable content)
func (f *clientCAFiles) equal(g *clientCAFiles) bool {
	return g != nil && bytes.Equal(f.ca, g.ca) && bytes.Equal(f.crl, g.crl)
}

// clientTrust is what the files say, parsed. Never modified once made.
type clientTrust struct {
	pool *x509.CertPool
	cas  []*x509.Certificate
	crl  *x509.RevocationList
}

// NewClientCAFile validates the options, loads and checks the files and
// returns a source serving them, or the *FileError of the first file that
// does not pass.
func NewClientCAFile(o ClientCAOptions) (*ClientCAFile, error) {
	if o.CAFile == "" {
		return nil, errors.New("ClientCAOptions needs a CAFile")
	}
	if err := sourceDefaults(&o.PollInterval, &o.Now, &o.Logger); err != nil {
		return nil, err
	}
	s := &ClientCAFile{o: o, log: o.Logger}
	s.reloader = reloader[*clientCAFiles, clientTrust]{
		read:    s.read,
		check:   (*clientCAFiles).check,
		now:     o.Now,
		poll:    o.PollInterval,
		swapped: s.swapped,
		failed:  s.failed,
		idle:    func(time.Time) {},
		retry:   errNotYetValid,
	}
	if _, err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// ClientCAs returns the CAs client certificates must chain to and the CRL
// (nil without one), as loaded last. It does no I/O: one atomic load, for
// every TLS handshake. The values are never modified, and the same pointers
// come back until a reload serves new files.
func (s *ClientCAFile) ClientCAs() (*x509.CertPool, *x509.RevocationList) {
	t := s.cur.Load()
	return t.pool, t.crl
}

// Run polls the files every PollInterval until ctx ends, then returns nil.
// A failed reload is logged, not returned.
func (s *ClientCAFile) Run(ctx context.Context) error { return s.reloader.Run(ctx) }

// Reload reads the files now and serves them if they changed and pass the
// checks. It returns nil when they are unchanged or were swapped in, and
// the check's error (also logged) when they fail; the previous CAs and CRL
// are then still served. It blocks for the file reads.
func (s *ClientCAFile) Reload() error { return s.reload("reload", true) }

func (s *ClientCAFile) read() (*clientCAFiles, error) {
	f := &clientCAFiles{caFile: s.o.CAFile, crlFile: s.o.CRLFile}
	var err error
	if f.ca, err = readFile(f.caFile, roleClientCA); err != nil {
		return nil, err
	}
	if f.crlFile != "" {
		if f.crl, err = readFile(f.crlFile, roleCRL); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (f *clientCAFiles) check(now time.Time) (*clientTrust, error) {
	cas, err := parseCertsPEM(f.caFile, roleClientCA, f.ca)
	if err != nil {
		return nil, err
	}
	t := &clientTrust{pool: x509.NewCertPool(), cas: cas}
	for _, c := range cas {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, &FileError{Path: f.caFile, Role: roleClientCA, Err: ErrNotCA,
				Detail: fmt.Sprintf("%q is not a CA certificate", c.Subject.CommonName),
				Fix:    "give the CA certificate that issues the client certificates (certificates/ca.crt from flower-certs), not a client or server certificate"}
		}
		if err := weakKey(f.caFile, roleClientCA, c.PublicKey); err != nil {
			return nil, err
		}
		if err := checkDates(f.caFile, roleClientCA, c, now); err != nil {
			return nil, err
		}
		t.pool.AddCert(c)
	}
	if f.crlFile == "" {
		return t, nil
	}
	if t.crl, err = parseCRLPEM(f.crlFile, f.crl); err != nil {
		return nil, err
	}
	if err := verifyCRL(f.crlFile, t.crl, cas, f.caFile); err != nil {
		return nil, err
	}
	if t.crl.ThisUpdate.After(now.Add(crlSkew)) {
		return nil, &FileError{Path: f.crlFile, Role: roleCRL, Err: ErrNotYetValid,
			Detail: fmt.Sprintf("the CRL was issued at %s, after the time here, %s", stamp(t.crl.ThisUpdate), stamp(now)),
			Fix:    "check the clock of this machine and of the one that signed it"}
	}
	return t, nil
}

// failed logs a failed reload. The reloader's mu is held.
func (s *ClientCAFile) failed(trigger string, err error) {
	s.log.Error("client CA reload failed; checking client certificates against the previous CAs and CRL",
		"trigger", trigger, "error", worded(err, s.o.Remedies))
}

// swapped logs what is now served. The reloader's mu is held (or s is new).
func (s *ClientCAFile) swapped(_ *clientCAFiles, t *clientTrust, trigger string) {
	names := make([]string, len(t.cas))
	for i, c := range t.cas {
		names[i] = c.Subject.String()
	}
	attrs := []any{"trigger", trigger, "client_ca_file", s.o.CAFile, "client_cas", names}
	if t.crl != nil {
		attrs = append(attrs, "crl_file", s.o.CRLFile, "crl_number", fmt.Sprint(t.crl.Number),
			"revoked", len(t.crl.RevokedCertificateEntries), "crl_this_update", stamp(t.crl.ThisUpdate))
	}
	s.log.Info("checking client certificates", attrs...)
	now := s.o.Now()
	if t.crl != nil && !t.crl.NextUpdate.IsZero() && now.After(t.crl.NextUpdate) {
		s.log.Warn(fmt.Sprintf("CRL file %s is past its next update (%s); it is used as it is: sign a new one with \"flower-certs revoke\"",
			s.o.CRLFile, stamp(t.crl.NextUpdate)))
	}
	for _, c := range t.cas {
		if left := c.NotAfter.Sub(now); left <= ExpiryWarning {
			s.log.Warn(fmt.Sprintf("client CA file %s: CA %q expires on %s (in %d days): no client certificate it issued is accepted after that; make a new CA and issue new client certificates",
				s.o.CAFile, c.Subject.CommonName, stamp(c.NotAfter), int(left.Hours()/24)))
		}
	}
}
