package transport_test

import (
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// recorder collects handshake events.
type recorder struct {
	mu     sync.Mutex
	events []transport.HandshakeEvent
}

func (r *recorder) observe(e transport.HandshakeEvent) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// next waits for the n-th event (0-based).
func (r *recorder) wait(t *testing.T, n int) transport.HandshakeEvent {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		if len(r.events) > n {
			e := r.events[n]
			r.mu.Unlock()
			return e
		}
		r.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no handshake event #%d within 10s", n+1)
	return transport.HandshakeEvent{}
}

// notReady is a certificate source without a certificate yet.
type notReady struct{}

type temporary struct{}

func (temporary) Error() string   { return "still obtaining" }
func (temporary) Temporary() bool { return true }

func (notReady) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, temporary{}
}

// clientCAs is a fixed client CA pool and CRL.
type clientCAs struct {
	pool *x509.CertPool
	crl  *x509.RevocationList
}

func (c clientCAs) ClientCAs() (*x509.CertPool, *x509.RevocationList) { return c.pool, c.crl }

// clientCert issues a client certificate of role and name from ca, valid
// until notAfter.
func clientCert(t *testing.T, ca *selfsigned.CA, role, name string, notAfter time.Time) tls.Certificate {
	t.Helper()
	id, err := transport.NewIdentity(role, name)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.IssueClient(selfsigned.ClientOptions{CommonName: name, URIs: []*url.URL{id.URI()},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestObserveHandshakes makes real handshakes of every kind against a gRPC
// server whose credentials ObserveHandshakes wraps, and checks the cause
// each one is counted under.
func TestObserveHandshakes(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	other := newPKI(t, selfsigned.ServerOptions{})
	roots := x509.NewCertPool()
	roots.AddCert(p.CA.Cert)
	otherRoots := x509.NewCertPool()
	otherRoots.AddCert(other.CA.Cert)

	// The mutual-TLS server (node certificates from p's CA, one of them
	// revoked), as flower-superlink builds it.
	hour := time.Now().Add(time.Hour)
	good := clientCert(t, p.CA, transport.RoleNode, "alice", hour)
	revoked := clientCert(t, p.CA, transport.RoleNode, "bob", hour)
	revokedLeaf, _ := x509.ParseCertificate(revoked.Certificate[0])
	expired := clientCert(t, p.CA, transport.RoleNode, "carol", time.Now().Add(-time.Hour))
	serverApp := clientCert(t, p.CA, transport.RoleServerApp, "driver", hour)
	stranger := clientCert(t, other.CA, transport.RoleNode, "eve", hour)
	crl, err := p.CA.SignCRL(nil, []*big.Int{revokedLeaf.SerialNumber}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mtls := transport.ClientAuthCredentials(p.Source(), transport.ClientAuth{CAs: clientCAs{roots, crl.List}, Role: transport.RoleNode})

	servers := map[string]credentials.TransportCredentials{
		"tls":      transport.ServerCredentials(p.Source()),
		"mtls":     mtls,
		"notready": transport.ServerCredentials(notReady{}),
	}
	type hs struct {
		name   string
		server string
		cfg    *tls.Config // nil: raw bytes instead of TLS
		raw    string
		want   transport.HandshakeCause
	}
	cases := []hs{
		{name: "ok", server: "tls", cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}}},
		{name: "TLS 1.1", server: "tls", want: transport.CauseVersion,
			cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10, NextProtos: []string{"h2"}}},
		{name: "CBC only", server: "tls", want: transport.CauseCipher,
			cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"},
				CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}}},
		{name: "no ALPN", server: "tls", want: transport.CauseALPN, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost"}},
		{name: "HTTP/1 ALPN", server: "tls", want: transport.CauseALPN, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}}},
		{name: "plaintext HTTP", server: "tls", want: transport.CausePlaintext, raw: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "plaintext gRPC", server: "tls", want: transport.CausePlaintext, raw: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
		{name: "name not held", server: "tls", want: transport.CauseServerName, cfg: &tls.Config{RootCAs: roots, ServerName: "elsewhere.example", NextProtos: []string{"h2"}}},
		{name: "wrong roots", server: "tls", want: transport.CauseRejectedByClient, cfg: &tls.Config{RootCAs: otherRoots, ServerName: "localhost", NextProtos: []string{"h2"}}},
		{name: "closed at once", server: "tls", want: transport.CauseClosed, raw: ""},
		{name: "not ready", server: "notready", want: transport.CauseNotReady, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}}},
		{name: "client cert ok", server: "mtls", cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, Certificates: []tls.Certificate{good}}},
		{name: "no client cert", server: "mtls", want: transport.CauseNoClientCert, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}}},
		{name: "client cert unknown CA", server: "mtls", want: transport.CauseClientUnknownCA, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, GetClientCertificate: present(stranger)}},
		{name: "client cert revoked", server: "mtls", want: transport.CauseClientRevoked, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, Certificates: []tls.Certificate{revoked}}},
		{name: "client cert expired", server: "mtls", want: transport.CauseBadClientCert, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, Certificates: []tls.Certificate{expired}}},
		{name: "server cert as client cert", server: "mtls", want: transport.CauseBadClientCert, cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*p.Cert}}},
		// Admitted, to be refused in words at its calls.
		{name: "ServerApp cert on the Fleet API", server: "mtls", cfg: &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}, Certificates: []tls.Certificate{serverApp}}},
	}
	recs := map[string]*recorder{}
	addrs := map[string]string{}
	for name, creds := range servers {
		r := &recorder{}
		recs[name] = r
		addrs[name] = serveGRPC(t, grpc.Creds(transport.ObserveHandshakes(creds, r.observe)))
	}
	counts := map[string]int{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", addrs[c.server], 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			var clientErr error
			if c.cfg != nil {
				tc := tls.Client(conn, c.cfg)
				clientErr = tc.Handshake()
				if clientErr == nil {
					// TLS 1.3: the server's verdict on the client's
					// certificate comes with the first read.
					tc.SetReadDeadline(time.Now().Add(time.Second))
					var b [1]byte
					_, _ = tc.Read(b[:])
				}
			} else if c.raw != "" {
				conn.Write([]byte(c.raw))
			} else {
				conn.Close()
			}
			e := recs[c.server].wait(t, counts[c.server])
			counts[c.server]++
			if e.Cause != c.want {
				t.Errorf("cause %q, want %q (server error: %v; client error: %v)", e.Cause, c.want, e.Err, clientErr)
			}
			if (e.Err == nil) != (c.want == "") {
				t.Errorf("server error %v with cause %q", e.Err, e.Cause)
			}
			if e.Local == nil || e.Local.String() != addrs[c.server] {
				t.Errorf("local address %v, want %s", e.Local, addrs[c.server])
			}
			t.Logf("%s: cause %q after %v: %v", c.name, e.Cause, e.Duration.Round(time.Microsecond), e.Err)
		})
	}
}

// TestObserveHandshakesNil: nothing to observe leaves the credentials as
// they are.
func TestObserveHandshakesNil(t *testing.T) {
	creds := transport.ServerCredentials(newPKI(t, selfsigned.ServerOptions{}).Source())
	if got := transport.ObserveHandshakes(creds, nil); got != creds {
		t.Errorf("ObserveHandshakes(creds, nil) wrapped the credentials")
	}
	if got := transport.ObserveHandshakes(nil, func(transport.HandshakeEvent) {}); got != nil {
		t.Errorf("ObserveHandshakes(nil, f) = %v, want nil", got)
	}
}

// present makes a client present c whatever CAs the server names (with
// tls.Config.Certificates a Go client sends none of another CA's name).
func present(c tls.Certificate) func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &c, nil }
}
