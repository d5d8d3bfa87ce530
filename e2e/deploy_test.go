package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
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

// TestSystemdUnit checks deploy/flower-superlink.service and its socket
// units with systemd-analyze verify (the binary it starts replaced by the
// one built here) and without a warning, that it has the hardening,
// reload, restart and sockets docs/operating.md promises, and that
// flower-superlink accepts every flag of its ExecStart with the example
// environment file's.
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
		"ExecReload=/bin/kill -HUP $MAINPID", "Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"StateDirectory=flower-superlink", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"DynamicUser=yes", "--acme-storage /var/lib/flower-superlink/acme", "--metrics-address 127.0.0.1:",
		"--driver-api-address 127.0.0.1:", "--grpc-rere-fleet-api-address 0.0.0.0:443",
		"--database /var/lib/flower-superlink/state.db",
	} {
		if !strings.Contains(strings.ReplaceAll(unit, "\\\n    ", ""), want) {
			t.Errorf("%s lacks %q", unitFile, want)
		}
	}

	// systemd-analyze verify checks that ExecStart is executable: point it
	// at the binary built for these tests. The socket units go beside it.
	dir := t.TempDir()
	verified := filepath.Join(dir, "flower-superlink.service")
	if err := os.WriteFile(verified, []byte(strings.ReplaceAll(unit, "/usr/local/bin/flower-superlink", bin(t, "flower-superlink"))), 0o644); err != nil {
		t.Fatal(err)
	}
	sockets := checkSocketUnits(t, unit)
	verify := []string{"verify", verified}
	for name, data := range sockets {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		verify = append(verify, filepath.Join(dir, name))
	}
	out, code := run(t, 60*time.Second, dir, []string{"SYSTEMD_LOG_COLOR=0"}, analyze, verify...)
	if code != 0 || strings.Contains(out, "flower-superlink") {
		t.Errorf("systemd-analyze verify %s and its sockets: exit %d:\n%s", unitFile, code, out)
	}
	t.Logf("systemd-analyze verify of %d units: exit %d %s", len(verify)-1, code, strings.TrimSpace(out))

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

// checkSocketUnits reads deploy/flower-superlink*.socket and checks that
// each passes one socket (Accept=no) named for an API the SuperLink
// knows, no name twice, to the service, that the service requires,
// orders after and inherits every one, and that each socket's address is
// the one its API's flag gives in ExecStart (they must agree). It
// returns the units by file name.
func checkSocketUnits(t *testing.T, unit string) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(moduleRoot(), "deploy", "flower-superlink*.socket"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no deploy/flower-superlink*.socket: %v", err)
	}
	flagOf := map[string]string{
		"fleet": "--grpc-rere-fleet-api-address", "driver": "--driver-api-address", "serverappio": "--serverappio-api-address",
		"control": "--control-api-address", "metrics": "--metrics-address",
	}
	execStart := unitExecStart(t, unit)
	flagValue := func(flag string) string {
		for i, a := range execStart {
			if a == flag && i+1 < len(execStart) {
				return execStart[i+1]
			}
		}
		return ""
	}
	key := func(text, k string) []string {
		var vs []string
		for _, m := range regexp.MustCompile(`(?m)^`+k+`=(.*)$`).FindAllStringSubmatch(text, -1) {
			vs = append(vs, strings.TrimSpace(m[1]))
		}
		return vs
	}
	units := map[string][]byte{}
	named := map[string]string{}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		file, text := filepath.Base(p), string(data)
		units[file] = data
		names, listen := key(text, "FileDescriptorName"), key(text, "ListenStream")
		if len(names) != 1 || len(listen) != 1 {
			t.Errorf("%s: %d FileDescriptorName= and %d ListenStream=, want one of each (systemd names every socket of a unit alike)", file, len(names), len(listen))
			continue
		}
		name := names[0]
		flag, ok := flagOf[name]
		if !ok {
			t.Errorf("%s: FileDescriptorName=%s is no API's name", file, name)
		}
		if other, dup := named[name]; dup {
			t.Errorf("%s and %s both name their socket %s", file, other, name)
		}
		named[name] = file
		if got := key(text, "Accept"); len(got) != 1 || got[0] != "no" {
			t.Errorf("%s: Accept=%v, want no", file, got)
		}
		if got := key(text, "Service"); len(got) != 1 || got[0] != "flower-superlink.service" {
			t.Errorf("%s: Service=%v, want flower-superlink.service", file, got)
		}
		if v := flagValue(flag); v != listen[0] {
			t.Errorf("%s: ListenStream=%s, but ExecStart has %s %q: they must agree", file, listen[0], flag, v)
		}
		for _, k := range []string{"Requires", "After", "Sockets"} {
			if !slices.ContainsFunc(key(unit, k), func(v string) bool { return slices.Contains(strings.Fields(v), file) }) {
				t.Errorf("%s: %s= lacks %s", unitFile, k, file)
			}
		}
	}
	return units
}
