package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

var _ transport.ClientCASource = (*certfile.ClientCAFile)(nil)

// mtlsPKI is a CA on disk with its CRL, a server certificate, and client
// certificates issued as the test asks.
type mtlsPKI struct {
	*testkit.PKI
	dir     string
	crlFile string
}

func newMTLSPKI(t testing.TB) *mtlsPKI {
	t.Helper()
	p := &mtlsPKI{PKI: newPKI(t, selfsigned.ServerOptions{}), dir: t.TempDir()}
	p.crlFile = filepath.Join(p.dir, "crl.pem")
	p.revoke(t)
	return p
}

// client issues a client certificate of the identity (role:name; "" for
// none) with o, writes it and its key, and returns their paths.
func (p *mtlsPKI) client(t testing.TB, ca *selfsigned.CA, role, name string, o selfsigned.ClientOptions) (string, string, *selfsigned.Pair) {
	t.Helper()
	if o.CommonName == "" {
		o.CommonName = name
	}
	if role != "" {
		id, err := transport.NewIdentity(role, name)
		if err != nil {
			t.Fatal(err)
		}
		o.URIs = []*url.URL{id.URI()}
	}
	pair, err := ca.IssueClient(o)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(p.dir, role+"-"+name+"-"+pair.Leaf.SerialNumber.Text(16))
	if err := os.WriteFile(base+".pem", pair.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base+".key", pair.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return base + ".pem", base + ".key", pair
}

// revoke writes the CRL listing serials (and those listed before).
func (p *mtlsPKI) revoke(t testing.TB, serials ...*big.Int) {
	t.Helper()
	var prev *x509.RevocationList
	if _, err := os.Stat(p.crlFile); err == nil {
		l, err := certfile.LoadCRL(p.crlFile, p.CA.Cert)
		if err != nil {
			t.Fatal(err)
		}
		prev = l
	}
	crl, err := p.CA.SignCRL(prev, serials, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := certfile.WriteFileAtomic(p.crlFile, crl.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// refusals collects what ClientAuth.Refused receives.
type refusals struct {
	mu   sync.Mutex
	errs []*transport.ClientCertError
}

func (r *refusals) add(e *transport.ClientCertError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, e)
}

// wait returns the n-th refusal, waiting for it a little: the hook runs on
// the server's handshake goroutine, which may end after the client's.
func (r *refusals) wait(t testing.TB, n int) *transport.ClientCertError {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		if len(r.errs) >= n {
			e := r.errs[n-1]
			r.mu.Unlock()
			return e
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("%d refusals reported, want %d", len(r.errs), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// find returns the first refusal after the first skip ones with cause,
// waiting for it a little. (The refusals of a previous case's gRPC call may
// come in after skip was counted.)
func (r *refusals) find(t testing.TB, skip int, cause transport.ClientCertCause) *transport.ClientCertError {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		for _, e := range r.errs[skip:] {
			if e.Cause == cause {
				r.mu.Unlock()
				return e
			}
		}
		seen := fmt.Sprint(r.errs[skip:])
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no refusal with cause %q reported; got %s", cause, seen)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (r *refusals) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.errs)
}

// serveMTLS serves gRPC health on 127.0.0.1:0 with client certificates of
// role required, checked against src.
func serveMTLS(t testing.TB, p *mtlsPKI, src transport.ClientCASource, role string, r *refusals) string {
	t.Helper()
	return serveGRPC(t, grpc.Creds(transport.ClientAuthCredentials(p.Source(), transport.ClientAuth{CAs: src, Role: role, Refused: r.add})))
}

func clientCAFile(t testing.TB, p *mtlsPKI, poll time.Duration) *certfile.ClientCAFile {
	t.Helper()
	s, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: p.CAFile, CRLFile: p.crlFile, PollInterval: poll,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestClientAuth connects to a node-only listener with every kind of
// client certificate: only a valid node certificate of its CA gets in, and
// every refusal names its cause on both sides.
func TestClientAuth(t *testing.T) {
	p := newMTLSPKI(t)
	other := newPKI(t, selfsigned.ServerOptions{})
	nodeCert, nodeKey, _ := p.client(t, p.CA, transport.RoleNode, "alice", selfsigned.ClientOptions{})
	otherCert, otherKey, _ := p.client(t, other.CA, transport.RoleNode, "eve", selfsigned.ClientOptions{})
	revCert, revKey, revPair := p.client(t, p.CA, transport.RoleNode, "mallory", selfsigned.ClientOptions{})
	oldCert, oldKey, _ := p.client(t, p.CA, transport.RoleNode, "old", selfsigned.ClientOptions{
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	anonCert, anonKey, _ := p.client(t, p.CA, "", "anon", selfsigned.ClientOptions{})
	p.revoke(t, revPair.Leaf.SerialNumber)
	// A server certificate presented as a client's.
	srvFiles := p.WriteFiles(t, filepath.Join(p.dir, "server"))

	var r refusals
	var ids identities
	addr := serveRecheck(t, p, clientCAFile(t, p, time.Hour), &r, &ids)

	// A node certificate gets in; the server sees its identity.
	o := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: nodeCert, ClientKey: nodeKey, Role: transport.RoleNode}
	if err := probe(t, addr, o); err != nil {
		t.Fatalf("Probe with a node certificate: %v", err)
	}
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := testkit.HealthCheck(t, addr, creds); err != nil {
		t.Fatalf("a call with a node certificate: %v", err)
	}
	if got := ids.get(); len(got) != 1 || got[0] != "sepal:node:alice" {
		t.Errorf("the server saw identities %q, want [sepal:node:alice]", got)
	}

	for _, c := range []struct {
		name      string
		cert, key string
		cause     transport.ClientCertCause
		client    []string // words of the client's message
		server    []string // words of the server's refusal
	}{
		{"no certificate", "", "", transport.CauseNoCertificate,
			[]string{"requires a client certificate", "ClientOptions.ClientCertificate", "node certificate"}, []string{"client certificate refused", "presented none"}},
		{"another CA", otherCert, otherKey, transport.CauseUnknownCA,
			[]string{"does not trust the CA", otherCert, "sepal:node:eve"}, []string{"sepal:node:eve", "not issued by a CA"}},
		{"revoked", revCert, revKey, transport.CauseRevoked,
			[]string{"revoked", "sepal:node:mallory", "ask the server's operator for a new one"}, []string{"sepal:node:mallory", "is revoked"}},
		{"expired", oldCert, oldKey, transport.CauseExpired,
			[]string{"expired", oldCert}, []string{"sepal:node:old", "expired"}},
		{"no identity", anonCert, anonKey, transport.CauseNoIdentity,
			[]string{"no Sepal identity"}, []string{"no Sepal identity"}},
		{"server certificate", srvFiles.Cert, srvFiles.Key, transport.CauseBadCertificate,
			[]string{"not a client certificate"}, []string{"refused"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: c.cert, ClientKey: c.key, Role: transport.RoleNode}
			mark := r.count()
			err := probe(t, addr, o)
			e := wantExplained(t, err, transport.KindClientCertRefused, transport.ErrClientCertRefused, c.client...)
			if e.Cause != c.cause {
				t.Errorf("client-side cause %q, want %q", e.Cause, c.cause)
			}
			got := r.find(t, mark, c.cause)
			if got.Remote == "" {
				t.Errorf("the refusal lacks the client's address: %v", got)
			}
			for _, w := range c.server {
				if !strings.Contains(got.Error(), w) {
					t.Errorf("the server's refusal lacks %q: %s", w, got)
				}
			}
			t.Logf("server: %s", got)
			// A gRPC call fails too, with an error Explain reads the same.
			creds, err := transport.ClientCredentials(o)
			if err != nil {
				t.Fatal(err)
			}
			_, err = testkit.HealthCheck(t, addr, creds)
			if err == nil {
				t.Fatal("a gRPC call got through")
			}
			var te *transport.Error
			if xe := transport.Explain(err, addr, o); !errors.As(xe, &te) || te.Kind == transport.KindClientCertRefused && te.Cause != c.cause {
				t.Errorf("the gRPC error %q explains as %v", err, xe)
			}
		})
	}
}

// TestClientAuthWrongRole: a valid certificate of another role (a
// ServerApp's on a node-only listener, as when a client dials the other
// API's port) completes its handshake, and every call on it is refused in
// words that name both roles and the API to use; the server reports the
// refusal once, at the handshake. ClientAuthConfig, which no call follows,
// refuses it at the handshake.
func TestClientAuthWrongRole(t *testing.T) {
	p := newMTLSPKI(t)
	appCert, appKey, _ := p.client(t, p.CA, transport.RoleServerApp, "app", selfsigned.ClientOptions{})
	src := clientCAFile(t, p, time.Hour)
	var r refusals
	addr := serveRecheck(t, p, src, &r, nil)
	o := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: appCert, ClientKey: appKey, Role: transport.RoleServerApp}
	if err := probe(t, addr, o); err != nil {
		t.Fatalf("Probe with a ServerApp certificate at a node listener: %v, want its handshake to pass", err)
	}
	got := r.wait(t, 1)
	if got.Cause != transport.CauseWrongRole || got.Remote == "" || !strings.Contains(got.Error(), "sepal:serverapp:app") ||
		!strings.Contains(got.Error(), "is a ServerApp certificate") {
		t.Errorf("the server's refusal: %v", got)
	}
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testkit.HealthCheck(t, addr, creds)
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a call with a ServerApp certificate at a node listener: %v, want Unauthenticated", err)
	}
	for _, w := range []string{"sepal:serverapp:app", "is a ServerApp certificate", "this is the SuperLink's Fleet API, which admits only node certificates",
		"a ServerApp (server app) connects to the Driver API"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the call's refusal %q lacks %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "revoked") {
		t.Errorf("the call's refusal speaks of revocation: %v", err)
	}
	if n := r.count(); n != 2 {
		t.Errorf("%d refusals reported for two connections, want 2", n)
	}

	cfg := serveTLSConfig(t, transport.ClientAuthConfig(p.Source(), transport.ClientAuth{CAs: src, Role: transport.RoleNode}))
	o.Role = transport.RoleNode // a client that knows the listener admits nodes
	err = probe(t, cfg, o)
	if e := wantExplained(t, err, transport.KindClientCertRefused, transport.ErrClientCertRefused, "is a ServerApp certificate", "admits node certificates"); e.Cause != transport.CauseWrongRole {
		t.Errorf("ClientAuthConfig: cause %q, want wrong_role", e.Cause)
	}
}

// TestClientAuthRevokeWhileConnected revokes a node whose connection is
// open: its next call's Recheck refuses it, its next handshake fails, and
// a reissued certificate of the same name gets in; all without a restart.
func TestClientAuthRevokeWhileConnected(t *testing.T) {
	p := newMTLSPKI(t)
	cert, key, pair := p.client(t, p.CA, transport.RoleNode, "bob", selfsigned.ClientOptions{})
	src := clientCAFile(t, p, time.Hour)
	var r refusals
	ln := serveRecheck(t, p, src, &r, nil)

	o := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: cert, ClientKey: key, Role: transport.RoleNode}
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(ln, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(); err != nil {
		t.Fatalf("before the revocation: %v", err)
	}
	p.revoke(t, pair.Leaf.SerialNumber)
	if err := src.Reload(); err != nil {
		t.Fatal(err)
	}
	err = check()
	if err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("the open connection's call after the revocation: %v, want a refusal naming the revocation", err)
	}
	if got := r.wait(t, 1); got.Cause != transport.CauseRevoked {
		t.Errorf("refusal %v, want revoked", got)
	}
	err = probe(t, ln, o)
	if e := wantExplained(t, err, transport.KindClientCertRefused, transport.ErrClientCertRefused, "revoked"); e.Cause != transport.CauseRevoked {
		t.Errorf("a new handshake: cause %q, want revoked", e.Cause)
	}
	// The same name, a new certificate: welcome.
	cert2, key2, _ := p.client(t, p.CA, transport.RoleNode, "bob", selfsigned.ClientOptions{})
	if err := probe(t, ln, transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: cert2, ClientKey: key2}); err != nil {
		t.Fatalf("a reissued certificate: %v", err)
	}
}

// identities records the client identities a server sees.
type identities struct {
	mu  sync.Mutex
	ids []string
}

func (i *identities) get() []string {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]string(nil), i.ids...)
}

// serveRecheck serves gRPC health with node certificates required and an
// interceptor that rechecks each call's certificate, as the SuperLink does,
// and records each call's identity in ids (if not nil).
func serveRecheck(t testing.TB, p *mtlsPKI, src transport.ClientCASource, r *refusals, ids *identities) string {
	t.Helper()
	recheck := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		pr, _ := peer.FromContext(ctx)
		ci, ok := pr.AuthInfo.(*transport.ClientInfo)
		if !ok {
			return nil, fmt.Errorf("AuthInfo %T, want *transport.ClientInfo", pr.AuthInfo)
		}
		if err := ci.Recheck(); err != nil {
			return nil, status.Error(codes.Unauthenticated, err.(*transport.ClientCertError).PeerMessage())
		}
		if ids != nil {
			ids.mu.Lock()
			ids.ids = append(ids.ids, ci.ClientIdentity())
			ids.mu.Unlock()
		}
		return h(ctx, req)
	}
	return serveGRPC(t, grpc.Creds(transport.ClientAuthCredentials(p.Source(), transport.ClientAuth{CAs: src, Role: transport.RoleNode, Refused: r.add})),
		grpc.ChainUnaryInterceptor(recheck))
}

