package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

const unitFile = "deploy/flower-superlink.service"

// unitExecStart returns the ExecStart command line of the unit, its
// continuation lines joined.
func unitExecStart(t *testing.T, unit string) []string {
	t.Helper()
	joined := strings.ReplaceAll(unit, "\\\n", " ")
	m := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindStringSubmatch(joined)
	if m == nil {
		t.Fatalf("%s has no ExecStart", unitFile)
	}
	return strings.Fields(m[1])
}

// TestSystemdUnit checks deploy/flower-superlink.service with
// systemd-analyze verify (the binary it starts replaced by the one built
// here) and without a warning, that it has the hardening and reload
// docs/operating.md promises, and that flower-superlink accepts every flag of its
// ExecStart with the example environment file's.
func TestSystemdUnit(t *testing.T) {
	needE2E(t)
	t.Parallel()
	analyze := needTool(t, "systemd", "systemd-analyze")
	data, err := os.ReadFile(filepath.Join(moduleRoot(), unitFile))
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	for _, want := range []string{
		"ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"StateDirectory=flower-superlink", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"DynamicUser=yes", "--acme-storage /var/lib/flower-superlink/acme", "--metrics-address 127.0.0.1:",
		"--driver-api-address 127.0.0.1:", "--grpc-rere-fleet-api-address 0.0.0.0:443",
	} {
		if !strings.Contains(strings.ReplaceAll(unit, "\\\n    ", ""), want) {
			t.Errorf("%s lacks %q", unitFile, want)
		}
	}

	// systemd-analyze verify checks that ExecStart is executable: point it
	// at the binary built for these tests.
	dir := t.TempDir()
	verified := filepath.Join(dir, "flower-superlink.service")
	if err := os.WriteFile(verified, []byte(strings.ReplaceAll(unit, "/usr/local/bin/flower-superlink", bin(t, "flower-superlink"))), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, 60*time.Second, dir, []string{"SYSTEMD_LOG_COLOR=0"}, analyze, "verify", verified)
	if code != 0 || strings.Contains(out, "flower-superlink.service") {
		t.Errorf("systemd-analyze verify %s: exit %d:\n%s", unitFile, code, out)
	}
	t.Logf("systemd-analyze verify: exit %d %s", code, strings.TrimSpace(out))

	// Every flag of ExecStart, with the example file's, parses: --version
	// is answered only after the whole command line parsed.
	env, err := os.ReadFile(filepath.Join(moduleRoot(), "deploy", "flower-superlink.env"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^SEPAL_ACME_FLAGS="([^"]*)"$`).FindStringSubmatch(string(env))
	if m == nil {
		t.Fatalf("deploy/flower-superlink.env sets no SEPAL_ACME_FLAGS")
	}
	var args []string
	for _, a := range unitExecStart(t, unit)[1:] {
		if a == "$SEPAL_ACME_FLAGS" {
			args = append(args, strings.Fields(m[1])...)
			continue
		}
		args = append(args, a)
	}
	out, code = run(t, 20*time.Second, dir, nil, "flower-superlink", append(args, "--version")...)
	if code != 0 || !strings.HasPrefix(out, "flower-superlink ") {
		t.Errorf("flower-superlink %s --version: exit %d:\n%s", strings.Join(args, " "), code, out)
	}
}
