package certfile

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/selfsigned"
)

// write writes b to dir/name and returns the path.
func write(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// signRaw signs tmpl (with a fresh P-256 key) by parent/parentKey, or
// self-signs it when parent is nil, for certificates IssueServer refuses to
// make.
func signRaw(t testing.TB, tmpl *x509.Certificate, parent *selfsigned.CA) *selfsigned.CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signRawKey(t, tmpl, parent, key)
}

// signRawKey is signRaw for a key of the caller's.
func signRawKey(t testing.TB, tmpl *x509.Certificate, parent *selfsigned.CA, key crypto.Signer) *selfsigned.CA {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	}
	p, signer := tmpl, any(key)
	if parent != nil {
		p, signer = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p, key.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := marshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &selfsigned.CA{Cert: c, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: kp}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca := newTestCA(t)
	issue := func(o selfsigned.ServerOptions) *selfsigned.Pair {
		t.Helper()
		p, err := ca.IssueServer(o)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := issue(selfsigned.ServerOptions{})
	other := issue(selfsigned.ServerOptions{})
	expired := issue(selfsigned.ServerOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	future := issue(selfsigned.ServerOptions{NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)})
	otherCA := namesakeCA(t, ca)
	foreign, err := otherCA.IssueServer(selfsigned.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	noSAN := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "bare"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca)
	clientOnly := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "client"}, DNSNames: []string{"localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca)
	oldCA := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "old CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, nil)
	oldCALeaf := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"localhost"},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(time.Hour)}, oldCA)

	// A chain: root -> intermediate -> leaf; the certificate file holds leaf+intermediate.
	root := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "root"}, IsCA: true, BasicConstraintsValid: true,
		MaxPathLen: 1, KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		SubjectKeyId: []byte{1}}, nil)
	inter := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "intermediate"}, IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(47 * time.Hour),
		SubjectKeyId: []byte{2}}, root)
	chained, err := inter.IssueServer(selfsigned.ServerOptions{NotAfter: now.Add(24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}

	caFile := write(t, dir, "ca.crt", ca.CertPEM)
	certFile := write(t, dir, "server.pem", good.CertPEM)
	keyFile := write(t, dir, "server.key", good.KeyPEM)
	rootFile := write(t, dir, "root.crt", root.CertPEM)
	oldCAFile := write(t, dir, "old-ca.crt", oldCA.CertPEM)
	w := func(name string, b []byte) string { return write(t, dir, name, b) }
	der, _ := pem.Decode(good.CertPEM)
	encKey := pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{0x30, 0}})
	badCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("not a certificate")})
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0}})

	for _, tc := range []struct {
		name              string
		ca, cert, key     string
		want              error
		wantFile          string   // the file the error must name
		wantText          []string // more words the message must hold
		wantChainLen      int      // on success
		checkAtTimeOffset time.Duration
	}{
		{name: "good", ca: caFile, cert: certFile, key: keyFile, wantChainLen: 1},
		{name: "good without a CA file", ca: "", cert: certFile, key: keyFile, wantChainLen: 1},
		{name: "chain served whole", ca: rootFile, cert: w("chain.pem", append(append([]byte{}, chained.CertPEM...), inter.CertPEM...)),
			key: w("chain.key", chained.KeyPEM), wantChainLen: 2},
		{name: "chain in the wrong order", ca: rootFile, cert: w("reversed.pem", append(append([]byte{}, inter.CertPEM...), chained.CertPEM...)),
			key: w("chain.key", chained.KeyPEM), want: ErrKeyMismatch, wantFile: "reversed.pem",
			wantText: []string{"matches certificate 2 of", "server certificate first, then its intermediates"}},
		{name: "chain cut short (written in place)", ca: "", cert: w("cut.pem", append(append([]byte{}, chained.CertPEM...), inter.CertPEM[:len(inter.CertPEM)/2]...)),
			key: w("chain.key", chained.KeyPEM), want: ErrMalformed, wantFile: "cut.pem",
			wantText: []string{"incomplete PEM block"}},
		{name: "chain missing its intermediate", ca: rootFile, cert: w("leafonly.pem", chained.CertPEM), key: w("chain.key", chained.KeyPEM),
			want: ErrUntrusted, wantFile: "leafonly.pem"},
		{name: "missing CA", ca: filepath.Join(dir, "nope.crt"), cert: certFile, key: keyFile,
			want: ErrMissing, wantFile: "nope.crt", wantText: []string{"CA certificate", "flower-certs"}},
		{name: "missing certificate", ca: caFile, cert: filepath.Join(dir, "nope.pem"), key: keyFile,
			want: ErrMissing, wantFile: "nope.pem"},
		{name: "missing key", ca: caFile, cert: certFile, key: filepath.Join(dir, "nope.key"),
			want: ErrMissing, wantFile: "nope.key"},
		{name: "unreadable (a folder)", ca: caFile, cert: dir, key: keyFile, want: ErrUnreadable, wantFile: dir},
		{name: "empty CA", ca: w("empty.crt", nil), cert: certFile, key: keyFile, want: ErrEmpty, wantFile: "empty.crt"},
		{name: "empty certificate", ca: caFile, cert: w("empty.pem", []byte("\n \n")), key: keyFile, want: ErrEmpty, wantFile: "empty.pem"},
		{name: "empty key", ca: caFile, cert: certFile, key: w("empty.key", nil), want: ErrEmpty, wantFile: "empty.key"},
		{name: "certificate not PEM", ca: caFile, cert: w("text.pem", []byte("hello\n")), key: keyFile,
			want: ErrNotPEM, wantFile: "text.pem", wantText: []string{"BEGIN CERTIFICATE"}},
		{name: "certificate in DER", ca: caFile, cert: w("der.pem", der.Bytes), key: keyFile,
			want: ErrNotPEM, wantFile: "der.pem", wantText: []string{"DER", "openssl x509 -inform der"}},
		{name: "key not PEM", ca: caFile, cert: certFile, key: w("text.key", []byte("hello\n")),
			want: ErrNotPEM, wantFile: "text.key", wantText: []string{"BEGIN PRIVATE KEY"}},
		{name: "CA not PEM", ca: w("text.crt", []byte("hello\n")), cert: certFile, key: keyFile, want: ErrNotPEM, wantFile: "text.crt"},
		{name: "key where the certificate belongs", ca: caFile, cert: keyFile, key: keyFile,
			want: ErrWrongPEMType, wantFile: "server.key", wantText: []string{"private key where a certificate belongs", "swapped"}},
		{name: "certificate where the key belongs", ca: caFile, cert: certFile, key: certFile,
			want: ErrWrongPEMType, wantFile: "server.pem", wantText: []string{"certificate where the private key belongs", "swapped"}},
		{name: "swapped", ca: caFile, cert: keyFile, key: certFile, want: ErrWrongPEMType, wantFile: "server.key"},
		{name: "CSR in certificate file", ca: caFile, cert: w("csr.pem", csr), key: keyFile,
			want: ErrWrongPEMType, wantFile: "csr.pem", wantText: []string{"CERTIFICATE REQUEST"}},
		{name: "encrypted key", ca: caFile, cert: certFile, key: w("enc.key", encKey),
			want: ErrEncrypted, wantFile: "enc.key", wantText: []string{"encrypted", "PKCS#8", "openssl pkey"}},
		{name: "malformed certificate", ca: caFile, cert: w("bad.pem", badCert), key: keyFile,
			want: ErrMalformed, wantFile: "bad.pem", wantText: []string{"does not parse"}},
		{name: "key does not match", ca: caFile, cert: certFile, key: w("other.key", other.KeyPEM),
			want: ErrKeyMismatch, wantFile: "other.key", wantText: []string{"does not match", "server.pem", "issue a new server certificate from the same CA"}},
		{name: "expired", ca: caFile, cert: w("expired.pem", expired.CertPEM), key: w("expired.key", expired.KeyPEM),
			want: ErrExpired, wantFile: "expired.pem",
			wantText: []string{"expired on " + stamp(expired.Leaf.NotAfter), stamp(expired.Leaf.NotBefore), "issue a new server certificate from the same CA"}},
		{name: "expired by the given time", ca: caFile, cert: certFile, key: keyFile, checkAtTimeOffset: 400 * 24 * time.Hour,
			want: ErrExpired, wantFile: "server.pem"},
		{name: "not yet valid", ca: caFile, cert: w("future.pem", future.CertPEM), key: w("future.key", future.KeyPEM),
			want: ErrNotYetValid, wantFile: "future.pem",
			wantText: []string{"not valid until " + stamp(future.Leaf.NotBefore), stamp(future.Leaf.NotAfter), "clock"}},
		{name: "signed by another CA", ca: caFile, cert: w("foreign.pem", foreign.CertPEM), key: w("foreign.key", foreign.KeyPEM),
			want: ErrUntrusted, wantFile: "foreign.pem", wantText: []string{"does not chain to the CA in " + caFile, "was the CA made again"}},
		{name: "CA expired", ca: oldCAFile, cert: w("old.pem", oldCALeaf.CertPEM), key: w("old.key", oldCALeaf.KeyPEM),
			want: ErrExpired, wantFile: "old-ca.crt", wantText: []string{"CA certificate", "make a new CA"}},
		{name: "no SANs", ca: caFile, cert: w("nosan.pem", noSAN.CertPEM), key: w("nosan.key", noSAN.KeyPEM),
			want: ErrNoSAN, wantFile: "nosan.pem", wantText: []string{"no subject alternative names", "issue one with the names clients dial"}},
		{name: "client certificate", ca: caFile, cert: w("client.pem", clientOnly.CertPEM), key: w("client.key", clientOnly.KeyPEM),
			want: ErrWrongUsage, wantFile: "client.pem", wantText: []string{"serverAuth"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Check(tc.ca, tc.cert, tc.key, now.Add(tc.checkAtTimeOffset))
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				if c.Leaf == nil || len(c.Certificate) != tc.wantChainLen || c.PrivateKey == nil {
					t.Fatalf("Check gave leaf %v, %d certificates, key %v", c.Leaf != nil, len(c.Certificate), c.PrivateKey != nil)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check error %v, want %v", err, tc.want)
			}
			var fe *FileError
			if !errors.As(err, &fe) || filepath.Base(fe.Path) != filepath.Base(tc.wantFile) {
				t.Fatalf("error %v is not a *FileError for %s", err, tc.wantFile)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, fe.Role+" file "+fe.Path+": ") || !strings.Contains(msg, tc.wantFile) || fe.Fix == "" {
				t.Errorf("message %q does not start with the %s and name a fix", msg, tc.wantFile)
			}
			for _, s := range tc.wantText {
				if !strings.Contains(msg, s) {
					t.Errorf("message %q lacks %q", msg, s)
				}
			}
			for _, f := range []string{tc.key, tc.cert} {
				if b, err := os.ReadFile(f); err == nil && len(b) > 70 && strings.Contains(msg, string(b[40:70])) {
					t.Errorf("message %q holds the content of %s", msg, f)
				}
			}
		})
	}
}

