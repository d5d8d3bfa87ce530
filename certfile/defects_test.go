package certfile

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/selfsigned"
)

// rsaPair makes an RSA key of bits and a server certificate for it, signed
// by ca, or a self-signed CA certificate when ca is nil.
func rsaPair(t *testing.T, bits int, ca *selfsigned.CA) *selfsigned.CA {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	}
	return signRawKey(t, tmpl, ca, key)
}

// RSA keys under 2048 bits are refused wherever they are: the server key,
// the CA certificate, a reused CA.
func TestWeakRSAKeysRefused(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	weakLeaf := rsaPair(t, 1024, ca)
	caFile := write(t, dir, "ca.crt", ca.CertPEM)
	_, err := Check(caFile, write(t, dir, "weak.pem", weakLeaf.CertPEM), write(t, dir, "weak.key", weakLeaf.KeyPEM), time.Time{})
	if !errors.Is(err, ErrWeakKey) || !strings.Contains(err.Error(), "weak.pem") || !strings.Contains(err.Error(), "1024 bits") ||
		!strings.Contains(err.Error(), "issue a new server certificate and key") {
		t.Errorf("RSA-1024 server key: %v", err)
	}

	weakCA := rsaPair(t, 1024, nil)
	leaf, err := weakCA.IssueServer(selfsigned.ServerOptions{KeyType: selfsigned.RSA2048, NotAfter: time.Now().Add(30 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	weakCAFile := write(t, dir, "weakca.crt", weakCA.CertPEM)
	_, err = Check(weakCAFile, write(t, dir, "s.pem", leaf.CertPEM), write(t, dir, "s.key", leaf.KeyPEM), time.Time{})
	if !errors.Is(err, ErrWeakKey) || !strings.Contains(err.Error(), "weakca.crt") || !strings.Contains(err.Error(), "make a new CA") {
		t.Errorf("RSA-1024 CA: %v", err)
	}
	if _, err := LoadCA(weakCAFile, write(t, dir, "weakca.key", weakCA.KeyPEM)); !errors.Is(err, ErrWeakKey) || !strings.Contains(err.Error(), "make a new CA") {
		t.Errorf("LoadCA of an RSA-1024 CA: %v", err)
	}

	// 2048 bits pass.
	ok := rsaPair(t, 2048, ca)
	if _, err := Check(caFile, write(t, dir, "ok.pem", ok.CertPEM), write(t, dir, "ok.key", ok.KeyPEM), time.Time{}); err != nil {
		t.Errorf("RSA-2048: %v", err)
	}
}

// A key encrypted the traditional OpenSSL way (Proc-Type: 4,ENCRYPTED), as
// "openssl genrsa -aes128 -traditional" writes it, is named as encrypted
// with the command that decrypts it, as a PKCS#8 one is; for the CA key too.
func TestTraditionalEncryptedKey(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	p := rsaPair(t, 2048, ca)
	//lint:ignore SA1019 old tools write these keys, which must be refused
	blk, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(p.Key.(*rsa.PrivateKey)), []byte("secret"), x509.PEMCipherAES128) // deprecated, but old tools write these keys
	if err != nil {
		t.Fatal(err)
	}
	enc := pem.EncodeToMemory(blk)
	if !strings.Contains(string(enc), "Proc-Type: 4,ENCRYPTED") {
		t.Fatalf("not a traditional encrypted key:\n%s", enc)
	}
	keyFile := write(t, dir, "enc.key", enc)
	_, err = Check(write(t, dir, "ca.crt", ca.CertPEM), write(t, dir, "s.pem", p.CertPEM), keyFile, time.Time{})
	for _, w := range []string{keyFile, "encrypted with a passphrase", "traditional OpenSSL encryption AES-128-CBC", "openssl pkey -in " + keyFile + " -out PLAIN.key"} {
		if !errors.Is(err, ErrEncrypted) || !strings.Contains(err.Error(), w) {
			t.Errorf("Check: %v, want ErrEncrypted with %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "asn1") {
		t.Errorf("the message shows a parse error: %v", err)
	}
	rsaCA := rsaPair(t, 2048, nil)
	//lint:ignore SA1019 old tools write these keys, which must be refused
	blk, _ = x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaCA.Key.(*rsa.PrivateKey)), []byte("secret"), x509.PEMCipherAES256) // deprecated, but old tools write these keys
	if _, err := LoadCA(write(t, dir, "rsaca.crt", rsaCA.CertPEM), write(t, dir, "rsaca.key", pem.EncodeToMemory(blk))); !errors.Is(err, ErrEncrypted) ||
		!strings.Contains(err.Error(), "CA key") || !strings.Contains(err.Error(), "openssl pkey") {
		t.Errorf("LoadCA: %v", err)
	}
}

func TestKeyModeWarning(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "server.key", []byte("x"))
	if w := KeyModeWarning(p); w != "" {
		t.Errorf("0600: %q", w)
	}
	for _, mode := range []os.FileMode{0o640, 0o644, 0o604, 0o620} {
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		w := KeyModeWarning(p)
		for _, want := range []string{p, "open to other users", "chmod 600 " + p} {
			if !strings.Contains(w, want) {
				t.Errorf("mode %04o: %q lacks %q", mode, w, want)
			}
		}
	}
	if w := KeyModeWarning(dir + "/missing"); w != "" {
		t.Errorf("missing file: %q", w)
	}
}

// A FileSource warns, at start and when a new key is loaded, about a key
// file others can read; serials in its log are as openssl prints them.
func TestFileSourceWarnsOpenKeyAndPrintsOpenSSLSerials(t *testing.T) {
	fx, first := newFixture(t)
	if err := os.Chmod(fx.keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	fx.source(t, time.Hour)
	log := fx.log.String()
	if !strings.Contains(log, "open to other users (mode 0644)") || !strings.Contains(log, "chmod 600") {
		t.Errorf("no warning about the 0644 key:\n%s", log)
	}
	want := certfmt.Serial(first.Leaf.SerialNumber)
	if !strings.Contains(log, "serial="+want) || want != strings.ToUpper(want) {
		t.Errorf("log does not give the serial as openssl does (%s):\n%s", want, log)
	}
}

// After a reported failure, the next good reload says the files are good
// again: when a new good pair comes, and when the served files come back.
func TestFileSourceLogsGoodAgain(t *testing.T) {
	const good = "certificate files are good again"
	fx, first := newFixture(t)
	s := fx.source(t, time.Hour)
	other := fx.issue(t)

	// A mismatched pair (the key of another certificate), then the old key back.
	if err := WriteFileAtomic(fx.keyFile, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Reload of a mismatched pair: %v", err)
	}
	if fx.log.count(good) != 0 {
		t.Fatalf("good again before it is:\n%s", fx.log)
	}
	if err := WriteFileAtomic(fx.keyFile, first.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if fx.log.count(good+"; serving the same certificate") != 1 {
		t.Errorf("restoring the served files is not logged as good again:\n%s", fx.log)
	}
	// Once good, a reload of the same files says nothing more.
	if err := s.Reload(); err != nil || fx.log.count(good) != 1 {
		t.Errorf("an unchanged reload logged good again: %v\n%s", err, fx.log)
	}

	// A broken file, then a new good pair.
	if err := WriteFileAtomic(fx.certFile, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("Reload of a broken certificate file succeeded")
	}
	fx.writePair(t, other)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if fx.log.count(good+" after the failed reload") != 1 {
		t.Errorf("a new good pair after a failure is not logged as good again:\n%s", fx.log)
	}
	if c, _ := s.GetCertificate(nil); c.Leaf.SerialNumber.Cmp(other.Leaf.SerialNumber) != 0 {
		t.Error("the new pair is not served")
	}
}
