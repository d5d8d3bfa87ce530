package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// switchCAs is a ClientCASource whose CRL a test replaces at a moment of
// its choosing.
type switchCAs struct {
	mu   sync.Mutex
	pool *x509.CertPool
	crl  *x509.RevocationList
}

func (s *switchCAs) ClientCAs() (*x509.CertPool, *x509.RevocationList) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool, s.crl
}

func (s *switchCAs) setCRL(l *x509.RevocationList) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crl = l
}

// TestClientAuthReloadDuringHandshake: a CRL that revokes the client's
// certificate lands after the server chose the trust of a handshake (at
// the ClientHello) and before the handshake ends, as a client that stalls
// can arrange. The handshake passes against the old CRL, but the
// connection must not be recorded as checked against the new one: its
// first call's Recheck verifies it and refuses it.
func TestClientAuthReloadDuringHandshake(t *testing.T) {
	p := newMTLSPKI(t)
	_, _, pair := p.client(t, p.CA, transport.RoleNode, "zed", selfsigned.ClientOptions{})
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	empty, err := p.CA.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	revoking, err := p.CA.SignCRL(empty.List, []*big.Int{pair.Leaf.SerialNumber}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	src := &switchCAs{pool: pool, crl: empty.List}
	var r refusals
	addr := serveRecheck(t, p, src, &r, nil)

	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(p.CA.Cert)
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost",
		// Called once the server has sent its CertificateRequest: the
		// server chose its trust already, and has not verified ours yet.
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			src.setCRL(revoking.List)
			return &cert, nil
		}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a call on a connection whose certificate a reload revoked during its handshake: %v, want a refusal naming the revocation", err)
	}
	if got := r.wait(t, 1); got.Cause != transport.CauseRevoked {
		t.Errorf("refusal %v, want revoked", got)
	}
}

// TestClientAuthACMEOnlyWithACMESource: the handshake without a client
// certificate is only for an ACME validation (exactly acme-tls/1 offered)
// on a listener whose source does ACME; any other client offering
// acme-tls/1 must present a certificate.
func TestClientAuthACMEOnlyWithACMESource(t *testing.T) {
	p := newMTLSPKI(t)
	cas := clientCAFile(t, p, time.Hour)
	plain := serveTLSConfig(t, transport.ClientAuthConfig(p.Source(), transport.ClientAuth{CAs: cas, Role: transport.RoleNode}))
	acme := serveTLSConfig(t, transport.ClientAuthConfig(acmeSource{p.Source()}, transport.ClientAuth{CAs: cas, Role: transport.RoleNode}))
	for _, c := range []struct {
		addr   string
		what   string
		protos []string
		ok     bool
	}{
		{plain, "no ACME", []string{"acme-tls/1", "http/1.1"}, false},
		{plain, "no ACME", []string{"acme-tls/1"}, false},
		{acme, "ACME", []string{"acme-tls/1", "http/1.1"}, false},
		{acme, "ACME", []string{"acme-tls/1"}, true},
	} {
		conn, err := tlsDial(c.addr, p.CAFile, c.protos)
		if err == nil {
			// With TLS 1.3 a refusal comes after the client's side of the
			// handshake: a read that waits until its deadline is a
			// session the server kept.
			conn.SetDeadline(time.Now().Add(time.Second))
			_, err = conn.Read(make([]byte, 1))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				err = nil
			}
			conn.Close()
		}
		if c.ok != (err == nil) {
			t.Errorf("source with %s, ALPN %q without a client certificate: %v, want ok %v", c.what, c.protos, err, c.ok)
		}
	}
}

// TestClientCertErrorFixes: every refusal says what to do; its Problem is
// the message up to the fix.
func TestClientCertErrorFixes(t *testing.T) {
	alice := transport.Identity{Role: transport.RoleNode, Name: "alice"}
	for _, c := range []struct {
		e     transport.ClientCertError
		words []string
	}{
		{transport.ClientCertError{Cause: transport.CauseExpired, Role: transport.RoleNode, Identity: alice, Serial: "01", Err: errors.New("x509: expired")},
			[]string{"sepal:node:alice", "x509: expired", "issue a new one"}},
		{transport.ClientCertError{Cause: transport.CauseExpired, Role: transport.RoleServerApp, Subject: "CN=x", Serial: "01", Err: errors.New("x509: expired")},
			[]string{`"CN=x"`, "issue a new one"}},
		{transport.ClientCertError{Cause: transport.CauseRevoked, Role: transport.RoleNode, Identity: alice, Serial: "01"},
			[]string{"is revoked", "needs a new certificate"}},
		{transport.ClientCertError{Cause: transport.CauseBadCertificate, Role: transport.RoleServerApp, Subject: "CN=srv", Serial: "01", Err: errors.New("x509: wrong usage")},
			[]string{"refused", "ServerApp certificate of the client CA"}},
	} {
		msg := c.e.Error()
		if p := c.e.Problem(); !strings.HasPrefix(msg, p+": ") || !strings.HasPrefix(p, "client certificate refused: ") {
			t.Errorf("%s refusal %q: Problem %q is not its start", c.e.Cause, msg, p)
		}
		for _, w := range c.words {
			if !strings.Contains(msg, w) {
				t.Errorf("%s refusal %q lacks %q", c.e.Cause, msg, w)
			}
		}
	}
}
