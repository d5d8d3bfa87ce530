package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/superlink"
)

func TestNodeLimitFlags(t *testing.T) {
	c, err := parseArgs([]string{"--insecure"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := superlink.NodeLimits{MaxPingInterval: time.Hour, MaxNodes: superlink.DefaultMaxNodes, MaxPerConnection: superlink.DefaultMaxNodesPerConnection,
		MaxPerIdentity: superlink.DefaultMaxNodesPerIdentity, Rate: superlink.DefaultNodeRegistrationRate, Burst: superlink.DefaultNodeRegistrationBurst}
	if got := c.nodes.limits(); got != want {
		t.Fatalf("default node limits %+v, want %+v", got, want)
	}
	c, err = parseArgs(strings.Fields("--insecure --max-ping-interval 2m --max-nodes 50 --max-nodes-per-connection 2 --node-registration-rate 0.5 --node-registration-burst 1000"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want = superlink.NodeLimits{MaxPingInterval: 2 * time.Minute, MaxNodes: 50, MaxPerConnection: 2, MaxPerIdentity: superlink.DefaultMaxNodesPerIdentity, Rate: 0.5, Burst: 1000}
	if got := c.nodes.limits(); got != want {
		t.Fatalf("node limits %+v, want %+v", got, want)
	}
	if c.mtls.revocations() != nil {
		t.Error("a CRL watch without node certificates")
	}
	for _, bad := range []struct{ args, want string }{
		{"--max-nodes 0", "--max-nodes 0: give 1 or more (default 10000)"},
		{"--max-nodes-per-connection -1", "--max-nodes-per-connection -1: give 1 or more"},
		{"--node-registration-burst 0", "--node-registration-burst 0: give 1 or more"},
		{"--node-registration-rate 0", "--node-registration-rate 0: give a number of calls a second above 0"},
		{"--node-registration-rate NaN", "--node-registration-rate NaN"},
		{"--max-ping-interval 10s", "--max-ping-interval 10s: give 30s or more"},
		{"--max-nodes-per-identity 4", "--max-nodes-per-identity needs --fleet-api-client-ca"},
	} {
		_, err := parseArgs(append([]string{"--insecure"}, strings.Fields(bad.args)...), io.Discard)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want a usage error with %q", bad.args, err, bad.want)
		}
	}
}
