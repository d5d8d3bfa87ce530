package selfsigned

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseKeyType(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want KeyType
		err  bool
	}{
		{"", ECDSAP256, false},
		{"ecdsa-p256", ECDSAP256, false},
		{"RSA-4096", RSA4096, false},
		{"rsa-2048", RSA2048, false},
		{"rsa-3072", RSA3072, false},
		{"ed25519", Ed25519, false},
		{"rsa-1024", "", true},
		{"p384", "", true},
	} {
		got, err := ParseKeyType(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseKeyType(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
		}
		if err != nil && !strings.Contains(err.Error(), "ecdsa-p256, rsa-2048") {
			t.Errorf("ParseKeyType(%q) error %q does not list the valid names", tc.in, err)
		}
	}
}

func newTestCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA(CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestNewCA(t *testing.T) {
	before := time.Now()
	ca := newTestCA(t)
	c := ca.Cert
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA %v, BasicConstraintsValid %v, MaxPathLen %d, MaxPathLenZero %v",
			c.IsCA, c.BasicConstraintsValid, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("CA key usage %v", c.KeyUsage)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Error("CA has no SubjectKeyId")
	}
	if c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 64 {
		t.Errorf("CA serial has %d bits", c.SerialNumber.BitLen())
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if d := c.NotAfter.Sub(before); d < DefaultCAValidity-time.Minute || d > DefaultCAValidity+time.Minute {
		t.Errorf("CA valid for %v, want about %v", d, DefaultCAValidity)
	}
	if d := before.Sub(c.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("CA NotBefore is %v before now, want about 1h", d)
	}
	// The day and the key id tell two CAs made apart by name.
	if want := fmt.Sprintf("%s %s %X", DefaultCACommonName, time.Now().UTC().Format(time.DateOnly), c.SubjectKeyId[:4]); c.Subject.CommonName != want {
		t.Errorf("CA CN %q, want %q", c.Subject.CommonName, want)
	}
	if other := newTestCA(t); other.Cert.Subject.CommonName == c.Subject.CommonName {
		t.Errorf("two CAs made now share the name %q", c.Subject.CommonName)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("CA is not self-signed: %v", err)
	}
	b, _ := pem.Decode(ca.KeyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Errorf("CA key PEM is not PKCS#8 PRIVATE KEY")
	}
	b, _ = pem.Decode(ca.CertPEM)
	if b == nil || b.Type != "CERTIFICATE" || !bytes.Equal(b.Bytes, c.Raw) {
		t.Errorf("CA CertPEM does not hold the certificate")
	}
}

func TestIssueServer(t *testing.T) {
	ca := newTestCA(t)
	for _, kt := range KeyTypes {
		t.Run(string(kt), func(t *testing.T) {
			p, err := ca.IssueServer(ServerOptions{KeyType: kt, Hosts: []string{"Flower.Example.org", "10.1.2.3", "[fe80::1]", "localhost"}})
			if err != nil {
				t.Fatal(err)
			}
			l := p.Leaf
			if want := []string{"localhost", "flower.example.org"}; !slices.Equal(l.DNSNames, want) {
				t.Errorf("DNS SANs %q, want %q", l.DNSNames, want)
			}
			var ips []string
			for _, ip := range l.IPAddresses {
				ips = append(ips, ip.String())
			}
			if want := []string{"127.0.0.1", "::1", "10.1.2.3", "fe80::1"}; !slices.Equal(ips, want) {
				t.Errorf("IP SANs %q, want %q", ips, want)
			}
			if l.Subject.CommonName != "flower.example.org" {
				t.Errorf("CN %q", l.Subject.CommonName)
			}
			if !slices.Equal(l.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
				t.Errorf("ExtKeyUsage %v", l.ExtKeyUsage)
			}
			wantUsage := x509.KeyUsageDigitalSignature
			switch k := l.PublicKey.(type) {
			case *rsa.PublicKey:
				wantUsage |= x509.KeyUsageKeyEncipherment
				if want := map[KeyType]int{RSA2048: 2048, RSA3072: 3072, RSA4096: 4096}[kt]; k.N.BitLen() != want {
					t.Errorf("RSA key of %d bits, want %d", k.N.BitLen(), want)
				}
			case *ecdsa.PublicKey:
				if kt != ECDSAP256 || k.Curve != elliptic.P256() {
					t.Errorf("ECDSA key for %s", kt)
				}
			case ed25519.PublicKey:
				if kt != Ed25519 {
					t.Errorf("Ed25519 key for %s", kt)
				}
			}
			if l.KeyUsage != wantUsage {
				t.Errorf("KeyUsage %v, want %v", l.KeyUsage, wantUsage)
			}
			if !bytes.Equal(l.AuthorityKeyId, ca.Cert.SubjectKeyId) || len(l.SubjectKeyId) == 0 {
				t.Errorf("SKI/AKI: AKI %x, CA SKI %x, SKI %x", l.AuthorityKeyId, ca.Cert.SubjectKeyId, l.SubjectKeyId)
			}
			if l.IsCA {
				t.Error("server certificate is a CA")
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca.Cert)
			for _, name := range []string{"localhost", "127.0.0.1", "::1", "flower.example.org", "10.1.2.3"} {
				if _, err := l.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
					t.Errorf("verify as %s: %v", name, err)
				}
			}
			c, err := p.TLSCertificate()
			if err != nil || c.Leaf == nil || !c.Leaf.Equal(l) {
				t.Errorf("TLSCertificate: %v, leaf %v", err, c.Leaf)
			}
		})
	}
}

