package main

import (
	"errors"
	"io"
	"math"
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
		MaxPerIdentity: superlink.DefaultMaxNodesPerIdentity, Rate: superlink.DefaultNodeRegistrationRate, Burst: superlink.DefaultNodeRegistrationBurst,
		CallRate: superlink.DefaultNodeCallRate, CallBurst: superlink.DefaultNodeCallBurst, AuthFailureRate: superlink.DefaultAuthFailureRate, AuthFailureBurst: superlink.DefaultAuthFailureBurst}
	if got := c.nodes.limits(); got != want {
		t.Fatalf("default node limits %+v, want %+v", got, want)
	}
	c, err = parseArgs(strings.Fields("--insecure --max-ping-interval 2m --max-nodes 50 --max-nodes-per-connection 2 --node-registration-rate 0.5 --node-registration-burst 1000 "+
		"--node-call-rate 50 --node-call-burst 3000 --node-auth-failure-rate 0.5 --node-auth-failure-burst 7"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want = superlink.NodeLimits{MaxPingInterval: 2 * time.Minute, MaxNodes: 50, MaxPerConnection: 2, MaxPerIdentity: superlink.DefaultMaxNodesPerIdentity, Rate: 0.5, Burst: 1000,
		CallRate: 50, CallBurst: 3000, AuthFailureRate: 0.5, AuthFailureBurst: 7}
	if got := c.nodes.limits(); got != want {
		t.Fatalf("node limits %+v, want %+v", got, want)
	}
	c, err = parseArgs(strings.Fields("--insecure --node-call-rate 0"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.nodes.limits(); !math.IsInf(got.CallRate, 1) || got.Validate() != nil {
		t.Fatalf("--node-call-rate 0: CallRate %v (%v), want +Inf, no limit", got.CallRate, got.Validate())
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
		{"--node-call-rate -1", "--node-call-rate -1: give a number of call units a second"},
		{"--node-call-rate +Inf", "--node-call-rate +Inf"},
		{"--node-call-burst 0", "--node-call-burst 0: give 1 or more (default 65536)"},
		{"--node-auth-failure-rate 0", "--node-auth-failure-rate 0: give a number of failures a second above 0"},
		{"--node-auth-failure-burst -3", "--node-auth-failure-burst -3: give 1 or more (default 100)"},
	} {
		_, err := parseArgs(append([]string{"--insecure"}, strings.Fields(bad.args)...), io.Discard)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want a usage error with %q", bad.args, err, bad.want)
		}
	}
}
