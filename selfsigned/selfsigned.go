// Package selfsigned generates the certificates of a research setup with
// the standard library alone: a private CA and the server certificates,
// client certificates and CRLs it signs.
package selfsigned

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// KeyType names a key algorithm for a CA or server key.
type KeyType string

// The key types NewCA and IssueServer make. ECDSAP256 is the default: a
// full TLS handshake with it costs the server far less CPU than RSA.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	RSA2048   KeyType = "rsa-2048"
	RSA3072   KeyType = "rsa-3072"
	RSA4096   KeyType = "rsa-4096"
	Ed25519   KeyType = "ed25519"
)

// KeyTypes lists every supported key type, the default first.
var KeyTypes = []KeyType{ECDSAP256, RSA2048, RSA3072, RSA4096, Ed25519}

// ParseKeyType returns the KeyType named s (case-insensitive, such as
// "ecdsa-p256" or "rsa-4096"). An empty s gives ECDSAP256. An unknown name is
// an error that lists the valid ones.
func ParseKeyType(s string) (KeyType, error) {
	if s == "" {
		return ECDSAP256, nil
	}
	for _, k := range KeyTypes {
		if strings.EqualFold(s, string(k)) {
			return k, nil
		}
	}
	names := make([]string, len(KeyTypes))
	for i, k := range KeyTypes {
		names[i] = string(k)
	}
	return "", fmt.Errorf("unknown key type %q: use one of %s", s, strings.Join(names, ", "))
}

// generate makes a new private key of type k ("" means ECDSAP256).
func (k KeyType) generate() (crypto.Signer, error) {
	switch k {
	case ECDSAP256, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case RSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	case RSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case RSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	case Ed25519:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	_, err := ParseKeyType(string(k))
	return nil, err
}

// Default validity periods and the clock-skew allowance.
const (
	DefaultCAValidity     = 10 * 365 * 24 * time.Hour // NewCA: 10 years
	DefaultServerValidity = 365 * 24 * time.Hour      // IssueServer: 365 days
	// Backdate is how far before now a zero NotBefore is set, so that peers
	// whose clocks run a little behind accept a certificate issued just now.
	Backdate = time.Hour
)

// Default common names.
const (
	// DefaultCACommonName starts the common name of every CA NewCA makes
	// without one, which goes on with the day it is made and its key id.
	DefaultCACommonName = "Sepal research CA"
)

// CAOptions configures NewCA. The zero value is valid.
type CAOptions struct {
	// KeyType of the CA key; "" means ECDSAP256.
	KeyType KeyType
	// CommonName of the CA; "" means DefaultCACommonName, the day it is
	// made (UTC) and the first 4 bytes of its key id in hex, such as
	// "Sepal research CA 2025-06-01 3F2A9C01": two CAs made apart, which
	// clients would otherwise see under one name, differ by name.
	CommonName string
	// NotBefore defaults to now minus Backdate; NotAfter defaults to now
	// plus DefaultCAValidity.
	NotBefore, NotAfter time.Time
}

// CA is a certificate authority that can issue server certificates. Cert and
// Key are the parsed forms of CertPEM and KeyPEM (PEM "CERTIFICATE" and
// PKCS#8 "PRIVATE KEY"). A CA is not modified after it is made and is safe
// for concurrent use.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA makes a new self-signed CA: a random 128-bit serial, a SubjectKeyId,
// IsCA with MaxPathLen 0 (it signs leaf certificates only), and key usage
// CertSign and CRLSign.
func NewCA(o CAOptions) (*CA, error) {
	now := time.Now()
	notBefore, notAfter := validity(now, o.NotBefore, o.NotAfter, DefaultCAValidity)
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("CA NotAfter %s is not after NotBefore %s", stamp(notAfter), stamp(notBefore))
	}
	key, serial, ski, err := newKey(o.KeyType, "CA")
	if err != nil {
		return nil, err
	}
	cn := o.CommonName
	if cn == "" {
		cn = fmt.Sprintf("%s %s %X", DefaultCACommonName, now.UTC().Format(time.DateOnly), ski[:4])
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{certfmt.Organization}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
		AuthorityKeyId:        ski,
	}
	cert, der, keyPEM, err := sign(tmpl, tmpl, key, key, "CA")
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM(der), KeyPEM: keyPEM}, nil
}

