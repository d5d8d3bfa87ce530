package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/transport"
)

// A server app waiting for nodes logs how many are online every
// NodesLogInterval, and gives up after NodesTimeout with a
// *TooFewNodesError.
func TestTooFewNodesGivesUp(t *testing.T) {
	link := startLink(t)
	fakeNode(t, link, 30)
	var log testkit.SyncBuffer
	start := time.Now()
	_, err := RunFedAvg(context.Background(), ServerOptions{Server: link.driver, TLS: transport.ClientOptions{RootCertificates: link.caFile},
		MinNodes: 2, NodesInterval: 50 * time.Millisecond, NodesTimeout: 700 * time.Millisecond, NodesLogInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	var tf *TooFewNodesError
	if !errors.As(err, &tf) || tf.Online != 1 || tf.Need != 2 || tf.Waited != 700*time.Millisecond {
		t.Fatalf("RunFedAvg = %v, want a *TooFewNodesError with 1 of 2 online", err)
	}
	if !strings.Contains(err.Error(), "only 1 of the 2 nodes needed were online after waiting 700ms") {
		t.Errorf("message: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v with a 700ms bound", d)
	}
	// Logged at the start and about every 200 ms after, though the count
	// did not change.
	if n := strings.Count(log.String(), `msg="waiting for nodes" online=1 need=2`); n < 3 {
		t.Errorf("logged the wait %d times, want at least 3 (every 200ms over 700ms):\n%s", n, log.String())
	}
}

// A client app pointed at the Driver API, and a server app at the Fleet
// API, end at once with an error that says which port is which.
func TestWrongAPI(t *testing.T) {
	link := startLink(t)
	tlsOpts := transport.ClientOptions{RootCertificates: link.caFile}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	err := RunNode(ctx, NodeOptions{Server: link.driver, TLS: tlsOpts, Logger: testLogger(t, "node")})
	if !errors.Is(err, ErrWrongAPI) {
		t.Fatalf("node at the Driver API: %v, want ErrWrongAPI", err)
	}
	for _, w := range []string{link.driver + " is the SuperLink's Driver API, where server apps connect, not its Fleet API",
		"--grpc-rere-fleet-api-address (default 9092)", "--server 127.0.0.1:9092"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}

	_, err = RunFedAvg(ctx, ServerOptions{Server: link.fleet, TLS: tlsOpts, MinNodes: 1, Logger: testLogger(t, "server")})
	if !errors.Is(err, ErrWrongAPI) {
		t.Fatalf("server app at the Fleet API: %v, want ErrWrongAPI", err)
	}
	for _, w := range []string{link.fleet + " is the SuperLink's Fleet API, where client apps (SuperNodes) connect, not its Driver API",
		"--driver-api-address (default 9091)", "--server 127.0.0.1:9091"} {
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
