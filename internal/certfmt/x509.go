package certfmt

// The certificate checks that the SuperLink (transport), the CA files
// (certfile) and flower-certs share, kept here because none of those
// packages may import the others.

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"slices"
)

// Listed reports whether entries hold serial.
func Listed(entries []x509.RevocationListEntry, serial *big.Int) bool {
	for _, e := range entries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// Revoked reports whether list revokes c: c was issued by the list's
// issuer (the same subject, and the same key when both name it) and its
// serial is listed. A nil list revokes nothing.
func Revoked(list *x509.RevocationList, c *x509.Certificate) bool {
	return list != nil && bytes.Equal(c.RawIssuer, list.RawIssuer) &&
		(len(c.AuthorityKeyId) == 0 || len(list.AuthorityKeyId) == 0 || bytes.Equal(c.AuthorityKeyId, list.AuthorityKeyId)) &&
		Listed(list.RevokedCertificateEntries, c.SerialNumber)
}

// HasUsage reports whether c may be used for u: it lists u or any, or no
// extended key usage at all.
func HasUsage(c *x509.Certificate, u x509.ExtKeyUsage) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	for _, x := range c.ExtKeyUsage {
		if x == u || x == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// ReadFirstCert parses the first CERTIFICATE block of a PEM file, or
// returns nil when the file cannot be read, holds none, or that one does
// not parse.
func ReadFirstCert(path string) *x509.Certificate {
	blocks := certBlocks(path)
	if len(blocks) == 0 {
		return nil
	}
	c, err := x509.ParseCertificate(blocks[0])
	if err != nil {
		return nil
	}
	return c
}

// ReadCerts parses every CERTIFICATE block of a PEM file that parses, or
// returns nil when the file cannot be read.
func ReadCerts(path string) []*x509.Certificate {
	var certs []*x509.Certificate
	for _, b := range certBlocks(path) {
		if c, err := x509.ParseCertificate(b); err == nil {
			certs = append(certs, c)
		}
	}
	return certs
}

// SameNameCA returns a CA certificate of the PEM file roots whose subject
// is the issuer of c, which did not sign c if c failed to verify against
// roots (a CA made again under the same name); nil when there is none, no
// file ("": the system roots) or no c.
func SameNameCA(roots string, c *x509.Certificate) *x509.Certificate {
	if roots == "" || c == nil {
		return nil
	}
	for _, r := range ReadCerts(roots) {
		if bytes.Equal(r.RawSubject, c.RawIssuer) {
			return r
		}
	}
	return nil
}

// certBlocks returns the DER of each CERTIFICATE block of a PEM file, nil
// when it cannot be read.
func certBlocks(path string) [][]byte {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		if b.Type == "CERTIFICATE" {
			out = append(out, b.Bytes)
		}
	}
}

// Organization is the subject organization of every certificate Sepal's
// selfsigned package (flower-certs) makes: CAs, server and client
// certificates.
const Organization = "Sepal"

// MadeBySepal reports whether c names Organization as its subject's: a
// certificate flower-certs made, which flower-certs can make again. A
// certificate from an ACME CA (or any other) does not.
func MadeBySepal(c *x509.Certificate) bool {
	return c != nil && slices.Contains(c.Subject.Organization, Organization)
}