// ServerOptions configures IssueServer. The zero value is valid: a server
// certificate for localhost, 127.0.0.1 and ::1.
type ServerOptions struct {
	// Hosts are extra subject alternative names: IP addresses become IP
	// SANs, anything else must be a valid DNS name (a leading "*." is
	// allowed) and becomes a DNS SAN.
	Hosts []string
	// NoDefaultHosts omits the default SANs localhost, 127.0.0.1 and ::1;
	// Hosts must then hold at least one name.
	NoDefaultHosts bool
	// KeyType of the server key; "" means ECDSAP256.
	KeyType KeyType
	// CommonName defaults to the first host (the first of Hosts, else
	// "localhost").
	CommonName string
	// NotBefore defaults to now minus Backdate; NotAfter defaults to now
	// plus DefaultServerValidity. NotAfter may not be later than the CA's
	// NotAfter.
	NotBefore, NotAfter time.Time
}

// DefaultHosts are the SANs every server certificate holds unless
// ServerOptions.NoDefaultHosts is set.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// Pair is a server certificate and its key, as PEM (CERTIFICATE, PKCS#8
// PRIVATE KEY), with the parsed certificate in Leaf.
type Pair struct {
	CertPEM []byte
	KeyPEM  []byte
	Leaf    *x509.Certificate
}

