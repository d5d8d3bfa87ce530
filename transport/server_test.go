package transport_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// healthCheck makes one gRPC health call to addr with the dial options.
func TestServerConfigPolicy(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	cfg := transport.ServerConfig(p.Source())
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", cfg.MinVersion)
	}
	if cfg.ClientAuth != tls.NoClientCert || cfg.SessionTicketsDisabled {
		t.Errorf("ClientAuth %v, SessionTicketsDisabled %v", cfg.ClientAuth, cfg.SessionTicketsDisabled)
	}
	if !slices.Equal(cfg.NextProtos, []string{"h2"}) {
		t.Errorf("NextProtos %q, want [h2]", cfg.NextProtos)
	}
	if len(cfg.CipherSuites) != 6 {
		t.Errorf("%d cipher suites, want Mozilla intermediate's 6", len(cfg.CipherSuites))
	}
	for _, id := range cfg.CipherSuites {
		name := tls.CipherSuiteName(id)
		if !strings.HasPrefix(name, "TLS_ECDHE_") || !(strings.Contains(name, "_GCM_") || strings.Contains(name, "CHACHA20_POLY1305")) {
			t.Errorf("cipher suite %s is not ECDHE with AEAD", name)
		}
	}
	for _, c := range cfg.CurvePreferences {
		if !slices.Contains([]tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256, tls.CurveP384}, c) {
			t.Errorf("curve %v offered", c)
		}
	}
}

// alpnSource answers TLS-ALPN-01 hellos with its own certificate, as the
// ACME sources do.
type alpnSource struct {
	testkit.StaticSource
	challenge *tls.Certificate
}

func (s alpnSource) NextProtos() []string { return []string{"acme-tls/1", "h2", ""} }

func (s alpnSource) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if slices.Equal(hello.SupportedProtos, []string{"acme-tls/1"}) {
		return s.challenge, nil
	}
	return s.Cert, nil
}

var (
	_ transport.CertSource = alpnSource{}
	_ transport.ALPNSource = alpnSource{}
)

func TestACMEALPNOnGRPCListener(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	challenge := newPKI(t, selfsigned.ServerOptions{Hosts: []string{"superlink.sepal.test"}, NoDefaultHosts: true})
	src := alpnSource{p.Source(), challenge.Cert}
	if got := transport.ServerConfig(src).NextProtos; !slices.Equal(got, []string{"h2", "acme-tls/1"}) {
		t.Errorf("NextProtos %q, want [h2 acme-tls/1]", got)
	}
	addr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(src)))

	// The validation server's hello: ALPN acme-tls/1 only, SNI the domain.
	conn, err := tls.Dial("tcp", addr, &tls.Config{
		ServerName:         "superlink.sepal.test",
		NextProtos:         []string{"acme-tls/1"},
		InsecureSkipVerify: true, // the ACME validator checks the challenge extension, not the chain
	})
	if err != nil {
		t.Fatalf("acme-tls/1 handshake on the gRPC listener: %v", err)
	}
	st := conn.ConnectionState()
	conn.Close()
	if st.NegotiatedProtocol != "acme-tls/1" {
		t.Errorf("negotiated %q, want acme-tls/1", st.NegotiatedProtocol)
	}
	if !bytes.Equal(st.PeerCertificates[0].Raw, challenge.Pair.Leaf.Raw) {
		t.Errorf("got certificate %q, want the challenge certificate", st.PeerCertificates[0].Subject)
	}

	// gRPC on the same listener still gets h2 and the serving certificate.
	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: p.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testkit.HealthCheck(t, addr, creds); err != nil {
		t.Fatal(err)
	}
}

func TestGRPCOverTLS(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(p.Source())))
	creds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: p.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	var pr peer.Peer
	st, err := testkit.HealthCheck(t, addr, creds, grpc.Peer(&pr))
	if err != nil {
		t.Fatal(err)
	}
	if st != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health %v", st)
	}
	info, ok := pr.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("AuthInfo %T, want TLS", pr.AuthInfo)
	}
	if info.State.Version != tls.VersionTLS13 || info.State.NegotiatedProtocol != "h2" {
		t.Errorf("version %x, ALPN %q; want TLS 1.3 and h2", info.State.Version, info.State.NegotiatedProtocol)
	}

	// The same with --tls-server-name against a name-only certificate.
	named := p.Issue(t, selfsigned.ServerOptions{Hosts: []string{"superlink.sepal.test"}, NoDefaultHosts: true})
	addr = serveGRPC(t, grpc.Creds(transport.ServerCredentials(named.Source())))
	creds, err = transport.ClientCredentials(transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "superlink.sepal.test"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testkit.HealthCheck(t, addr, creds); err != nil {
		t.Fatalf("with ServerName: %v", err)
	}
}

func TestGRPCServerRefusesOldTLSAndCBC(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(p.Source())))
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	dial := func(cfg *tls.Config) (*tls.ConnectionState, error) {
		cfg.RootCAs, cfg.NextProtos, cfg.ServerName = pool, []string{"h2"}, "localhost"
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		st := c.ConnectionState()
		return &st, nil
	}
	cases := []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"TLS 1.1", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}, false},
		{"TLS 1.2 CBC", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256}}, false},
		{"TLS 1.2 static RSA GCM", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}, false},
		{"TLS 1.2 ECDHE GCM", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, true},
		{"TLS 1.2 ECDHE ChaCha20", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}}, true},
		{"TLS 1.3", &tls.Config{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, err := dial(tc.cfg)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if st.NegotiatedProtocol != "h2" {
					t.Errorf("ALPN %q", st.NegotiatedProtocol)
				}
				return
			}
			if err == nil {
				t.Fatalf("handshake succeeded with %s", tls.CipherSuiteName(st.CipherSuite))
			}
			e := transport.Explain(err, addr, transport.ClientOptions{})
			wantExplained(t, e, transport.KindHandshake, transport.ErrHandshake, "TLS handshake", addr, "TLS 1.2")
		})
	}
}

func TestSessionTickets(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveTLS(t, p.Source())
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost", MaxVersion: tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for i, want := range []bool{false, true} {
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ConnectionState().DidResume; got != want {
			t.Errorf("handshake %d: DidResume %v, want %v", i, got, want)
		}
		c.Close()
	}
}

func TestGRPCWrongCAExplained(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	other := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(p.Source())))
	o := transport.ClientOptions{RootCertificates: other.CAFile}
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testkit.HealthCheck(t, addr, creds)
	if err == nil {
		t.Fatal("call with the wrong CA succeeded")
	}
	wantExplained(t, transport.Explain(err, addr, o), transport.KindUnknownAuthority, transport.ErrUnknownAuthority,
		"not signed by", "unknown authority", other.CAFile, "ClientOptions.RootCertificates", addr)
	if !transport.IsPermanent(err) {
		t.Errorf("IsPermanent(raw gRPC error %q) is false", err)
	}
}

func TestGRPCTLSClientPlaintextServerExplained(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t)
	o := transport.ClientOptions{RootCertificates: p.CAFile}
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testkit.HealthCheck(t, addr, creds)
	if err == nil {
		t.Fatal("a TLS call to a plaintext server succeeded")
	}
	e := transport.Explain(err, addr, o)
	if !errors.Is(e, transport.ErrPlaintextPeer) {
		// gRPC may only report the closed connection; Probe tells.
		t.Logf("gRPC said %q; probing", err)
		e = probe(t, addr, o)
	}
	wantExplained(t, e, transport.KindPlaintextPeer, transport.ErrPlaintextPeer, "does not speak TLS", "ClientOptions.Insecure")
}
