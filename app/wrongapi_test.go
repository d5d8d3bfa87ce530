package app

import (
	"context"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

// A client app pointed at the Driver API, and a server app at the Fleet
// API, end at once with an error that says which port is which.
func TestWrongAPIEndsAtOnceNamingThePorts(t *testing.T) {
	link := startLink(t)
	tlsOpts := transport.ClientOptions{RootCertificates: link.caFile}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	err := RunNode(ctx, NodeOptions{Server: link.driver, TLS: tlsOpts, Logger: testLogger(t, "node")})
	if !errors.Is(err, ErrWrongAPI) {
		t.Fatalf("node at the Driver API: %v, want ErrWrongAPI", err)
	}
	for _, w := range []string{link.driver + " is the SuperLink's Driver API, where server apps connect, not its Fleet API",
		"Fleet API (port 9092 by default), such as 127.0.0.1:9092"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
	var we *WrongAPIError
	if !errors.As(err, &we) || we.Addr != link.driver || we.Want != "Fleet API" || we.Found != "Driver API" || we.Instead != "127.0.0.1:9092" {
		t.Errorf("facts: %+v", we)
	}

	_, err = RunFedAvg(ctx, ServerOptions{Server: link.fleet, TLS: tlsOpts, MinNodes: 1, Logger: testLogger(t, "server")})
	if !errors.Is(err, ErrWrongAPI) {
		t.Fatalf("server app at the Fleet API: %v, want ErrWrongAPI", err)
	}
	for _, w := range []string{link.fleet + " is the SuperLink's Fleet API, where client apps (SuperNodes) connect, not its Driver API",
		"Driver API (port 9091 by default), such as 127.0.0.1:9091"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
	if ctx.Err() != nil {
		t.Error("the wrong API was retried until the test's deadline")
	}
}

// A gRPC server that serves neither API is not called a SuperLink port.
func TestWrongAPINotASuperLink(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(l)
	defer srv.Stop()
	err = RunNode(context.Background(), NodeOptions{Server: l.Addr().String(), TLS: transport.ClientOptions{Insecure: true}, MaxRetries: -1})
	if !errors.Is(err, ErrWrongAPI) || !strings.Contains(err.Error(), "does not serve the SuperLink's Fleet API") ||
		!strings.Contains(err.Error(), "is it a SuperLink?") {
		t.Errorf("RunNode at a gRPC server without the APIs: %v", err)
	}
}

// With client certificates required on both APIs, a client app with a
// valid node certificate pointed at the Driver API, and a server app with
// its ServerApp certificate at the Fleet API, are told which port is which,
// not that their certificate was revoked; a revoked node certificate at the
// right port is still told it was revoked.
func TestWrongAPIWithClientCertificatesNamesThePort(t *testing.T) {
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	dir := t.TempDir()
	issue := func(role, name string) (cert, key string, pair *selfsigned.Pair) {
		id, err := transport.NewIdentity(role, name)
		if err != nil {
			t.Fatal(err)
		}
		pair, err = p.CA.IssueClient(selfsigned.ClientOptions{CommonName: name, URIs: []*url.URL{id.URI()}})
		if err != nil {
			t.Fatal(err)
		}
		cert, key = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
		if err := os.WriteFile(cert, pair.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(key, pair.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		return cert, key, pair
	}
	nodeCert, nodeKey, _ := issue(transport.RoleNode, "alice")
	revCert, revKey, rev := issue(transport.RoleNode, "mallory")
	appCert, appKey, _ := issue(transport.RoleServerApp, "app")
	crl, err := p.CA.SignCRL(nil, []*big.Int{rev.Leaf.SerialNumber}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	crlFile := filepath.Join(dir, "crl.pem")
	if err := os.WriteFile(crlFile, crl.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	cas, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: p.CAFile, CRLFile: crlFile, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refused []*transport.ClientCertError
	hook := func(e *transport.ClientCertError) { mu.Lock(); refused = append(refused, e); mu.Unlock() }
	sl := superlink.New(superlink.Options{State: memstate.New(memstate.Options{}), Logger: testLogger(t, "superlink"), ShutdownGrace: time.Second})
	link := testkit.Serve(t, serveOn(sl,
		transport.ClientAuthCredentials(p.Source(), transport.ClientAuth{CAs: cas, Role: transport.RoleNode, Refused: hook}),
		transport.ClientAuthCredentials(p.Source(), transport.ClientAuth{CAs: cas, Role: transport.RoleServerApp, Refused: hook})))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nodeTLS := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: nodeCert, ClientKey: nodeKey, Role: transport.RoleNode}
	appTLS := transport.ClientOptions{RootCertificates: p.CAFile, ClientCertificate: appCert, ClientKey: appKey, Role: transport.RoleServerApp}

	err = RunNode(ctx, NodeOptions{Server: link.Driver, TLS: nodeTLS, Logger: testLogger(t, "node")})
	if !errors.Is(err, ErrWrongAPI) || strings.Contains(err.Error(), "revoked") ||
		!strings.Contains(err.Error(), link.Driver+" is the SuperLink's Driver API, where server apps connect, not its Fleet API") {
		t.Errorf("a node certificate at the Driver API: %v, want ErrWrongAPI saying it is the Driver API", err)
	}
	_, err = RunFedAvg(ctx, ServerOptions{Server: link.Fleet, TLS: appTLS, MinNodes: 1, Logger: testLogger(t, "server")})
	if !errors.Is(err, ErrWrongAPI) || strings.Contains(err.Error(), "revoked") ||
		!strings.Contains(err.Error(), link.Fleet+" is the SuperLink's Fleet API, where client apps (SuperNodes) connect, not its Driver API") {
		t.Errorf("a ServerApp certificate at the Fleet API: %v, want ErrWrongAPI saying it is the Fleet API", err)
	}
	// The SuperLink's side says wrong role, once per connection.
	mu.Lock()
	var roles []string
	for _, e := range refused {
		if e.Cause != transport.CauseWrongRole {
			t.Errorf("refused for %s, want %s: %v", e.Cause, transport.CauseWrongRole, e)
		}
		roles = append(roles, e.Identity.String())
	}
	mu.Unlock()
	if len(roles) == 0 {
		t.Error("the SuperLink did not report the wrong role")
	}

	// A revoked node certificate at the Fleet API: revoked, not a port.
	revTLS := nodeTLS
	revTLS.ClientCertificate, revTLS.ClientKey = revCert, revKey
	err = RunNode(ctx, NodeOptions{Server: link.Fleet, TLS: revTLS, Logger: testLogger(t, "revoked")})
	if errors.Is(err, ErrWrongAPI) || !errors.Is(err, transport.ErrClientCertRefused) || !strings.Contains(err.Error(), "has been revoked") {
		t.Errorf("a revoked node certificate at the Fleet API: %v, want it called revoked", err)
	}
	if ctx.Err() != nil {
		t.Error("a refusal was retried until the test's deadline")
	}
}
