package e2e

import (
	"strings"
	"testing"
	"time"
)

// Command lines that every command refuses at once, before it listens or
// dials.

// An impossible address is a usage error at once (exit 2, naming the flag)
// in every command, never a retry loop; two APIs on one port say so.
func TestImpossibleAddressesAreUsageErrors(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	driver, fleet := freeAddr(t), freeAddr(t)
	type tc struct {
		cmd  string
		args []string
		want string
	}
	var cases []tc
	for _, addr := range []string{"127.0.0.1:99999", ":abc", "host:-1", "localhost:"} {
		cases = append(cases,
			tc{"flower-superlink", []string{"--insecure", "--driver-api-address", addr, "--grpc-rere-fleet-api-address", fleet}, `--driver-api-address "` + addr + `"`},
			tc{"flower-superlink", []string{"--insecure", "--driver-api-address", driver, "--grpc-rere-fleet-api-address", addr}, `--grpc-rere-fleet-api-address "` + addr + `"`},
			tc{"flower-superlink", []string{"--acme-domain", "superlink.example.org", "--acme-challenge", "http-01", "--acme-http-address", addr,
				"--driver-api-address", driver, "--grpc-rere-fleet-api-address", fleet}, "--acme-http-address"},
			tc{"flower-client-app", []string{"client:app", "--insecure", "--server", addr}, `--server "` + addr + `"`},
			tc{"flower-server-app", []string{"server:app", "--insecure", "--server", addr}, `--server "` + addr + `"`},
		)
	}
	cases = append(cases, tc{"flower-superlink", []string{"--insecure", "--driver-api-address", driver, "--grpc-rere-fleet-api-address", driver},
		"--driver-api-address " + driver + " and --grpc-rere-fleet-api-address " + driver + " take the same port"})
	for _, c := range cases {
		bin(t, c.cmd) // built before the clock starts
		start := time.Now()
		out, code := run(t, 20*time.Second, dir, nil, c.cmd, c.args...)
		if code != 2 || !strings.Contains(out, c.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
			t.Errorf("%s %s: exit %d, want 2 and one line with %q:\n%s", c.cmd, strings.Join(c.args, " "), code, c.want, out)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%s %s: took %v, want at once", c.cmd, strings.Join(c.args, " "), d)
		}
	}
}

// The refusals of negative retry limits say what 0 means.
func TestNegativeRetryLimitsRefused(t *testing.T) {
	needE2E(t)
	for _, c := range []struct{ cmd, flag, value string }{
		{"flower-client-app", "--max-retries", "-1"},
		{"flower-client-app", "--max-wait-time", "-2"},
		{"flower-server-app", "--max-retries", "-1"},
	} {
		app := "client:app"
		if c.cmd == "flower-server-app" {
			app = "server:app"
		}
		out, code := run(t, 20*time.Second, t.TempDir(), nil, c.cmd, app, "--insecure", "--server", "127.0.0.1:9", c.flag, c.value)
		if code != 2 || !strings.Contains(out, c.flag+" "+c.value) || !strings.Contains(out, "0 for no") ||
			!strings.Contains(out, "leave the flag out for no limit") || strings.Contains(out, "0 for no limit") {
			t.Errorf("%s %s %s: exit %d:\n%s", c.cmd, c.flag, c.value, code, out)
		}
	}
}