// TestClientAuthCARemoved drops the client CA from the CA file (another CA
// in its place): connections and handshakes with its certificates end.
func TestClientAuthCARemoved(t *testing.T) {
	p := newMTLSPKI(t)
	cert, key, _ := p.client(t, p.CA, transport.RoleNode, "carol", selfsigned.ClientOptions{})
	src := clientCAFile(t, p, time.Hour)
	var r refusals
	addr := serveMTLS(t, p, src, transport.RoleNode, &r)
	o := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: cert, ClientKey: key, Role: transport.RoleNode}
	if err := probe(t, addr, o); err != nil {
		t.Fatal(err)
	}
	other := newPKI(t, selfsigned.ServerOptions{})
	caFile := filepath.Join(p.dir, "clients-ca.crt")
	if err := os.WriteFile(caFile, other.CA.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	src2, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: caFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	addr2 := serveMTLS(t, p, src2, transport.RoleNode, &r)
	err = probe(t, addr2, o)
	if e := wantExplained(t, err, transport.KindClientCertRefused, transport.ErrClientCertRefused, "does not trust the CA"); e.Cause != transport.CauseUnknownCA {
		t.Errorf("cause %q, want unknown_ca", e.Cause)
	}
}

// TestClientAuthACMEValidation: a handshake that offers only acme-tls/1 (a
// CA validating the domain) completes without a client certificate, and
// the connection is then closed; one that offers h2 as well must present a
// certificate.
func TestClientAuthACMEValidation(t *testing.T) {
	p := newMTLSPKI(t)
	var r refusals
	addr := serveGRPC(t, grpc.Creds(transport.ClientAuthCredentials(acmeSource{p.Source()},
		transport.ClientAuth{CAs: clientCAFile(t, p, time.Hour), Role: transport.RoleNode, Refused: r.add})))
	for _, c := range []struct {
		protos []string
		ok     bool
	}{{[]string{"acme-tls/1"}, true}, {[]string{"h2", "acme-tls/1"}, false}, {[]string{"acme-tls/1", "h2"}, false}} {
		conn, err := tlsDial(addr, p.CAFile, c.protos)
		if c.ok {
			if err != nil {
				t.Errorf("ALPN %q: %v, want the handshake to complete", c.protos, err)
				continue
			}
			if conn.ConnectionState().NegotiatedProtocol != "acme-tls/1" {
				t.Errorf("ALPN %q: negotiated %q", c.protos, conn.ConnectionState().NegotiatedProtocol)
			}
			// The server closes it: a read ends.
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Read(make([]byte, 1)); err == nil {
				t.Errorf("ALPN %q: the connection stays open", c.protos)
			}
			conn.Close()
			continue
		}
		if err == nil {
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Errorf("ALPN %q without a client certificate: %v, want certificate required", c.protos, err)
		}
	}
}

