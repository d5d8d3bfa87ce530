package selfsigned

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// DefaultClientValidity is how long IssueClient's certificates last by
// default: 365 days, as server certificates.
const DefaultClientValidity = 365 * 24 * time.Hour

// ClientOptions configures IssueClient.
type ClientOptions struct {
	// CommonName names the client, such as a SuperNode's name. Required.
	CommonName string
	// OrganizationalUnit is put in the subject when not empty, such as
	// the client's role ("node").
	OrganizationalUnit string
	// URIs are URI subject alternative names, such as the identity a
	// server checks (sepal:node:alice). Optional.
	URIs []*url.URL
	// KeyType of the client key; "" means ECDSAP256.
	KeyType KeyType
	// NotBefore defaults to now minus Backdate; NotAfter defaults to now
	// plus DefaultClientValidity. NotAfter may not be later than the CA's
	// NotAfter.
	NotBefore, NotAfter time.Time
}

// IssueClient makes a new key and a client certificate for it signed by the
// CA: ExtKeyUsage clientAuth only (it cannot serve TLS), KeyUsage
// DigitalSignature (plus KeyEncipherment for RSA), a random 128-bit serial,
// SubjectKeyId and AuthorityKeyId, subject CN=o.CommonName, O=Sepal and
// OU=o.OrganizationalUnit, and o.URIs as its subject alternative names.
// IssueClient is safe for concurrent use.
func (ca *CA) IssueClient(o ClientOptions) (*Pair, error) {
	cn := strings.TrimSpace(o.CommonName)
	if cn == "" {
		return nil, errors.New("a client certificate needs a CommonName")
	}
	if len(cn) > 64 { // the X.509 upper bound of a common name
		return nil, fmt.Errorf("client name %q is longer than 64 characters", cn)
	}
	return ca.issueLeaf(o.KeyType, o.NotBefore, o.NotAfter, DefaultClientValidity, "client", x509.ExtKeyUsageClientAuth,
		func(tmpl *x509.Certificate) {
			tmpl.Subject = pkix.Name{CommonName: cn, Organization: []string{certfmt.Organization}}
			if o.OrganizationalUnit != "" {
				tmpl.Subject.OrganizationalUnit = []string{o.OrganizationalUnit}
			}
			tmpl.URIs = o.URIs
		})
}

// fixRenewClient is the advice for a client certificate that must be
// replaced.
const fixRenewClient = `issue a new one from the SuperLink's CA with "flower-certs node --force NAME" (or "flower-certs serverapp --force NAME")`

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
			Fix:    fixRenewClient}
	}
	c := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, x := range chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c, nil
}
