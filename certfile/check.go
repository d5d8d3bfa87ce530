package certfile

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// Sentinel errors of Check, LoadCA and FileSource. The errors these return
// are *FileError values that match one of them with errors.Is.
var (
	ErrMissing      = errors.New("file not found")
	ErrUnreadable   = errors.New("file cannot be read")
	ErrEmpty        = errors.New("file is empty")
	ErrNotPEM       = errors.New("file holds no PEM data")
	ErrWrongPEMType = errors.New("file holds the wrong kind of PEM block")
	ErrEncrypted    = errors.New("key is encrypted with a passphrase")
	ErrWeakKey      = errors.New("key is too weak")
	ErrMalformed    = errors.New("PEM block does not parse")
	ErrNotCA        = errors.New("certificate is not a CA")
	ErrKeyMismatch  = errors.New("key does not match the certificate")
	ErrExpired      = errors.New("certificate has expired")
	ErrNotYetValid  = errors.New("certificate is not valid yet")
	ErrUntrusted    = errors.New("certificate is not signed by the given CA")
	ErrWrongUsage   = errors.New("certificate is not for TLS servers")
	ErrNoSAN        = errors.New("certificate has no subject alternative names")
)

// FileError is a problem with one file of a CA/certificate/key triple. Its
// message names the file, what is wrong and how to fix it; errors.Is matches
// its sentinel (Err) and any underlying cause (Cause, such as fs.ErrNotExist).
// The fix names no program's command line: where it is to make a file anew
// (Remedy), a program words that with its own command (Worded).
type FileError struct {
	Path   string // the file at fault
	Role   string // "CA certificate", "certificate", "key" or "CA key"
	Err    error  // one of the sentinels above
	Detail string // what is wrong, with dates and names; never key bytes
	Fix    string // what to do about it
	Cause  error  // the underlying error, if any
	// Remedy is the file to make anew that Fix names, in the words of
	// Remedy.String; RemedyNone when Fix names none.
	Remedy Remedy
	// Interrupted reports that a WriteSet of the folder of Path was
	// interrupted, which explains files that do not match: Fix starts by
	// saying so, and completing it (RemedyCompleteWrite).
	Interrupted bool
}

// Remedy is a way to make a file good again that a FileError's Fix (or a
// line FileSource and ClientCAFile log) suggests, so that a program can
// name it with its own command instead of these general words (see
// FileError.Worded and FileSourceOptions.Remedies).
type Remedy int

// The remedies. Each one's String is the words a fix says it in.
const (
	RemedyNone Remedy = iota
	// RemedyIssueServer: a new server certificate from the CA that
	// issued the old one.
	RemedyIssueServer
	// RemedyIssueServerKey: a new server certificate and key (the key
	// was too weak).
	RemedyIssueServerKey
	// RemedyIssueServerNames: a new server certificate that holds the
	// names clients dial.
	RemedyIssueServerNames
	// RemedyRenewElsewhere: a server certificate from the CA it came
	// from, not one a program of this module made (an ACME one).
	RemedyRenewElsewhere
	// RemedyWriteAgain: the file written again, after an empty one.
	RemedyWriteAgain
	// RemedyNewCA: a new CA, whose certificate clients then trust.
	RemedyNewCA
	// RemedyIssueClient: a new client certificate from the server's CA.
	RemedyIssueClient
	// RemedyIssueClientKey: a new client certificate and key (the key
	// was too weak).
	RemedyIssueClientKey
	// RemedyWriteCRL: an empty CRL of the CA, in place of a bad one.
	RemedyWriteCRL
	// RemedyCompleteWrite: the interrupted WriteSet of the folder
	// completed (RecoverSet); see FileError.Interrupted.
	RemedyCompleteWrite
)

var remedyWords = [...]string{
	RemedyNone:             "",
	RemedyIssueServer:      "issue a new server certificate from the same CA",
	RemedyIssueServerKey:   "issue a new server certificate and key",
	RemedyIssueServerNames: "issue one with the names clients dial",
	RemedyRenewElsewhere:   `renew it where it was obtained (an ACME certificate with its ACME client, such as "certbot renew"), or let the SuperLink obtain and renew one itself with ACME`,
	RemedyWriteAgain:       "write it again",
	RemedyNewCA:            "make a new CA and give clients its certificate",
	RemedyIssueClient:      "issue a new one from the SuperLink's CA",
	RemedyIssueClientKey:   "issue a new one and its key from the SuperLink's CA",
	RemedyWriteCRL:         "write an empty CRL of the CA",
	RemedyCompleteWrite:    "complete it (RecoverSet)",
}