// TestClientOptionsClientCertErrors: the client's own certificate options
// are checked before anything is dialled, naming the fields.
func TestClientOptionsClientCertErrors(t *testing.T) {
	p := newMTLSPKI(t)
	cert, key, _ := p.client(t, p.CA, transport.RoleNode, "dave", selfsigned.ClientOptions{})
	_, otherKey, _ := p.client(t, p.CA, transport.RoleNode, "erin", selfsigned.ClientOptions{})
	for _, c := range []struct {
		o     transport.ClientOptions
		words []string
	}{
		{transport.ClientOptions{ClientCertificate: cert}, []string{"ClientOptions.ClientCertificate", "needs ClientOptions.ClientKey"}},
		{transport.ClientOptions{ClientKey: key}, []string{"ClientOptions.ClientKey", "needs ClientOptions.ClientCertificate"}},
		{transport.ClientOptions{ClientCertificate: cert, ClientKey: key, Insecure: true}, []string{"ClientOptions.Insecure and ClientOptions.ClientCertificate conflict"}},
		{transport.ClientOptions{ClientCertificate: cert, ClientKey: otherKey}, []string{"ClientOptions.ClientCertificate", "ClientOptions.ClientKey", "private key does not match"}},
		{transport.ClientOptions{ClientCertificate: cert + ".missing", ClientKey: key}, []string{"no such file"}},
	} {
		_, err := transport.ClientConfig(c.o)
		wantExplained(t, err, transport.KindConfig, transport.ErrConfig, c.words...)
	}
}

// tlsDial completes a TLS handshake with addr offering protos, trusting the
// CA in caFile, without a client certificate.
func tlsDial(addr, caFile string, protos []string) (*tls.Conn, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	return tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: protos})
}

// acmeSource is a source whose listener offers acme-tls/1, as the ACME
// source's does.
type acmeSource struct{ testkit.StaticSource }

func (acmeSource) NextProtos() []string { return []string{"acme-tls/1"} }