// IssueServer makes a new key and a server certificate for it signed by the
// CA: a random 128-bit serial, ExtKeyUsage serverAuth, KeyUsage
// DigitalSignature (plus KeyEncipherment for RSA), SubjectKeyId and
// AuthorityKeyId, and SANs for the default hosts plus o.Hosts. An invalid
// host name is an error naming it. IssueServer is safe for concurrent use.
func (ca *CA) IssueServer(o ServerOptions) (*Pair, error) {
	var dns []string
	var ips []net.IP
	seen := map[string]bool{}
	hosts := o.Hosts
	if !o.NoDefaultHosts {
		hosts = append(append([]string{}, DefaultHosts...), o.Hosts...)
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if ip := parseIP(h); ip != nil {
			if !seen[ip.String()] {
				seen[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		name := strings.ToLower(h)
		if err := validDNSName(name); err != nil {
			return nil, fmt.Errorf("host %q: %w; give a DNS name (such as flower.example.org) or an IP address", h, err)
		}
		if !seen[name] {
			seen[name] = true
			dns = append(dns, name)
		}
	}
	if len(dns)+len(ips) == 0 {
		return nil, errors.New("a server certificate needs at least one host: give Hosts or leave NoDefaultHosts unset")
	}
	cn := o.CommonName
	if cn == "" {
		// The first extra host, else localhost.
		cn = "localhost"
		if len(o.Hosts) > 0 {
			cn = strings.ToLower(strings.TrimSpace(o.Hosts[0]))
			if ip := parseIP(cn); ip != nil {
				cn = ip.String()
			}
		}
		if len(cn) > 64 { // the X.509 upper bound of a common name
			cn = "Sepal server"
		}
	}
	return ca.issueLeaf(o.KeyType, o.NotBefore, o.NotAfter, DefaultServerValidity, "server", x509.ExtKeyUsageServerAuth,
		func(tmpl *x509.Certificate) {
			tmpl.Subject = pkix.Name{CommonName: cn, Organization: []string{certfmt.Organization}}
			tmpl.DNSNames = dns
			tmpl.IPAddresses = ips
		})
}

// issueLeaf makes a new key of type kt and a leaf certificate for it signed
// by the CA, for one extended key usage: a random 128-bit serial, KeyUsage
// DigitalSignature (plus KeyEncipherment for RSA), SubjectKeyId and
// AuthorityKeyId, the validity from notBefore and notAfter (zero: now minus
// Backdate, now plus def), which may not end after the CA. fill sets the
// subject and names. what ("server", "client") names it in errors.
func (ca *CA) issueLeaf(kt KeyType, notBefore, notAfter time.Time, def time.Duration, what string, eku x509.ExtKeyUsage, fill func(*x509.Certificate)) (*Pair, error) {
	now := time.Now()
	notBefore, notAfter = validity(now, notBefore, notAfter, def)
	if !notAfter.After(notBefore) {
		return nil, fmt.Errorf("%s NotAfter %s is not after NotBefore %s", what, stamp(notAfter), stamp(notBefore))
	}
	if notAfter.After(ca.Cert.NotAfter) {
		return nil, fmt.Errorf("the %s certificate would expire %s, after its CA (%s): shorten the validity or make a new CA",
			what, stamp(notAfter), stamp(ca.Cert.NotAfter))
	}
	key, serial, ski, err := newKey(kt, what)
	if err != nil {
		return nil, err
	}
	usage := x509.KeyUsageDigitalSignature
	if _, ok := key.(*rsa.PrivateKey); ok {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{eku},
		BasicConstraintsValid: true,
		SubjectKeyId:          ski,
		AuthorityKeyId:        ca.Cert.SubjectKeyId,
	}
	fill(tmpl)
	leaf, der, keyPEM, err := sign(tmpl, ca.Cert, key, ca.Key, what)
	if err != nil {
		return nil, err
	}
	return &Pair{CertPEM: certPEM(der), KeyPEM: keyPEM, Leaf: leaf}, nil
}

// newKey makes a key of type kt with what every certificate made here
// needs: a random serial and the key's SubjectKeyId. what ("CA",
// "server") names the key in errors.
func newKey(kt KeyType, what string) (key crypto.Signer, serial *big.Int, ski []byte, err error) {
	if key, err = kt.generate(); err != nil {
		return nil, nil, nil, fmt.Errorf("making the %s key: %w", what, err)
	}
	if serial, err = newSerial(); err != nil {
		return nil, nil, nil, err
	}
	if ski, err = subjectKeyID(key.Public()); err != nil {
		return nil, nil, nil, err
	}
	return key, serial, ski, nil
}

// sign makes the certificate tmpl for key, signed by signer as parent (tmpl
// and key themselves for a self-signed CA), and returns it parsed, as DER,
// and key as PEM. what ("CA", "server") names the certificate in errors.
func sign(tmpl, parent *x509.Certificate, key, signer crypto.Signer, what string) (*x509.Certificate, []byte, []byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("signing the %s certificate: %w", what, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parsing the new %s certificate: %w", what, err)
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, der, keyPEM, nil
}

// TLSCertificate returns the pair as a tls.Certificate with Leaf set.
func (p *Pair) TLSCertificate() (tls.Certificate, error) {
	c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading the key pair: %w", err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("parsing the certificate: %w", err)
		}
	}
	return c, nil
}

// validity fills in zero dates: notBefore = now - Backdate, notAfter = now + d.
func validity(now, notBefore, notAfter time.Time, d time.Duration) (time.Time, time.Time) {
	if notBefore.IsZero() {
		notBefore = now.Add(-Backdate)
	}
	if notAfter.IsZero() {
		notAfter = now.Add(d)
	}
	return notBefore.UTC().Truncate(time.Second), notAfter.UTC().Truncate(time.Second)
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			return nil, fmt.Errorf("making a serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectKeyID is the SHA-1 of the subjectPublicKey bit string (RFC 5280,
// 4.2.1.2, method 1).
func subjectKeyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("computing the subject key id: %w", err)
	}
	var spki struct {
		Algorithm        pkix.AlgorithmIdentifier
		SubjectPublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, fmt.Errorf("computing the subject key id: %w", err)
	}
	sum := sha1.Sum(spki.SubjectPublicKey.Bytes)
	return sum[:], nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func marshalKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding the key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseIP parses an IP address, also in brackets ("[::1]").
func parseIP(s string) net.IP {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if strings.Contains(s, "%") { // zones have no place in a certificate
		return nil
	}
	return net.ParseIP(s)
}

// validDNSName checks a lower-case host name: labels of letters, digits and
// inner hyphens, 1 to 63 bytes each, 253 in all, an optional leading "*.".
func validDNSName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	rest := strings.TrimPrefix(name, "*.")
	if len(rest) > 253 {
		return errors.New("longer than 253 characters")
	}
	if strings.HasSuffix(rest, ".") {
		return errors.New("ends with a dot")
	}
	for _, label := range strings.Split(rest, ".") {
		if label == "" {
			return errors.New("has an empty label")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				if c >= 0x80 {
					return errors.New("non-ASCII names go in their punycode (xn--) form")
				}
				return fmt.Errorf("character %q is not allowed in a DNS name", c)
			}
		}
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