func TestIssueServerDefaultsAndErrors(t *testing.T) {
	ca := newTestCA(t)
	before := time.Now()
	p, err := ca.IssueServer(ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Leaf.Subject.CommonName != "localhost" {
		t.Errorf("default CN %q", p.Leaf.Subject.CommonName)
	}
	if d := p.Leaf.NotAfter.Sub(before); d < DefaultServerValidity-time.Minute || d > DefaultServerValidity+time.Minute {
		t.Errorf("server valid for %v", d)
	}
	if p.Leaf.SerialNumber.Cmp(ca.Cert.SerialNumber) == 0 {
		t.Error("server and CA share a serial")
	}
	p2, err := ca.IssueServer(ServerOptions{NoDefaultHosts: true, Hosts: []string{"10.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Leaf.DNSNames) != 0 || len(p2.Leaf.IPAddresses) != 1 || !p2.Leaf.IPAddresses[0].Equal(net.ParseIP("10.0.0.1")) {
		t.Errorf("NoDefaultHosts SANs: %v %v", p2.Leaf.DNSNames, p2.Leaf.IPAddresses)
	}
	for _, h := range []string{"bad_name", "-x.org", "a..b", "exa mple.org", "", "x.org.", "fe80::1%eth0", strings.Repeat("a", 64) + ".org"} {
		_, err := ca.IssueServer(ServerOptions{Hosts: []string{h}})
		if err == nil || !strings.Contains(err.Error(), "host") {
			t.Errorf("host %q: error %v, want one naming the host", h, err)
		}
	}
	if _, err := ca.IssueServer(ServerOptions{Hosts: []string{"bücher.de"}}); err == nil || !strings.Contains(err.Error(), "punycode") {
		t.Errorf("non-ASCII host: %v", err)
	}
	for host, cn := range map[string]string{"[FE80::1]": "fe80::1", strings.Repeat("a", 60) + ".example.org": "Sepal server"} {
		p, err := ca.IssueServer(ServerOptions{Hosts: []string{host}})
		if err != nil || p.Leaf.Subject.CommonName != cn {
			t.Errorf("host %q: CN %q, %v; want %q", host, p.Leaf.Subject.CommonName, err, cn)
		}
	}
	if _, err := ca.IssueServer(ServerOptions{NoDefaultHosts: true}); err == nil {
		t.Error("no hosts at all: no error")
	}
	if _, err := ca.IssueServer(ServerOptions{NotAfter: ca.Cert.NotAfter.Add(time.Hour)}); err == nil || !strings.Contains(err.Error(), "after its CA") {
		t.Errorf("server outliving its CA: %v", err)
	}
}
