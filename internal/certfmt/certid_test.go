package certfmt

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"testing"
	"time"
)

// TestCertIDMatchesCRL: the id of a certificate is among the ids of a CRL
// of its issuer that lists its serial, and not among those of a CRL of
// another issuer (of the same name) that lists the same serial.
func TestCertIDMatchesCRL(t *testing.T) {
	a, aKey := issue(t, "ca", 1, nil, nil)
	b, bKey := issue(t, "other ca", 9, nil, nil)
	crl := func(issuer *x509.Certificate, key *ecdsa.PrivateKey, serials ...int64) *x509.RevocationList {
		tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour)}
		for _, s := range serials {
			tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now()})
		}
		der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer, key)
		if err != nil {
			t.Fatal(err)
		}
		l, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	leaf, _ := issue(t, "node", 0x2a, a, aKey)
	id := CertIDOf(leaf)
	if len(id) != 3+16 || id[:3] != "2A/" {
		t.Errorf("CertID %q, want the serial 2A, a slash and 16 hex digits", id)
	}
	if !RevokedIDs(crl(a, aKey, 7, 0x2a))[id] {
		t.Error("a CRL of the issuer listing the serial does not hold the id")
	}
	if RevokedIDs(crl(b, bKey, 0x2a))[id] || RevokedIDs(crl(a, aKey, 7))[id] || RevokedIDs(nil)[id] {
		t.Error("the id is held by a CRL of another issuer, one without its serial, or none")
	}
}
