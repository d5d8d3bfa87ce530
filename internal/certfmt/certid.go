package certfmt

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"math/big"
)

// CertID names a certificate by its serial and its issuer, the two facts a
// CRL entry names it by: "SERIAL/ISSUER", SERIAL as Serial prints it and
// ISSUER the first 8 bytes of the SHA-256 of the issuer's DER name, in
// hex. Two CAs that issue the same serial give two ids.
func CertID(rawIssuer []byte, serial *big.Int) string {
	h := sha256.Sum256(rawIssuer)
	return Serial(serial) + "/" + hex.EncodeToString(h[:8])
}

// CertIDOf is the CertID of c.
func CertIDOf(c *x509.Certificate) string { return CertID(c.RawIssuer, c.SerialNumber) }

// RevokedIDs returns the CertIDs of the certificates list revokes (none
// for a nil list).
func RevokedIDs(list *x509.RevocationList) map[string]bool {
	out := map[string]bool{}
	if list == nil {
		return out
	}
	for _, e := range list.RevokedCertificateEntries {
		out[CertID(list.RawIssuer, e.SerialNumber)] = true
	}
	return out
}
