package certfile

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

var (
	_ transport.ClientCASource = (*ClientCAFile)(nil)
	_ transport.Runner         = (*ClientCAFile)(nil)
)

// LoadCRL reads the CRL a CA signed, and refuses it for another CA.
func TestLoadCRL(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	dir := t.TempDir()
	a, _ := ca.IssueClient(selfsigned.ClientOptions{CommonName: "a"})
	first, err := ca.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	second, err := ca.SignCRL(first.List, []*big.Int{a.Leaf.SerialNumber}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	third, err := ca.SignCRL(second.List, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "crl.pem")
	if err := WriteFileAtomic(path, third.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if l, err := LoadCRL(path, ca.Cert); err != nil || l.Number.Int64() != 3 {
		t.Errorf("LoadCRL: %v, %v", l, err)
	}
	if _, err := LoadCRL(path, other.Cert); !errors.Is(err, ErrCRLIssuer) {
		t.Errorf("LoadCRL with another CA: %v, want ErrCRLIssuer", err)
	}
}

// clientCAFixture is a CA file and CRL file on disk.
type clientCAFixture struct {
	ca              *selfsigned.CA
	caFile, crlFile string
	log             *logBuf
}

func newClientCAFixture(t testing.TB) *clientCAFixture {
	t.Helper()
	dir := t.TempDir()
	fx := &clientCAFixture{ca: newTestCA(t), caFile: filepath.Join(dir, "ca.crt"), crlFile: filepath.Join(dir, "crl.pem"), log: &logBuf{}}
	if err := WriteFileAtomic(fx.caFile, fx.ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	fx.revoke(t)
	return fx
}

func (fx *clientCAFixture) revoke(t testing.TB, serials ...*big.Int) *selfsigned.CRL {
	t.Helper()
	var prev *x509.RevocationList
	if l, err := LoadCRL(fx.crlFile, fx.ca.Cert); err == nil {
		prev = l
	}
	crl, err := fx.ca.SignCRL(prev, serials, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(fx.crlFile, crl.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return crl
}

func (fx *clientCAFixture) source(t testing.TB, poll time.Duration) *ClientCAFile {
	t.Helper()
	s, err := NewClientCAFile(ClientCAOptions{CAFile: fx.caFile, CRLFile: fx.crlFile, PollInterval: poll,
		Logger: slog.New(slog.NewTextHandler(fx.log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestClientCAFileChecks: what the start-up checks refuse, each naming the
// file and the fix.
func TestClientCAFileChecks(t *testing.T) {
	fx := newClientCAFixture(t)
	dir := filepath.Dir(fx.caFile)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	server, err := fx.ca.IssueServer(selfsigned.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := selfsigned.NewCA(selfsigned.CAOptions{CommonName: "Other CA"})
	if err != nil {
		t.Fatal(err)
	}
	otherCRL, err := other.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	sameName := namesakeCA(t, fx.ca)
	sameNameCRL, err := sameName.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	future, err := fx.ca.SignCRL(nil, nil, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	crl, _ := os.ReadFile(fx.crlFile)
	der, _ := pem.Decode(crl)
	expiredCA, err := selfsigned.NewCA(selfsigned.CAOptions{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name        string
		caFile, crl string
		want        error
		words       []string
	}{
		{"missing CA file", fx.caFile + ".x", "", ErrMissing, []string{"client CA certificate file", ".x"}},
		{"server certificate as CA", write("server.pem", server.CertPEM), "", ErrNotCA, []string{"is not a CA", "flower-certs"}},
		{"key as CA", write("ca.key", fx.ca.KeyPEM), "", ErrWrongPEMType, []string{"private key"}},
		{"expired CA", write("old-ca.crt", expiredCA.CertPEM), "", ErrExpired, []string{"expired on"}},
		{"missing CRL", fx.caFile, fx.crlFile + ".x", ErrMissing, []string{"CRL file", ".x"}},
		{"CRL of another CA", fx.caFile, write("other-crl.pem", otherCRL.PEM), ErrCRLIssuer, []string{"not by any CA of " + fx.caFile}},
		{"CRL of a CA of the same name", fx.caFile, write("same-crl.pem", sameNameCRL.PEM), ErrCRLIssuer, []string{"does not verify", "made again"}},
		{"certificate as CRL", fx.caFile, write("cert-crl.pem", fx.ca.CertPEM), ErrWrongPEMType, []string{"certificate where the CRL belongs"}},
		{"DER CRL", fx.caFile, write("crl.der", der.Bytes), ErrNotPEM, []string{"openssl crl -inform der"}},
		{"two CRLs", fx.caFile, write("two.pem", append(append([]byte{}, crl...), crl...)), ErrMalformed, []string{"more than one CRL"}},
		{"truncated CRL", fx.caFile, write("cut.pem", append(append([]byte{}, crl...), crl[:40]...)), ErrMalformed, []string{"incomplete PEM block"}},
		{"CRL from the future", fx.caFile, write("future.pem", future.PEM), ErrNotYetValid, []string{"check the clock"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewClientCAFile(ClientCAOptions{CAFile: c.caFile, CRLFile: c.crl, Logger: slog.New(slog.DiscardHandler)})
			if !errors.Is(err, c.want) {
				t.Fatalf("NewClientCAFile: %v, want %v", err, c.want)
			}
			var fe *FileError
			if !errors.As(err, &fe) || fe.Fix == "" {
				t.Errorf("%v is not a *FileError with a fix", err)
			}
			for _, w := range c.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
		})
	}
	if _, err := NewClientCAFile(ClientCAOptions{}); err == nil {
		t.Error("NewClientCAFile without a CA file succeeded")
	}
	// Without a CRL, and with one: what ClientCAs returns.
	s, err := NewClientCAFile(ClientCAOptions{CAFile: fx.caFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if pool, list := s.ClientCAs(); pool == nil || list != nil {
		t.Errorf("ClientCAs without a CRL: %v, %v", pool, list)
	}
}

// TestClientCAFileReload: a revocation is picked up by Reload, by the poll
// and on Reload; a bad CRL keeps the last good one and is logged once.
func TestClientCAFileReload(t *testing.T) {
	fx := newClientCAFixture(t)
	a, _ := fx.ca.IssueClient(selfsigned.ClientOptions{CommonName: "a"})
	b, _ := fx.ca.IssueClient(selfsigned.ClientOptions{CommonName: "b"})
	c, _ := fx.ca.IssueClient(selfsigned.ClientOptions{CommonName: "c"})
	s := fx.source(t, 10*time.Millisecond)
	pool0, crl0 := s.ClientCAs()
	if selfsigned.Revoked(crl0, a.Leaf) {
		t.Fatal("revoked before the revocation")
	}
	if p, l := s.ClientCAs(); p != pool0 || l != crl0 {
		t.Error("ClientCAs returns new pointers without a change")
	}

	// Reload.
	fx.revoke(t, a.Leaf.SerialNumber)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, l := s.ClientCAs(); !selfsigned.Revoked(l, a.Leaf) || l == crl0 {
		t.Fatal("Reload did not serve the new CRL")
	}
	if !strings.Contains(fx.log.String(), "revoked=1") {
		t.Errorf("the log does not count the revoked:\n%s", fx.log)
	}

	// A bad CRL: the last good one stays, and the failure is logged once.
	const failed = "client CA reload failed"
	if err := WriteFileAtomic(fx.crlFile, fx.ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); !errors.Is(err, ErrWrongPEMType) {
		t.Errorf("Reload of a bad CRL: %v", err)
	}
	if _, l := s.ClientCAs(); !selfsigned.Revoked(l, a.Leaf) {
		t.Error("a bad CRL replaced the last good one")
	}
	run(t, s)
	time.Sleep(100 * time.Millisecond) // ten polls
	if n := fx.log.count(failed); n != 1 {
		t.Errorf("the failure was logged %d times, want 1:\n%s", n, fx.log)
	}

	// The poll picks up a good one.
	if err := os.Remove(fx.crlFile); err != nil {
		t.Fatal(err)
	}
	list, err := fx.ca.SignCRL(nil, []*big.Int{a.Leaf.SerialNumber, b.Leaf.SerialNumber}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(fx.crlFile, list.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	waitRevoked(t, s, b.Leaf)

	// Reload (what a command's SIGHUP handler calls), with polls an hour
	// apart.
	s2 := fx.source(t, time.Hour)
	run(t, s2)
	fx.revoke(t, c.Leaf.SerialNumber)
	if err := s2.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, l := s2.ClientCAs(); !selfsigned.Revoked(l, c.Leaf) {
		t.Error("Reload did not pick up the new CRL")
	}
	if !strings.Contains(fx.log.String(), "trigger=reload") {
		t.Errorf("the log does not say Reload triggered the reload:\n%s", fx.log)
	}
}

func waitRevoked(t testing.TB, s *ClientCAFile, c *x509.Certificate) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, l := s.ClientCAs(); selfsigned.Revoked(l, c) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("serial %x is still not revoked", c.SerialNumber)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCheckClient(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, _ := ca.IssueClient(selfsigned.ClientOptions{CommonName: "alice", URIs: []*url.URL{transport.Identity{Role: transport.RoleNode, Name: "alice"}.URI()}})
	other, _ := ca.IssueClient(selfsigned.ClientOptions{CommonName: "bob"})
	old, err := ca.IssueClient(selfsigned.ClientOptions{CommonName: "old", NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	server, _ := ca.IssueServer(selfsigned.ServerOptions{})
	cert, key := write("alice.pem", good.CertPEM), write("alice.key", good.KeyPEM)
	c, err := CheckClient(cert, key, time.Time{})
	if err != nil || c.Leaf.Subject.CommonName != "alice" {
		t.Fatalf("CheckClient: %v, %v", c, err)
	}
	for _, tc := range []struct {
		name      string
		cert, key string
		want      error
		words     []string
	}{
		{"key of another", cert, write("bob.key", other.KeyPEM), ErrKeyMismatch, []string{"client key file", "issue a new one from the SuperLink's CA"}},
		{"expired", write("old.pem", old.CertPEM), write("old.key", old.KeyPEM), ErrExpired, []string{"client certificate file", "expired on"}},
		{"server certificate", write("server.pem", server.CertPEM), write("server.key", server.KeyPEM), ErrWrongUsage, []string{"clientAuth"}},
		{"missing", cert + ".x", key, ErrMissing, []string{".x"}},
		{"swapped", key, cert, ErrWrongPEMType, []string{"swapped"}},
	} {
		if _, err := CheckClient(tc.cert, tc.key, time.Time{}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		} else {
			for _, w := range tc.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %q lacks %q", tc.name, err, w)
				}
			}
		}
	}
}
