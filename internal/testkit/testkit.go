// Package testkit holds what the tests of several packages share: a CA and
// a server certificate made in the test (NewPKI), a CertSource serving one
// fixed certificate (StaticSource), a SuperLink-like server run on two
// loopback listeners until the test ends (Serve), one gRPC health check
// (HealthCheck, or CheckHealth over a kept connection), a buffer safe for
// concurrent writers (SyncBuffer), and the command-line checks every
// command shares (CheckCommandLine).
//
// It imports selfsigned and certfile but neither transport nor superlink, so that their
// in-package tests can use it. It is for tests only: every helper fails the
// test through t instead of returning an error.
package testkit

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/selfsigned"
)

// StaticSource serves one certificate, whatever the ClientHello asks for.
// It satisfies transport.CertSource and is safe for concurrent use.
type StaticSource struct{ Cert *tls.Certificate }

// GetCertificate returns s.Cert.
func (s StaticSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.Cert, nil
}

// PKI is a CA, its certificate written to a file, and a server certificate
// it issued.
type PKI struct {
	CA     *selfsigned.CA
	CAFile string // the CA certificate (PEM), 0644, in a folder of t.TempDir()
	Pair   *selfsigned.Pair
	Cert   *tls.Certificate // Pair as a tls.Certificate, Leaf set
}

// NewPKI makes a CA with caOpts and issues a server certificate from it
// with so (zero options: the selfsigned defaults, a certificate for
// localhost, 127.0.0.1 and ::1). It fails the test on any error.
func NewPKI(t testing.TB, caOpts selfsigned.CAOptions, so selfsigned.ServerOptions) *PKI {
	t.Helper()
	ca, err := selfsigned.NewCA(caOpts)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return (&PKI{CA: ca, CAFile: caFile}).Issue(t, so)
}

// Issue returns a PKI with the same CA and CA file as p and a new server
// certificate issued with so. It fails the test on any error.
func (p *PKI) Issue(t testing.TB, so selfsigned.ServerOptions) *PKI {
	t.Helper()
	pair, err := p.CA.IssueServer(so)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CA: p.CA, CAFile: p.CAFile, Pair: pair, Cert: &cert}
}

// Source returns a StaticSource serving p.Cert.
func (p *PKI) Source() StaticSource { return StaticSource{Cert: p.Cert} }

// Files are the paths of a CA certificate, server certificate and server
// key, as flower-certs names them.
type Files struct{ CA, Cert, Key string }

// WriteFiles writes the CA certificate, the server certificate and its key
// into dir (made 0700 if missing) as ca.crt and server.pem (0644) and
// server.key (0600), as flower-certs writes them. It fails the test on any
// error.
func (p *PKI) WriteFiles(t testing.TB, dir string) Files {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f := Files{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "server.pem"), Key: filepath.Join(dir, "server.key")}
	for _, w := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{{f.CA, p.CA.CertPEM, 0o644}, {f.Cert, p.Pair.CertPEM, 0o644}, {f.Key, p.Pair.KeyPEM, 0o600}} {
		if err := certfile.WriteFileAtomic(w.path, w.data, w.perm); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// HealthCheck makes one gRPC health check of addr (10 s timeout) over a new
// client with creds, passing callOpts, and returns the status served or
// the call's error. It fails the test only when the client cannot be made.
func HealthCheck(t testing.TB, addr string, creds credentials.TransportCredentials, callOpts ...grpc.CallOption) (healthpb.HealthCheckResponse_ServingStatus, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return CheckHealth(ctx, conn, callOpts...)
}

// CheckHealth makes one gRPC health check (of the whole server) over conn,
// as HealthCheck does over a client of its own, for a test that keeps one
// connection as a monitor does. It returns the status served or the
// call's error.
func CheckHealth(ctx context.Context, conn grpc.ClientConnInterface, callOpts ...grpc.CallOption) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, callOpts...)
	return resp.GetStatus(), err
}

// ServeFunc serves on two listeners, the Fleet API's and the Driver
// API's, until ctx ends, as a SuperLink's Serve does with them.
type ServeFunc func(ctx context.Context, fleet, driver net.Listener) error

// stopTimeout is how long Serve's cleanup waits for the server to return.
const stopTimeout = 15 * time.Second

// Link is a server started by Serve.
type Link struct {
	Fleet, Driver string // the listeners' addresses, 127.0.0.1:port
}

// Serve runs serve on two fresh 127.0.0.1:0 listeners, Fleet API first,
// until the test ends. In cleanup it cancels serve's context and fails
// the test if it returned an error or did not return within 15 s. It does
// not block; it fails the test if it cannot listen.
func Serve(t testing.TB, serve ServeFunc) Link {
	t.Helper()
	fleet, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	driver, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fleet.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, fleet, driver) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(stopTimeout):
			t.Errorf("Serve did not return within %v after its context ended", stopTimeout)
		}
	})
	return Link{Fleet: fleet.Addr().String(), Driver: driver.Addr().String()}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers and readers,
// such as a log handler or a process writing while a test reads. The zero
// value is ready to use.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
