package selfsigned

import (
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
