package certfile

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/sepal-fl/sepal/selfsigned"
)

// ErrCRLIssuer is the sentinel of a CRL that no CA of the client CA file
// issued, or whose signature does not verify (a *FileError).
var ErrCRLIssuer = errors.New("CRL is not signed by a CA of the client CA file")

// LoadCRL reads a CRL file (PEM "X509 CRL", one block) and checks that ca
// signed it, with the checks of the client CA files (see ClientCAFile). The
// errors are *FileError values naming the file and the fix.
func LoadCRL(path string, ca *x509.Certificate) (*x509.RevocationList, error) {
	data, err := readFile(path, roleCRL)
	if err != nil {
		return nil, err
	}
	list, err := parseCRLPEM(path, data)
	if err != nil {
		return nil, err
	}
	if err := verifyCRL(path, list, []*x509.Certificate{ca}, ""); err != nil {
		return nil, err
	}
	return list, nil
}

// parseCRLPEM parses the one CRL of data.
func parseCRLPEM(path string, data []byte) (*x509.RevocationList, error) {
	var list *x509.RevocationList
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == selfsigned.CRLPEMType:
			if list != nil {
				return nil, &FileError{Path: path, Role: roleCRL, Err: ErrMalformed,
					Detail: "it holds more than one CRL",
					Fix:    "give the one CRL of the CA that issues the client certificates (flower-certs revoke writes it as certificates/crl.pem)"}
			}
			l, err := x509.ParseRevocationList(b.Bytes)
			if err != nil {
				return nil, &FileError{Path: path, Role: roleCRL, Err: ErrMalformed, Cause: err,
					Detail: fmt.Sprintf("the CRL does not parse: %v", err),
					Fix:    "move it away and " + RemedyWriteCRL.String() + " (then revoke again what it listed)", Remedy: RemedyWriteCRL}
			}
			list = l
		case b.Type == "CERTIFICATE":
			return nil, &FileError{Path: path, Role: roleCRL, Err: ErrWrongPEMType,
				Detail: "it holds a certificate where the CRL belongs",
				Fix:    "give the CRL (-----BEGIN X509 CRL-----) that flower-certs revoke writes, certificates/crl.pem"}
		case strings.HasSuffix(b.Type, "PRIVATE KEY"):
			return nil, &FileError{Path: path, Role: roleCRL, Err: ErrWrongPEMType,
				Detail: "it holds a private key where the CRL belongs",
				Fix:    "give the CRL (-----BEGIN X509 CRL-----) that flower-certs revoke writes, certificates/crl.pem"}
		default:
			return nil, &FileError{Path: path, Role: roleCRL, Err: ErrWrongPEMType,
				Detail: fmt.Sprintf("it holds a PEM %q block where an X509 CRL belongs", b.Type),
				Fix:    "give a PEM CRL file (-----BEGIN X509 CRL-----)"}
		}
	}
	if list == nil {
		if len(data) > 0 && data[0] == 0x30 { // an ASN.1 SEQUENCE: DER
			return nil, &FileError{Path: path, Role: roleCRL, Err: ErrNotPEM,
				Detail: "it holds no PEM X509 CRL block",
				Fix:    fmt.Sprintf("it looks like DER; convert it with 'openssl crl -inform der -in %s -out %s.pem'", path, path)}
		}
		return nil, &FileError{Path: path, Role: roleCRL, Err: ErrNotPEM,
			Detail: "it holds no PEM X509 CRL block",
			Fix:    "give a PEM CRL file (-----BEGIN X509 CRL-----), such as certificates/crl.pem from flower-certs revoke"}
	}
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, &FileError{Path: path, Role: roleCRL, Err: ErrMalformed,
			Detail: "it ends in an incomplete PEM block",
			Fix:    "a write may be under way; write the file whole (write a new file and rename it over this one)"}
	}
	return list, nil
}

// verifyCRL checks that a CA of cas (read from caFile, for messages; ""
// when the caller gave the CA itself) signed list.
func verifyCRL(path string, list *x509.RevocationList, cas []*x509.Certificate, caFile string) error {
	in := "the CA"
	if caFile != "" {
		in = "any CA of " + caFile
	}
	var named *x509.Certificate
	for _, ca := range cas {
		if !bytes.Equal(ca.RawSubject, list.RawIssuer) {
			continue
		}
		named = ca
		if list.CheckSignatureFrom(ca) == nil {
			return nil
		}
	}
	if named != nil {
		return &FileError{Path: path, Role: roleCRL, Err: ErrCRLIssuer,
			Detail: fmt.Sprintf("the CRL names the issuer %q, but its signature does not verify with %s by that name (was the CA made again?)", list.Issuer.String(), in),
			Fix:    "the CA that issues the client certificates must sign it: " + RemedyWriteCRL.String() + ", then revoke again what it should list", Remedy: RemedyWriteCRL}
	}
	return &FileError{Path: path, Role: roleCRL, Err: ErrCRLIssuer,
		Detail: fmt.Sprintf("the CRL was issued by %q, not by %s", list.Issuer.String(), in),
		Fix:    "give the CRL of the CA that issues the client certificates, or " + RemedyWriteCRL.String() + " in its place", Remedy: RemedyWriteCRL}
}
