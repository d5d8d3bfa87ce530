package acme

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeBackend records which names the Source asks for.
type fakeBackend struct {
	mu     sync.Mutex
	asked  []string
	chall  int
	leaves map[string]*x509.Certificate
}

func (f *fakeBackend) certificate(_ *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, name)
	leaf, ok := f.leaves[name]
	if !ok {
		return nil, errors.New("none")
	}
	return &tls.Certificate{Certificate: [][]byte{{1}}, Leaf: leaf}, nil
}

func (f *fakeBackend) challengeCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chall++
	return &tls.Certificate{}, nil
}

func (f *fakeBackend) httpHandler() http.Handler { return http.NotFoundHandler() }
func (f *fakeBackend) obtain(context.Context, string) (*x509.Certificate, bool, error) {
	return nil, false, errors.New("unused")
}
func (f *fakeBackend) stop() {}

func newFakeSource(t *testing.T, log *slog.Logger) (*Source, *fakeBackend) {
	t.Helper()
	o, err := Options{Domains: []string{"a.test", "b.test"}, Logger: log}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeBackend{leaves: map[string]*x509.Certificate{
		"a.test": {SerialNumber: big.NewInt(1), NotAfter: time.Now()},
		"b.test": {SerialNumber: big.NewInt(2), NotAfter: time.Now()},
	}}
	s := &Source{opts: o, log: o.Logger, b: f, domains: map[string]bool{"a.test": true, "b.test": true}, protos: []string{ALPNProto}}
	s.ready.Store(true) // as after Obtain
	return s, f
}

// Before Obtain has succeeded, only validations are answered: a client's
// handshake is refused at once, without asking the backend (autocert would
// start an order of its own and block the handshake on it).
func TestGetCertificateBeforeObtain(t *testing.T) {
	s, f := newFakeSource(t, nil)
	s.ready.Store(false)
	if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test", SupportedProtos: []string{"h2"}}); err == nil || !strings.Contains(err.Error(), "still being obtained") {
		t.Fatalf("handshake before Obtain: err %v, want a refusal", err)
	}
	if len(f.asked) != 0 {
		t.Fatalf("the backend was asked for %v before Obtain", f.asked)
	}
	if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test", SupportedProtos: []string{ALPNProto}}); err != nil || f.chall != 1 {
		t.Fatalf("validation before Obtain: err %v, %d challenge lookups", err, f.chall)
	}
}

// Clients without SNI, or with a name not managed here, get the first
// domain's certificate; managed names get their own, case-insensitively.
func TestGetCertificateNames(t *testing.T) {
	s, f := newFakeSource(t, nil)
	for _, c := range []struct{ sni, want string }{
		{"", "a.test"}, {"b.test", "b.test"}, {"B.Test.", "b.test"}, {"other.test", "a.test"}, {"127.0.0.1", "a.test"},
	} {
		f.asked = nil
		cert, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: c.sni, SupportedProtos: []string{"h2"}})
		if err != nil {
			t.Fatalf("SNI %q: %v", c.sni, err)
		}
		if len(f.asked) != 1 || f.asked[0] != c.want || cert.Leaf != f.leaves[c.want] {
			t.Errorf("SNI %q: asked the backend for %v, want %s", c.sni, f.asked, c.want)
		}
	}
}

// A TLS-ALPN-01 hello goes to the challenge path, only for managed names.
func TestGetCertificateChallenge(t *testing.T) {
	s, f := newFakeSource(t, nil)
	if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test", SupportedProtos: []string{ALPNProto}}); err != nil {
		t.Fatal(err)
	}
	if f.chall != 1 || len(f.asked) != 0 {
		t.Errorf("challenge hello: %d challenge lookups, regular lookups %v", f.chall, f.asked)
	}
	if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "other.test", SupportedProtos: []string{ALPNProto}}); err == nil {
		t.Error("challenge for a name not managed here was answered")
	}
	// acme-tls/1 beside h2 is not a validation.
	if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test", SupportedProtos: []string{"h2", ALPNProto}}); err != nil || f.chall != 1 {
		t.Errorf("h2+acme-tls/1 hello treated as a challenge (err %v)", err)
	}
	if got := s.NextProtos(); len(got) != 1 || got[0] != ALPNProto {
		t.Errorf("NextProtos = %v", got)
	}
}

// "serving certificate" is logged once per certificate, not per handshake.
func TestGetCertificateLogsNewCertificateOnce(t *testing.T) {
	var buf bytes.Buffer
	s, f := newFakeSource(t, slog.New(slog.NewTextHandler(&buf, nil)))
	for range 3 {
		if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "serving certificate"); n != 1 {
		t.Fatalf("logged %d times:\n%s", n, buf.String())
	}
	f.leaves["a.test"] = &x509.Certificate{SerialNumber: big.NewInt(3), NotAfter: time.Now()}
	if _, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.test"}); err != nil {
		t.Fatal(err)
	}
	// The serial as "openssl x509 -serial" prints it.
	if n := strings.Count(buf.String(), "serving certificate"); n != 2 || !strings.Contains(buf.String(), "serial=03") {
		t.Fatalf("renewed certificate not logged once:\n%s", buf.String())
	}
}
