// Package certfmt prints facts about certificates the way the tools people
// check them with print them, so that a value in a Sepal message can be
// found in openssl's output as it is; and holds the checks of certificates
// and CRLs that transport, certfile, selfsigned and flower-certs share (x509.go).
package certfmt

import (
	"encoding/hex"
	"math/big"
	"strings"
)

// Serial returns a certificate serial number as "openssl x509 -serial"
// prints it: the bytes of its magnitude in uppercase hex without colons,
// two digits per byte (so a leading zero when the top byte is below 0x10),
// "00" for zero, and a leading "-" for a negative serial (which RFC 5280
// forbids but old certificates have). nil gives "".
func Serial(n *big.Int) string {
	if n == nil {
		return ""
	}
	if n.Sign() == 0 {
		return "00"
	}
	s := strings.ToUpper(hex.EncodeToString(new(big.Int).Abs(n).Bytes()))
	if n.Sign() < 0 {
		return "-" + s
	}
	return s
}

// KeyID returns a subject or authority key identifier as openssl x509
// -text prints it: uppercase hex bytes joined by colons. Empty gives "".
func KeyID(id []byte) string {
	parts := make([]string, len(id))
	for i, b := range id {
		parts[i] = strings.ToUpper(hex.EncodeToString([]byte{b}))
	}
	return strings.Join(parts, ":")
}
