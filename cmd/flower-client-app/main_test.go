package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

func TestUsage(t *testing.T) {
	testkit.CheckCommandLine(t, run, name, []testkit.UsageCase{
		{Args: nil, Want: "missing APP"},
		{Args: []string{"server:app"}, Want: `unknown client app "server:app"`},
		{Args: []string{"client:app", "extra"}, Want: `unexpected argument "extra"`},
		{Args: []string{"client:app", "--insecure", "--root-certificates", "ca.crt"}, Want: "--insecure and --root-certificates ca.crt conflict"},
		{Args: []string{"client:app", "--max-retries", "-2"}, Want: "--max-retries -2"},
		{Args: []string{"client:app", "--poll-interval", "0s"}, Want: "--poll-interval"},
		{Args: []string{"client:app", "--bogus"}, Want: "unknown flag: --bogus"},
	}, "flower-client-app client:app --root-certificates")
}

// TestWrongCA: a server whose certificate the given CA did not sign ends
// the command at once with transport's explanation naming the file.
func TestWrongCA(t *testing.T) {
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*p.Cert}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	caFile := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{}).CAFile // another CA
	var out, errOut bytes.Buffer
	start := time.Now()
	err = run(context.Background(), []string{"client:app", "--root-certificates", caFile, "--server", l.Addr().String()}, &out, &errOut)
	if !errors.Is(err, transport.ErrUnknownAuthority) || !strings.Contains(err.Error(), caFile) {
		t.Errorf("run = %v, want an unknown-authority explanation naming %s", err, caFile)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %s: TLS failures must not be retried", d)
	}
}