// String is the remedy in the general words a fix says it in.
func (r Remedy) String() string {
	if r < 0 || int(r) >= len(remedyWords) {
		return fmt.Sprintf("Remedy(%d)", int(r))
	}
	return remedyWords[r]
}

// Worded returns e with its fix naming its remedies (e.Remedy, and
// RemedyCompleteWrite when e.Interrupted) as words says them for the file
// at e.Path, such as with the command of the program that does them;
// words returning "" keeps the general words. e itself is not changed.
func (e *FileError) Worded(words func(r Remedy, path string) string) *FileError {
	c := *e
	c.Fix = wordRemedies(e.Fix, e.Path, words, e.Remedy)
	if e.Interrupted {
		c.Fix = wordRemedies(c.Fix, e.Path, words, RemedyCompleteWrite)
	}
	return &c
}

// wordRemedies replaces in text the words of each remedy of rs with those
// words gives for path ("" or a nil words: keep them).
func wordRemedies(text, path string, words func(Remedy, string) string, rs ...Remedy) string {
	if words == nil {
		return text
	}
	for _, r := range rs {
		if r == RemedyNone {
			continue
		}
		if w := words(r, path); w != "" {
			text = strings.Replace(text, r.String(), w, 1)
		}
	}
	return text
}

func (e *FileError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s file %s: ", e.Role, e.Path)
	if e.Detail != "" {
		b.WriteString(e.Detail)
	} else {
		b.WriteString(e.Err.Error())
	}
	if e.Fix != "" {
		b.WriteString(": ")
		b.WriteString(e.Fix)
	}
	return b.String()
}

// Unwrap returns the sentinel and the cause.
func (e *FileError) Unwrap() []error {
	if e.Cause != nil {
		return []error{e.Err, e.Cause}
	}
	return []error{e.Err}
}

const (
	roleCA    = "CA certificate"
	roleCert  = "certificate"
	roleKey   = "key"
	roleCAKey = "CA key"

	roleClientCert = "client certificate"
	roleClientKey  = "client key"
	roleClientCA   = "client CA certificate"
	roleCRL        = "CRL"
)

// renewal is the remedy for the server certificate leaf (nil: unknown) in
// certFile that must be replaced: RemedyIssueServer when selfsigned (or
// flower-certs) made it or can make it again (the CA key ca.key lies beside
// it, as flower-certs and Flower's generate.sh leave it), else
// RemedyRenewElsewhere.
func renewal(certFile string, leaf *x509.Certificate) Remedy {
	if leaf == nil || certfmt.MadeBySepal(leaf) {
		return RemedyIssueServer
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(certFile), "ca.key")); err == nil {
		return RemedyIssueServer
	}
	return RemedyRenewElsewhere
}

