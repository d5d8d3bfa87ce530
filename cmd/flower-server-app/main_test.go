package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/testkit"
)

func TestUsage(t *testing.T) {
	testkit.CheckCommandLine(t, run, name, []testkit.UsageCase{
		{Args: nil, Want: "missing APP"},
		{Args: []string{"client:app"}, Want: `unknown server app "client:app"`},
		{Args: []string{"server:app", "extra"}, Want: `unexpected argument "extra"`},
		{Args: []string{"server:app", "--insecure", "--root-certificates", "ca.crt"}, Want: "--insecure and --root-certificates ca.crt conflict"},
		{Args: []string{"server:app", "--rounds", "0"}, Want: "--rounds 0"},
		{Args: []string{"server:app", "--min-nodes", "0"}, Want: "--min-nodes 0"},
		{Args: []string{"server:app", "--max-wait-time", "-1"}, Want: "--max-wait-time"},
	}, "Examples:\n  flower-server-app server:app")
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
