package main

import (
	"context"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A SIGINT or SIGTERM while the ACME certificates are being obtained is a
// graceful stop (exit 0), not a failure to obtain them with advice about
// DNS and ports.
func TestACMEStopWhileObtaining(t *testing.T) {
	release := make(chan struct{})
	ca := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // a CA that does not answer in time
	}))
	defer ca.Close()
	defer close(release)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr strings.Builder
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--acme-domain", "superlink.example.org", "--acme-ca", ca.URL + "/dir",
			"--acme-ca-root", root, "--acme-storage", filepath.Join(dir, "acme"),
			"--driver-api-address", "127.0.0.1:0", "--grpc-rere-fleet-api-address", "127.0.0.1:0"}, &strings.Builder{}, &stderr)
	}()
	time.Sleep(500 * time.Millisecond) // Obtain is under way
	cancel()                           // what SIGINT does through cli.SignalContext
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v, want nil (a graceful stop)\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("run did not return after the stop\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), `msg=serving`) {
		t.Errorf("logged that it serves without a certificate:\n%s", stderr.String())
	}
}

// The HTTP-01 responder's address in use is refused naming its flag.
func TestACMEHTTPAddressInUseNamesTheFlag(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	err = run(context.Background(), []string{"--acme-domain", "superlink.example.org", "--acme-ca", "https://127.0.0.1:1/dir",
		"--acme-storage", filepath.Join(t.TempDir(), "acme"), "--acme-challenge", "http-01",
		"--acme-http-address", busy.Addr().String(),
		"--driver-api-address", "127.0.0.1:0", "--grpc-rere-fleet-api-address", "127.0.0.1:0"}, io.Discard, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "--acme-http-address "+busy.Addr().String()+": ") {
		t.Fatalf("run = %v, want an error that opens with --acme-http-address %s", err, busy.Addr())
	}
}
