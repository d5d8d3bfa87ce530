package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// CheckClient validates a client certificate file and its key file as a
// client starts, and returns the certificate to present (Leaf set;
// Certificate holds every certificate of certFile). now zero means
// time.Now().
//
// It refuses, with a *FileError naming the file and the fix, what Check
// refuses of a pair (a missing, unreadable, empty or malformed file, a key
// where the certificate belongs or the reverse, a key that does not match,
// a certificate outside its dates) and a certificate that is not for TLS
// clients (ErrWrongUsage: it lacks the clientAuth extended key usage).
// Whether the server trusts its CA is for the server to say.
func CheckClient(certFile, keyFile string, now time.Time) (*tls.Certificate, error) {
	f := &files{certFile: certFile, keyFile: keyFile, certRole: roleClientCert}
	var err error
	if f.cert, err = readFile(certFile, roleClientCert); err != nil {
		return nil, err
	}
	if f.key, err = readFile(keyFile, roleClientKey); err != nil {
		return nil, err
	}
	if now.IsZero() {
		now = time.Now()
	}
	chain, key, err := f.checkPair(now)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if !certfmt.HasUsage(leaf, x509.ExtKeyUsageClientAuth) {
		return nil, &FileError{Path: certFile, Role: roleClientCert, Err: ErrWrongUsage,
			Detail: fmt.Sprintf("certificate %q lacks the clientAuth extended key usage, so no server accepts it from a client (is it a server certificate?)", leaf.Subject.CommonName),
			Fix:    RemedyIssueClient.String(), Remedy: RemedyIssueClient}
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}