func TestCheckMissingWrapsNotExist(t *testing.T) {
	_, err := Check("", filepath.Join(t.TempDir(), "x.pem"), "y.key", time.Time{})
	if !errors.Is(err, os.ErrNotExist) || !errors.Is(err, ErrMissing) {
		t.Errorf("error %v matches neither os.ErrNotExist nor ErrMissing", err)
	}
}

func TestWarnings(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now()
	soon, err := ca.IssueServer(selfsigned.ServerOptions{NotAfter: now.Add(10 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := soon.TLSCertificate()
	w := Warnings("server.pem", &c, now)
	if len(w) != 1 || !strings.Contains(w[0], "server.pem") || !strings.Contains(w[0], stamp(soon.Leaf.NotAfter)) ||
		!strings.Contains(w[0], "in 10 days") {
		t.Errorf("Warnings for a certificate expiring in 10 days: %q", w)
	}
	late, _ := ca.IssueServer(selfsigned.ServerOptions{})
	c, _ = late.TLSCertificate()
	if w := Warnings("server.pem", &c, now); w != nil {
		t.Errorf("Warnings for a certificate valid a year: %q", w)
	}
}

func TestKeyAlgorithm(t *testing.T) {
	for kt, want := range map[selfsigned.KeyType]string{selfsigned.ECDSAP256: "ECDSA P-256", selfsigned.RSA2048: "RSA-2048", selfsigned.Ed25519: "Ed25519"} {
		ca, err := selfsigned.NewCA(selfsigned.CAOptions{KeyType: kt})
		if err != nil {
			t.Fatal(err)
		}
		if got := KeyAlgorithm(ca.Key.Public()); got != want {
			t.Errorf("KeyAlgorithm(%s) = %q, want %q", kt, got, want)
		}
	}
	if got := KeyAlgorithm(struct{}{}); got != "struct {}" {
		t.Errorf("KeyAlgorithm(unknown) = %q, want the Go type", got)
	}
}

// A server certificate flower-certs did not make and cannot make again (an
// ACME certificate from certbot, with no CA key beside it) is not to be
// re-issued with flower-certs: the start-up refusals and warnings say to
// renew it where it came from. One beside a CA key (Flower's generate.sh
// layout) keeps the flower-certs fix.
func TestCheckACMECertificateFixes(t *testing.T) {
	now := time.Now()
	issuer := signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "Pebble Intermediate CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(48 * time.Hour)}, nil)
	leaf := func(notAfter time.Time) *selfsigned.CA {
		return signRaw(t, &x509.Certificate{Subject: pkix.Name{CommonName: "superlink.example.org"}, DNSNames: []string{"superlink.example.org"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: now.Add(-48 * time.Hour), NotAfter: notAfter}, issuer)
	}
	for _, withCAKey := range []bool{false, true} {
		dir := t.TempDir() // as /etc/letsencrypt/live/NAME, or a generate.sh folder
		w := func(name string, data []byte) string {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}
		if withCAKey {
			w("ca.key", issuer.KeyPEM)
		}
		chain := w("chain.pem", issuer.CertPEM)
		expired := leaf(now.Add(-time.Hour))
		_, err := Check(chain, w("cert.pem", expired.CertPEM), w("privkey.pem", expired.KeyPEM), now)
		var fe *FileError
		if !errors.As(err, &fe) || !errors.Is(err, ErrExpired) {
			t.Fatalf("an expired certificate: %v", err)
		}
		soon := leaf(now.Add(7 * 24 * time.Hour))
		c, err := Check(chain, w("soon.pem", soon.CertPEM), w("soon.key", soon.KeyPEM), now)
		if err != nil {
			t.Fatal(err)
		}
		warn := Warnings(filepath.Join(dir, "soon.pem"), c, now)
		if len(warn) != 1 {
			t.Fatalf("warnings for a certificate ending in 7 days: %q", warn)
		}
		for _, msg := range []string{fe.Fix, warn[0]} {
			if withCAKey != strings.Contains(msg, RemedyIssueServer.String()) || withCAKey == strings.Contains(msg, "ACME client") {
				t.Errorf("CA key beside it %v: %q", withCAKey, msg)
			}
		}
		if want := map[bool]Remedy{true: RemedyIssueServer, false: RemedyRenewElsewhere}[withCAKey]; fe.Remedy != want {
			t.Errorf("CA key beside it %v: Remedy %v, want %v", withCAKey, fe.Remedy, want)
		}
	}
}

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
