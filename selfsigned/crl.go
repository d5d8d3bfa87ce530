package selfsigned

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// CRLPEMType is the PEM block type of a CRL, as openssl writes it.
const CRLPEMType = "X509 CRL"

// CRL is a certificate revocation list signed by a CA: List parsed, PEM
// encoded (one "X509 CRL" block).
type CRL struct {
	List *x509.RevocationList
	PEM  []byte
}

// SignCRL makes the CA's next CRL: the entries of prev (nil for the first
// CRL) plus one for each serial of revoke that prev does not hold, revoked
// at now; CRL number prev's plus one (1 for the first); ThisUpdate now and
// NextUpdate the CA's NotAfter, as the CRL is a file that is read again
// whenever it changes rather than fetched on a schedule. prev must be a
// CRL of this CA (LoadCRL checks that). A zero now means time.Now(). It is
// safe for concurrent use.
func (ca *CA) SignCRL(prev *x509.RevocationList, revoke []*big.Int, now time.Time) (*CRL, error) {
	if now.IsZero() {
		now = time.Now()
	}
	now = now.UTC().Truncate(time.Second)
	if !ca.Cert.NotAfter.After(now) {
		return nil, fmt.Errorf("the CA expired on %s: a CRL it signs would be of no use; make a new CA", stamp(ca.Cert.NotAfter))
	}
	number := big.NewInt(1)
	var entries []x509.RevocationListEntry
	if prev != nil {
		entries = slices.Clone(prev.RevokedCertificateEntries)
		if prev.Number != nil {
			number.Add(prev.Number, big.NewInt(1))
		}
	}
	for _, serial := range revoke {
		if certfmt.Listed(entries, serial) {
			continue
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: serial, RevocationTime: now})
	}
	tmpl := &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    number,
		ThisUpdate:                now,
		NextUpdate:                ca.Cert.NotAfter,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing the CRL: %w", err)
	}
	list, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the new CRL: %w", err)
	}
	return &CRL{List: list, PEM: pem.EncodeToMemory(&pem.Block{Type: CRLPEMType, Bytes: der})}, nil
}

// Revoked reports whether list revokes c: c was issued by the list's issuer
// (the same subject, and the same key when both name it) and its serial is
// listed. It is the check the SuperLink makes (transport and certfile
// share it).
func Revoked(list *x509.RevocationList, c *x509.Certificate) bool {
	return certfmt.Revoked(list, c)
}
