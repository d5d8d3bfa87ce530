package certfmt

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// issue makes a certificate of serial for cn, signed by parent (itself
// when nil), with usages eku.
func issue(t *testing.T, cn string, serial int64, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, eku ...x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: eku, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true, IsCA: parent == nil,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func TestRevoked(t *testing.T) {
	ca, caKey := issue(t, "ca", 1, nil, nil)
	other, otherKey := issue(t, "ca", 9, nil, nil) // the same name, another key
	a, _ := issue(t, "a", 2, ca, caKey)
	b, _ := issue(t, "b", 3, ca, caKey)
	x, _ := issue(t, "x", 2, other, otherKey)
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(1),
		ThisUpdate:                time.Now(),
		NextUpdate:                time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(2), RevocationTime: time.Now()}},
	}, ca, caKey)
	if err != nil {
		t.Fatal(err)
	}
	list, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if !Listed(list.RevokedCertificateEntries, big.NewInt(2)) || Listed(list.RevokedCertificateEntries, big.NewInt(3)) || Listed(nil, big.NewInt(2)) {
		t.Error("Listed is wrong")
	}
	if !Revoked(list, a) || Revoked(list, b) || Revoked(nil, a) {
		t.Error("Revoked is wrong")
	}
	if Revoked(list, x) {
		t.Error("the serial of a certificate of another CA of the same name is revoked")
	}
}

func TestHasUsage(t *testing.T) {
	for _, tc := range []struct {
		eku  []x509.ExtKeyUsage
		want bool
	}{
		{nil, true},
		{[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, true},
		{[]x509.ExtKeyUsage{x509.ExtKeyUsageAny}, true},
		{[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, false},
		{[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, true},
	} {
		if got := HasUsage(&x509.Certificate{ExtKeyUsage: tc.eku}, x509.ExtKeyUsageClientAuth); got != tc.want {
			t.Errorf("HasUsage(%v, clientAuth) = %v, want %v", tc.eku, got, tc.want)
		}
	}
	if HasUsage(&x509.Certificate{UnknownExtKeyUsage: []asn1.ObjectIdentifier{{1, 2, 3}}}, x509.ExtKeyUsageClientAuth) {
		t.Error("a certificate with only an unknown usage may be used for clientAuth")
	}
}

func TestReadFirstCert(t *testing.T) {
	c, _ := issue(t, "c", 5, nil, nil)
	d, _ := issue(t, "d", 6, nil, nil)
	dir := t.TempDir()
	write := func(name string, blocks ...*pem.Block) string {
		var data []byte
		for _, b := range blocks {
			data = append(data, pem.EncodeToMemory(b)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := &pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}}
	if got := ReadFirstCert(write("chain.pem", key, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}, &pem.Block{Type: "CERTIFICATE", Bytes: d.Raw})); got == nil || got.Subject.CommonName != "c" {
		t.Errorf("ReadFirstCert of a key, c and d = %v, want c", got)
	}
	for name, p := range map[string]string{
		"missing": filepath.Join(dir, "missing.pem"),
		"no cert": write("key.pem", key),
		"garbled": write("bad.pem", &pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 1}}, &pem.Block{Type: "CERTIFICATE", Bytes: d.Raw}),
		"not PEM": write("der.crt"),
	} {
		if got := ReadFirstCert(p); got != nil {
			t.Errorf("ReadFirstCert (%s) = %v, want nil", name, got.Subject)
		}
	}
}

// ReadCerts reads every certificate that parses, skipping the rest.
func TestReadCerts(t *testing.T) {
	c, _ := issue(t, "c", 5, nil, nil)
	d, _ := issue(t, "d", 6, nil, nil)
	var data []byte
	for _, b := range []*pem.Block{{Type: "CERTIFICATE", Bytes: []byte{0x30, 1}}, {Type: "PRIVATE KEY", Bytes: []byte{1}},
		{Type: "CERTIFICATE", Bytes: c.Raw}, {Type: "CERTIFICATE", Bytes: d.Raw}} {
		data = append(data, pem.EncodeToMemory(b)...)
	}
	p := filepath.Join(t.TempDir(), "roots.pem")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := ReadCerts(p); len(got) != 2 || got[0].Subject.CommonName != "c" || got[1].Subject.CommonName != "d" {
		t.Errorf("ReadCerts = %v, want c and d", got)
	}
	if got := ReadCerts(p + ".missing"); got != nil {
		t.Errorf("ReadCerts of a missing file = %v", got)
	}
}

// MadeBySepal tells flower-certs' certificates (organization Sepal) from
// others, such as an ACME CA's.
func TestMadeBySepal(t *testing.T) {
	for _, tc := range []struct {
		c    *x509.Certificate
		want bool
	}{
		{nil, false},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "localhost", Organization: []string{Organization}}}, true},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "superlink.example.org"}}, false},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "x", Organization: []string{"Let's Encrypt"}}}, false},
	} {
		if got := MadeBySepal(tc.c); got != tc.want {
			t.Errorf("MadeBySepal(%v) = %v, want %v", tc.c, got, tc.want)
		}
	}
}