// Check validates a CA certificate file, a server certificate file and its
// key file as a server starts, and returns the certificate to serve (Leaf
// set; Certificate holds every certificate of certFile, so a leaf followed by
// intermediates is served as a chain). now is the time to validate at; zero
// means time.Now().
//
// It refuses, with a *FileError naming the file and the fix: a missing,
// unreadable or empty file (ErrMissing, ErrUnreadable, ErrEmpty); no PEM
// (ErrNotPEM); a key where a certificate belongs or the reverse
// (ErrWrongPEMType); a key encrypted with a passphrase, PKCS#8 or the
// traditional OpenSSL way (ErrEncrypted); an RSA key of fewer than
// MinRSABits bits in any of the files (ErrWeakKey); a block that does not
// parse (ErrMalformed); a key that
// does not match the certificate (ErrKeyMismatch); an expired or not yet
// valid certificate, with its dates (ErrExpired, ErrNotYetValid); a
// certificate without DNS or IP names (ErrNoSAN) or not for serverAuth
// (ErrWrongUsage); one that does not chain to a certificate of caFile
// (ErrUntrusted). An empty caFile skips the chain check (for a certificate
// from a public CA). Check accepts a certificate that expires soon: see
// Warnings.
func Check(caFile, certFile, keyFile string, now time.Time) (*tls.Certificate, error) {
	fs, err := readFiles(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return fs.check(now)
}

// files is the content of a CA/certificate/key triple, read once so that the
// bytes checked are the bytes served.
type files struct {
	caFile, certFile, keyFile string
	ca, cert, key             []byte
	certRole                  string // roleCert, or roleClientCert for CheckClient
}

func readFiles(caFile, certFile, keyFile string) (*files, error) {
	f := &files{caFile: caFile, certFile: certFile, keyFile: keyFile, certRole: roleCert}
	var err error
	if caFile != "" {
		if f.ca, err = readFile(caFile, roleCA); err != nil {
			return nil, withPending(err)
		}
	}
	if f.cert, err = readFile(certFile, roleCert); err != nil {
		return nil, withPending(err)
	}
	if f.key, err = readFile(keyFile, roleKey); err != nil {
		return nil, withPending(err)
	}
	return f, nil
}

// withPending returns err, a *FileError, with a fix that says how to
// complete the interrupted WriteSet in the folder of its file, if there is
// one: until it is completed the files of the set need not match.
func withPending(err error) error {
	var fe *FileError
	if !errors.As(err, &fe) {
		return err
	}
	dir := filepath.Dir(fe.Path)
	if !PendingSet(dir) {
		return err
	}
	c := *fe
	c.Fix = fmt.Sprintf("a write of the files in %s was interrupted (%s holds %s): %s; or %s",
		dir, dir, setJournal, RemedyCompleteWrite, fe.Fix)
	c.Interrupted = true
	return &c
}

//lint:ignore U1000 used through the reloader's generic constraint (comparable content)
func (f *files) equal(g *files) bool {
	return g != nil && bytes.Equal(f.ca, g.ca) && bytes.Equal(f.cert, g.cert) && bytes.Equal(f.key, g.key)
}

// check is checkBytes, whose error tells of an interrupted WriteSet in the
// folder of the file at fault (which explains a key that does not match).
func (f *files) check(now time.Time) (*tls.Certificate, error) {
	c, err := f.checkBytes(now)
	return c, withPending(err)
}

func (f *files) checkBytes(now time.Time) (*tls.Certificate, error) {
	if now.IsZero() {
		now = time.Now()
	}
	var roots *x509.CertPool
	if f.caFile != "" {
		cas, err := parseCertsPEM(f.caFile, roleCA, f.ca)
		if err != nil {
			return nil, err
		}
		roots = x509.NewCertPool()
		for _, c := range cas {
			if err := weakKey(f.caFile, roleCA, c.PublicKey); err != nil {
				return nil, err
			}
			roots.AddCert(c)
		}
	}
	chain, key, err := f.checkPair(now)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.URIs) == 0 {
		return nil, &FileError{Path: f.certFile, Role: roleCert, Err: ErrNoSAN,
			Detail: fmt.Sprintf("certificate %q has no subject alternative names (DNS names or IPs), so no client can verify it", leaf.Subject.CommonName),
			Fix:    RemedyIssueServerNames.String(), Remedy: RemedyIssueServerNames}
	}
	if !certfmt.HasUsage(leaf, x509.ExtKeyUsageServerAuth) {
		return nil, &FileError{Path: f.certFile, Role: roleCert, Err: ErrWrongUsage,
			Detail: fmt.Sprintf("certificate %q lacks the serverAuth extended key usage", leaf.Subject.CommonName),
			Fix:    renewal(f.certFile, leaf).String(), Remedy: renewal(f.certFile, leaf)}
	}
	if roots != nil {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		if err != nil {
			return nil, f.chainError(leaf, chain, err, now)
		}
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}

// checkPair parses the certificate chain and the key, and refuses a key
// that does not match the leaf or a leaf outside its dates. It is what
// server and client pairs share.
func (f *files) checkPair(now time.Time) ([]*x509.Certificate, crypto.Signer, error) {
	role, keyRole, what := roleCert, roleKey, "server certificate"
	if f.certRole == roleClientCert {
		role, keyRole, what = roleClientCert, roleClientKey, roleClientCert
	}
	chain, err := parseCertsPEM(f.certFile, role, f.cert)
	if err != nil {
		return nil, nil, err
	}
	leaf := chain[0]
	fix := renewal(f.certFile, leaf)
	if f.certRole == roleClientCert {
		fix = RemedyIssueClient
	}
	key, err := parseKeyPEM(f.keyFile, keyRole, f.key)
	if err != nil {
		return nil, nil, err
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		for i, c := range chain[1:] {
			if publicKeysEqual(c.PublicKey, key.Public()) {
				// The chain is out of order: the key is fine.
				return nil, nil, &FileError{Path: f.certFile, Role: role, Err: ErrKeyMismatch,
					Detail: fmt.Sprintf("the key %s matches certificate %d of %s (subject %q), not the first (subject %q)",
						f.keyFile, i+2, f.certFile, c.Subject.CommonName, leaf.Subject.CommonName),
					Fix: "put the " + what + " first, then its intermediates"}
			}
		}
		return nil, nil, &FileError{Path: f.keyFile, Role: keyRole, Err: ErrKeyMismatch,
			Detail: fmt.Sprintf("the %s key does not match the %s certificate %s (subject %q, serial %s)",
				KeyAlgorithm(key.Public()), KeyAlgorithm(leaf.PublicKey), f.certFile, leaf.Subject.CommonName, serialHex(leaf)),
			Fix:    "give the key issued with this certificate (a certificate and key replaced one at a time match again once both are written), or " + fix.String(),
			Remedy: fix}
	}
	for _, c := range chain {
		if err := weakKey(f.certFile, role, c.PublicKey); err != nil {
			return nil, nil, err
		}
	}
	if err := checkDates(f.certFile, role, leaf, now); err != nil {
		return nil, nil, err
	}
	return chain, key, nil
}

func (f *files) chainError(leaf *x509.Certificate, chain []*x509.Certificate, err error, now time.Time) error {
	var inv x509.CertificateInvalidError
	if errors.As(err, &inv) && inv.Reason == x509.Expired && inv.Cert != nil {
		path, role := f.caFile, roleCA
		for _, c := range chain {
			if c.Equal(inv.Cert) {
				path, role = f.certFile, roleCert
			}
		}
		if derr := checkDates(path, role, inv.Cert, now); derr != nil {
			return derr
		}
	}
	detail := fmt.Sprintf("certificate %q (issuer %q) does not chain to the CA in %s: %v",
		leaf.Subject.CommonName, leaf.Issuer.CommonName, f.caFile, err)
	if cas, _ := parseCertsPEM(f.caFile, roleCA, f.ca); len(cas) > 0 {
		for _, ca := range cas {
			if bytes.Equal(ca.RawSubject, leaf.RawIssuer) {
				detail += fmt.Sprintf("; %s holds a CA named %q that did not sign it (was the CA made again?)", f.caFile, ca.Subject.CommonName)
				break
			}
		}
	}
	return &FileError{Path: f.certFile, Role: roleCert, Err: ErrUntrusted, Cause: err,
		Detail: detail,
		Fix:    "give the CA that issued it, or " + renewal(f.certFile, leaf).String(), Remedy: renewal(f.certFile, leaf)}
}

// checkDates refuses a certificate outside its validity period at now.
func checkDates(path, role string, c *x509.Certificate, now time.Time) error {
	dates := fmt.Sprintf("valid from %s to %s, now %s", stamp(c.NotBefore), stamp(c.NotAfter), stamp(now))
	fix := renewal(path, c)
	switch role {
	case roleCA, roleClientCA:
		fix = RemedyNewCA
	case roleClientCert:
		fix = RemedyIssueClient
	}
	switch {
	case now.After(c.NotAfter):
		return &FileError{Path: path, Role: role, Err: ErrExpired,
			Detail: fmt.Sprintf("certificate %q expired on %s (%s)", c.Subject.CommonName, stamp(c.NotAfter), dates),
			Fix:    fix.String(), Remedy: fix}
	case now.Before(c.NotBefore):
		return &FileError{Path: path, Role: role, Err: ErrNotYetValid,
			Detail: fmt.Sprintf("certificate %q is not valid until %s (%s)", c.Subject.CommonName, stamp(c.NotBefore), dates),
			Fix:    "check the clock of this machine and of the one that issued it, or " + fix.String(), Remedy: fix}
	}
	return nil
}

// ExpiryWarning is how close to its expiry a certificate makes Warnings speak.
const ExpiryWarning = 30 * 24 * time.Hour

// Warnings returns what a caller should log about a certificate that Check
// accepted: today only that its leaf expires within ExpiryWarning (with the
// date and the fix). It returns nil when there is nothing to say. now zero
// means time.Now(). FileSource logs these itself.
func Warnings(certFile string, c *tls.Certificate, now time.Time) []string {
	return warnings(certFile, c, now, nil)
}

// warnings is Warnings, with the remedies in words of words (nil: the
// general ones).
func warnings(certFile string, c *tls.Certificate, now time.Time, words func(Remedy, string) string) []string {
	if c == nil || c.Leaf == nil {
		return nil
	}
	if now.IsZero() {
		now = time.Now()
	}
	left := c.Leaf.NotAfter.Sub(now)
	if left > ExpiryWarning {
		return nil
	}
	return []string{fmt.Sprintf("certificate file %s expires on %s (in %d days): %s",
		certFile, stamp(c.Leaf.NotAfter), int(math.Round(left.Hours()/24)), wordRemedies(renewal(certFile, c.Leaf).String(), certFile, words, renewal(certFile, c.Leaf)))}
}

// KeyModeWarning returns what to log about the private key file at path
// when users other than its owner may read or write it (its mode gives the
// group or others any access), naming the mode and the chmod that fixes it;
// "" when the mode is private or the file cannot be examined. The key is
// still used: many setups (a key shared with a group of services) choose
// this, but a private key on a shared machine should be 0600.
func KeyModeWarning(path string) string {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o077 == 0 {
		return ""
	}
	return fmt.Sprintf("private key file %s is open to other users (mode %04o): anyone who reads it can pass for the owner of its certificate; make it private with: chmod 600 %s",
		path, fi.Mode().Perm(), shellQuote(path))
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func readFile(path, role string) ([]byte, error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, &FileError{Path: path, Role: role, Err: ErrMissing, Cause: err,
			Fix: `check the path, or create the files with "flower-certs"`}
	case err != nil:
		return nil, &FileError{Path: path, Role: role, Err: ErrUnreadable, Cause: err,
			Detail: err.Error(), Fix: "make it a file this user can read"}
	case len(bytes.TrimSpace(b)) == 0:
		return nil, &FileError{Path: path, Role: role, Err: ErrEmpty,
			Fix: "a write may have failed or be under way; " + RemedyWriteAgain.String(), Remedy: RemedyWriteAgain}
	}
	return b, nil
}

// parseCertsPEM parses every block of data as a certificate.
func parseCertsPEM(path, role string, data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, &FileError{Path: path, Role: role, Err: ErrMalformed, Cause: err,
					Detail: fmt.Sprintf("certificate %d does not parse: %v", len(certs)+1, err),
					Fix:    "write the file again from its source"}
			}
			certs = append(certs, c)
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			return nil, &FileError{Path: path, Role: role, Err: ErrWrongPEMType,
				Detail: "it holds a private key where a certificate belongs",
				Fix:    "give the certificate here and the key as the key file (the two may be swapped)"}
		default:
			return nil, &FileError{Path: path, Role: role, Err: ErrWrongPEMType,
				Detail: fmt.Sprintf("it holds a PEM %q block where a CERTIFICATE belongs", b.Type),
				Fix:    "give a PEM certificate file (-----BEGIN CERTIFICATE-----)"}
		}
	}
	if len(certs) == 0 {
		return nil, notPEM(path, role, data, "CERTIFICATE")
	}
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		// A file caught while it is written in place: serving the blocks
		// before the cut would serve a chain without its intermediates.
		return nil, &FileError{Path: path, Role: role, Err: ErrMalformed,
			Detail: fmt.Sprintf("it ends in an incomplete PEM block after %d certificate(s)", len(certs)),
			Fix:    "a write may be under way; write the file whole (write a new file and rename it over this one)"}
	}
	return certs, nil
}

