package e2e

import (
	"strings"
	"testing"
	"time"
)

// The client and server apps against a real flower-superlink: what they
// say and when they give up.

// A server app waiting for nodes logs how many are online and gives up
// after --wait-for-nodes, exit 1, with what to do.
func TestServerAppGivesUpWaitingForNodes(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{args: []string{"--insecure"}})
	dir := sl.dir
	bin(t, "flower-server-app") // built before the clock starts
	start := time.Now()
	out, code := run(t, time.Minute, dir, nil, "flower-server-app", "server:app", "--insecure", "--server", sl.driver,
		"--min-nodes", "2", "--wait-for-nodes", "2s")
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	for _, w := range []string{`msg="waiting for nodes" online=0 need=2`, "gives_up_in=2s",
		"only 0 of the 2 nodes needed were online after waiting 2s (--min-nodes 2, --wait-for-nodes 2s)", "flower-client-app"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("gave up after %v with --wait-for-nodes 2s", d)
	}
}

// The apps pointed at the wrong API say so and which port is which, at
// once (exit 1, no retry).
func TestAppsAtTheWrongAPISayWhichIsWhich(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{certs: true})
	dir := sl.dir
	for _, c := range []struct {
		cmd, app, server string
		want             []string
	}{
		{"flower-client-app", "client:app", sl.driver, []string{sl.driver + " is the SuperLink's Driver API, where server apps connect, not its Fleet API",
			"--grpc-rere-fleet-api-address (default 9092)"}},
		{"flower-server-app", "server:app", sl.fleet, []string{sl.fleet + " is the SuperLink's Fleet API, where client apps (SuperNodes) connect, not its Driver API",
			"--driver-api-address (default 9091)"}},
	} {
		bin(t, c.cmd) // built before the clock starts
		start := time.Now()
		out, code := run(t, time.Minute, dir, nil, c.cmd, c.app, "--root-certificates", slCA, "--server", c.server)
		if code != 1 {
			t.Errorf("%s at %s: exit %d, want 1:\n%s", c.cmd, c.server, code, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", c.cmd, w, out)
			}
		}
		if strings.Contains(out, "Unimplemented") || strings.Contains(out, "retrying") {
			t.Errorf("%s: gRPC's words or a retry:\n%s", c.cmd, out)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s took %v", c.cmd, d)
		}
	}
}
