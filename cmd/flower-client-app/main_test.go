package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

func TestUsage(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "missing APP"},
		{[]string{"server:app"}, `unknown client app "server:app"`},
		{[]string{"client:app", "extra"}, `unexpected argument "extra"`},
		{[]string{"client:app", "--insecure", "--root-certificates", "ca.crt"}, "--insecure and --root-certificates ca.crt conflict"},
		{[]string{"client:app", "--max-retries", "-2"}, "--max-retries -2"},
		{[]string{"client:app", "--poll-interval", "0s"}, "--poll-interval"},
		{[]string{"client:app", "--bogus"}, "unknown flag: --bogus"},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		err := run(context.Background(), c.args, &out, &errOut)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want a usage error with %q", c.args, err, c.want)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, &out); !errors.Is(err, cli.ErrVersion) || out.String() != name+" "+cli.Version+"\n" {
		t.Errorf("--version: %v %q", err, out.String())
	}
	out.Reset()
	var errOut bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, &errOut); !errors.Is(err, cli.ErrHelp) || !strings.Contains(out.String(), "flower-client-app client:app --root-certificates") || errOut.Len() != 0 {
		t.Errorf("--help: %v, want the usage on stdout only\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
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