// parseKeyPEM parses the first private key block of data (PKCS#8, SEC 1 or
// PKCS#1), skipping EC PARAMETERS blocks.
func parseKeyPEM(path, role string, data []byte) (crypto.Signer, error) {
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, notPEM(path, role, data, "PRIVATE KEY")
		}
		var key any
		var err error
		if strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
			// The traditional OpenSSL encryption ("Proc-Type: 4,ENCRYPTED"
			// and DEK-Info headers), which openssl genrsa -aes128 and old
			// tools write.
			cipher, _, _ := strings.Cut(b.Headers["DEK-Info"], ",")
			return nil, encryptedKey(path, role, strings.TrimSpace("traditional OpenSSL encryption "+cipher))
		}
		switch b.Type {
		case "EC PARAMETERS":
			continue
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, encryptedKey(path, role, "PKCS#8")
		case "CERTIFICATE":
			return nil, &FileError{Path: path, Role: role, Err: ErrWrongPEMType,
				Detail: "it holds a certificate where the private key belongs",
				Fix:    "give the key here and the certificate as the certificate file (the two may be swapped)"}
		default:
			return nil, &FileError{Path: path, Role: role, Err: ErrWrongPEMType,
				Detail: fmt.Sprintf("it holds a PEM %q block where a PRIVATE KEY belongs", b.Type),
				Fix:    "give a PEM private key file (-----BEGIN PRIVATE KEY-----)"}
		}
		if err != nil {
			// The parse error never holds key bytes.
			return nil, &FileError{Path: path, Role: role, Err: ErrMalformed, Cause: err,
				Detail: fmt.Sprintf("the %s block does not parse: %v", b.Type, err),
				Fix:    "write the key again from its source"}
		}
		switch k := key.(type) {
		case *ecdsa.PrivateKey, *rsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, &FileError{Path: path, Role: role, Err: ErrMalformed,
				Detail: fmt.Sprintf("unsupported key type %T", key),
				Fix:    "use an ECDSA, RSA or Ed25519 key"}
		}
	}
}

