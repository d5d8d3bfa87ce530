package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
)

func TestUsage(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "missing APP"},
		{[]string{"client:app"}, `unknown server app "client:app"`},
		{[]string{"server:app", "extra"}, `unexpected argument "extra"`},
		{[]string{"server:app", "--insecure", "--root-certificates", "ca.crt"}, "--insecure and --root-certificates ca.crt conflict"},
		{[]string{"server:app", "--rounds", "0"}, "--rounds 0"},
		{[]string{"server:app", "--min-nodes", "0"}, "--min-nodes 0"},
		{[]string{"server:app", "--max-wait-time", "-1"}, "--max-wait-time"},
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
	if err := run(context.Background(), []string{"--help"}, &out, &errOut); !errors.Is(err, cli.ErrHelp) || !strings.Contains(out.String(), "Examples:\n  flower-server-app server:app") || errOut.Len() != 0 {
		t.Errorf("--help: %v, want the usage on stdout only\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
}

// TestUnspecifiedAddress: the default --server 0.0.0.0:9091 with TLS is
// refused at once with the explanation, not retried.
func TestUnspecifiedAddress(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"server:app", "--server", "0.0.0.0:1"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "0.0.0.0 is an address servers listen on") {
		t.Errorf("run = %v", err)
	}
}
