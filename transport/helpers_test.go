package transport_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

var (
	_ transport.CertSource = testkit.StaticSource{}
	_ transport.CertSource = (*certfile.FileSource)(nil)
	_ transport.Runner     = (*certfile.FileSource)(nil)
)

// newPKI makes a fresh CA with the default options and a server
// certificate it issued with o.
func newPKI(t testing.TB, o selfsigned.ServerOptions) *testkit.PKI {
	t.Helper()
	return testkit.NewPKI(t, selfsigned.CAOptions{}, o)
}

// serveTLS runs a TLS server with ServerConfig(src) on 127.0.0.1:0 that
// completes handshakes, answers as serveTLSConfig does and then drains
// each connection until it closes. It returns the address; the server
// stops at the end of the test.
func serveTLS(t testing.TB, src transport.CertSource) string {
	t.Helper()
	return serveTLSConfig(t, transport.ServerConfig(src))
}

// serveTLSConfig runs a TLS server with cfg on 127.0.0.1:0 that completes
// handshakes and, when h2 was negotiated, writes an empty HTTP/2 SETTINGS
// frame at once, as a gRPC server does (so that Probe hears its verdict
// without waiting out its timeout); then it drains each connection until
// it closes.
func serveTLSConfig(t testing.TB, cfg *tls.Config) string {
	t.Helper()
	return serveTLSAnswering(t, cfg, true)
}

// h2Settings is an empty HTTP/2 SETTINGS frame (RFC 9113, 6.5).
const h2Settings = "\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// serveTLSAnswering is serveTLSConfig; with answer false the server never
// writes after the handshake.
func serveTLSAnswering(t testing.TB, cfg *tls.Config, answer bool) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				tc := c.(*tls.Conn)
				if err := tc.Handshake(); err != nil {
					return
				}
				if answer && tc.ConnectionState().NegotiatedProtocol == transport.ALPNH2 {
					io.WriteString(c, h2Settings)
				}
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// serveGRPC runs a gRPC server with the health service on 127.0.0.1:0 with
// the given options (transport credentials or none) and returns its address.
func serveGRPC(t testing.TB, opts ...grpc.ServerOption) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	done := make(chan struct{})
	go func() { defer close(done); s.Serve(ln) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return ln.Addr().String()
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// flagWord matches a command-line flag, such as --root-certificates.
var flagWord = regexp.MustCompile(`(^|[\s("'])--[a-z][a-z0-9-]*`)

func probe(t testing.TB, addr string, o transport.ClientOptions) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return transport.Probe(ctx, addr, o)
}

// wantExplained checks that err is a one-line *transport.Error of kind k
// matching sentinel, with the permanence of k, whose message holds every
// one of words and names no command-line flag (a Go caller has none; the
// commands word the options as their flags).
func wantExplained(t testing.TB, err error, k transport.Kind, sentinel error, words ...string) *transport.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v", k)
	}
	var e *transport.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %q is not a *transport.Error", err, err)
	}
	if e.Kind != k {
		t.Errorf("kind %v, want %v: %s", e.Kind, k, err)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("errors.Is(err, %v) is false: %s", sentinel, err)
	}
	if got, want := transport.IsPermanent(err), k.Permanent(); got != want {
		t.Errorf("IsPermanent = %v, want %v: %s", got, want, err)
	}
	msg := err.Error()
	t.Logf("%v: %s", k, msg)
	if strings.ContainsAny(msg, "\r\n") {
		t.Errorf("message is not one line: %q", msg)
	}
	if strings.HasPrefix(msg, "transport:") {
		t.Errorf("message starts with the Go package name: %q", msg)
	}
	if f := flagWord.FindString(msg); f != "" {
		t.Errorf("message names the command-line flag %q: %q", f, msg)
	}
	if p := e.Problem(); !strings.HasPrefix(msg, p) {
		t.Errorf("Problem %q is not the start of the message %q", p, msg)
	}
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Errorf("message lacks %q:\n%s", w, msg)
		}
	}
	return e
}