// MinRSABits is the smallest RSA key Check, LoadCA and FileSource accept
// (NIST has disallowed smaller ones since 2013).
const MinRSABits = 2048

// weakKey refuses an RSA key of fewer than MinRSABits bits in the file at
// path (the key of a certificate, or a private key).
func weakKey(path, role string, pub crypto.PublicKey) error {
	k, ok := pub.(*rsa.PublicKey)
	if !ok || k.N.BitLen() >= MinRSABits {
		return nil
	}
	fix := RemedyIssueServerKey
	switch role {
	case roleCA, roleCAKey, roleClientCA:
		fix = RemedyNewCA
	case roleClientCert, roleClientKey:
		fix = RemedyIssueClientKey
	}
	return &FileError{Path: path, Role: role, Err: ErrWeakKey,
		Detail: fmt.Sprintf("its RSA key has %d bits; keys under %d bits are too weak to trust", k.N.BitLen(), MinRSABits),
		Fix:    fix.String(), Remedy: fix}
}

// encryptedKey is the error for a key file protected by a passphrase,
// which a server that restarts and reloads unattended cannot type; how
// says which encryption ("PKCS#8", or the traditional OpenSSL one).
func encryptedKey(path, role, how string) error {
	return &FileError{Path: path, Role: role, Err: ErrEncrypted,
		Detail: fmt.Sprintf("the key is encrypted with a passphrase (%s)", how),
		Fix: fmt.Sprintf("write it unencrypted with 'openssl pkey -in %s -out PLAIN.key' (it asks for the passphrase), "+
			"chmod 600 PLAIN.key, and give that file", path)}
}

func notPEM(path, role string, data []byte, want string) error {
	fix := fmt.Sprintf("give a PEM file (-----BEGIN %s-----)", want)
	if len(data) > 0 && data[0] == 0x30 { // an ASN.1 SEQUENCE: DER
		if want == "CERTIFICATE" {
			fix = fmt.Sprintf("it looks like DER; convert it with 'openssl x509 -inform der -in %s -out %s.pem'", path, path)
		} else {
			fix = fmt.Sprintf("it looks like DER; convert it with 'openssl pkey -inform der -in %s -out %s.pem'", path, path)
		}
	}
	return &FileError{Path: path, Role: role, Err: ErrNotPEM,
		Detail: "it holds no PEM " + want + " block", Fix: fix}
}

// KeyAlgorithm names the algorithm of a public key for people, such as
// "ECDSA P-256", "RSA-4096" or "Ed25519"; another key type is named by its
// Go type.
func KeyAlgorithm(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case ed25519.PublicKey:
		return "Ed25519"
	}
	return fmt.Sprintf("%T", pub)
}

// serialHex is c's serial as "openssl x509 -serial" prints it.
func serialHex(c *x509.Certificate) string { return certfmt.Serial(c.SerialNumber) }

// stamp formats a time for messages, in UTC.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
