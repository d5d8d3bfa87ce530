package e2e

// Refusals of bad input and the messages that say what to do, each
// against the built binaries.

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/selfsigned"
)

// killpointsBinary returns flower-certs built with the sepal_killpoints
// tag (a hook that SIGKILLs the process after the N-th step of its set
// write; never in a release binary), built on the first call.
func killpointsBinary(t *testing.T) string {
	t.Helper()
	return buildOnce(t, "flower-certs-killpoints", "./cmd/flower-certs", "-tags", "sepal_killpoints")
}

// certSet is the four files of a flower-certs folder (nil when absent).
type certSet map[string][]byte

var certNames = []string{"ca.crt", "ca.key", "server.pem", "server.key"}

func readCertSet(t *testing.T, dir string) certSet {
	t.Helper()
	s := certSet{}
	for _, n := range certNames {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		s[n] = b
	}
	return s
}

// works reports why the four files do not form a working set, or "".
func (s certSet) works(dir string) string {
	for _, n := range certNames {
		if s[n] == nil {
			return n + " is missing"
		}
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	if _, err := certfile.LoadCA(p("ca.crt"), p("ca.key")); err != nil {
		return err.Error()
	}
	if _, err := certfile.Check(p("ca.crt"), p("server.pem"), p("server.key"), time.Time{}); err != nil {
		return err.Error()
	}
	return ""
}

// TestFlowerCertsKilledAtEveryStep kills flower-certs (SIGKILL) after each
// of its file operations in turn: on a fresh folder, with --force over a
// set (a new server certificate from the same CA) and with --new-ca. After
// each kill no private key is readable by others and no file is cut short;
// unless a journal of a committed write is there, the set is the old one
// or the new one, whole; and the next plain run of the real binary repairs
// what it finds (saying so), never saying "nothing changed" over a broken
// set, and leaves exactly the four files, working together.
func TestFlowerCertsKilledAtEveryStep(t *testing.T) {
	needE2E(t)
	killable := killpointsBinary(t)
	for _, sc := range []struct {
		name string
		args []string
		old  bool // a set is there before
	}{
		{"fresh folder", nil, false},
		{"--force", []string{"--force"}, true},
		{"--new-ca", []string{"--new-ca"}, true},
	} {
		t.Run(sc.name, func(t *testing.T) {
			// The set there before, made once and copied into each folder.
			var old certSet
			if sc.old {
				tmpl := t.TempDir()
				if out, code := run(t, time.Minute, tmpl, nil, "flower-certs"); code != 0 {
					t.Fatalf("first run: exit %d\n%s", code, out)
				}
				old = readCertSet(t, filepath.Join(tmpl, "certificates"))
			}
			steps := 0
			for n := 1; ; n++ {
				work := t.TempDir()
				dir := filepath.Join(work, "certificates")
				if sc.old {
					if err := os.Mkdir(dir, 0o700); err != nil {
						t.Fatal(err)
					}
					for name, b := range old {
						mode := os.FileMode(0o644)
						if strings.HasSuffix(name, ".key") {
							mode = 0o600
						}
						if err := os.WriteFile(filepath.Join(dir, name), b, mode); err != nil {
							t.Fatal(err)
						}
					}
				} else {
					old = readCertSet(t, dir)
				}
				out, code := run(t, time.Minute, work, []string{"SEPAL_KILL_AFTER_STEP=" + strconv.Itoa(n)}, killable, sc.args...)
				if code == 0 {
					if why := readCertSet(t, dir).works(dir); why != "" {
						t.Fatalf("a run that was not killed left a set that does not work: %s", why)
					}
					steps = n - 1
					break
				}
				if code != -1 {
					t.Fatalf("step %d: exit %d, want death by SIGKILL:\n%s", n, code, out)
				}
				entries, _ := os.ReadDir(dir)
				for _, e := range entries {
					p := filepath.Join(dir, e.Name())
					b, _ := os.ReadFile(p)
					fi, _ := os.Stat(p)
					if bytes.Contains(b, []byte("PRIVATE KEY")) && fi.Mode().Perm()&0o077 != 0 {
						t.Errorf("step %d: %s holds a private key with mode %04o", n, e.Name(), fi.Mode().Perm())
					}
				}
				pending := certfile.PendingSet(dir)
				now := readCertSet(t, dir)
				broken := now.works(dir)
				if !pending {
					unchanged := true
					for _, name := range certNames {
						unchanged = unchanged && bytes.Equal(now[name], old[name])
					}
					if !unchanged && broken != "" {
						t.Errorf("step %d: no journal, and the set changed but does not work: %s", n, broken)
					}
				}

				// The next plain run.
				out, code = run(t, time.Minute, work, nil, "flower-certs")
				if code != 0 {
					t.Errorf("step %d: the next run exited %d:\n%s", n, code, out)
					continue
				}
				if pending && !strings.Contains(out, "completed an interrupted write") {
					t.Errorf("step %d: the next run does not say it completed the interrupted write:\n%s", n, out)
				}
				if broken != "" && strings.Contains(out, "nothing changed") && !strings.Contains(out, "an earlier run was stopped") {
					t.Errorf("step %d: \"nothing changed\" over a set that does not work (%s):\n%s", n, broken, out)
				}
				after := readCertSet(t, dir)
				if why := after.works(dir); why != "" {
					t.Errorf("step %d: after the next run the set does not work: %s\n%s", n, why, out)
				}
				entries, _ = os.ReadDir(dir)
				if len(entries) != 4 {
					var names []string
					for _, e := range entries {
						names = append(names, e.Name())
					}
					t.Errorf("step %d: after the next run the folder holds %v, want the four files", n, names)
				}
				if pending && bytes.Equal(after["server.pem"], old["server.pem"]) {
					t.Errorf("step %d: a committed write was rolled back", n)
				}
			}
			if steps < 15 {
				t.Fatalf("flower-certs ran %d steps: the kill points are not reached", steps)
			}
			t.Logf("killed after each of %d steps", steps)
		})
	}
}

// An impossible address is a usage error at once (exit 2, naming the flag)
// in every command, never a retry loop; two APIs on one port say so.
func TestImpossibleAddresses(t *testing.T) {
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
func TestRetryLimitMessages(t *testing.T) {
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

// A server app waiting for nodes logs how many are online and gives up
// after --wait-for-nodes, exit 1, with what to do.
func TestServerAppGivesUpWaitingForNodes(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	sl := slStart(t, dir, "--insecure")
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
func TestAppsAtTheWrongAPI(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	slFlowerCerts(t, dir)
	sl := slStart(t, dir, slSeedArgs...)
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

// flower-certs --days 3650 works on a fresh folder, and prints the serial
// as openssl does.
func TestFlowerCertsTenYearsAndSerial(t *testing.T) {
	needE2E(t)
	work := t.TempDir()
	out, code := run(t, time.Minute, work, nil, "flower-certs", "--days", "3650")
	if code != 0 {
		t.Fatalf("--days 3650: exit %d\n%s", code, out)
	}
	if got := opensslRun(t, work, "verify", "-CAfile", "certificates/ca.crt", "certificates/server.pem"); !strings.Contains(got, "certificates/server.pem: OK") {
		t.Errorf("openssl verify: %s", got)
	}
	serial := strings.TrimPrefix(strings.TrimSpace(opensslRun(t, work, "x509", "-in", "certificates/server.pem", "-noout", "-serial")), "serial=")
	if !strings.Contains(out, "serial "+serial+",") {
		t.Errorf("flower-certs does not print the serial openssl prints (%s):\n%s", serial, out)
	}
	ca := readCertSet(t, filepath.Join(work, "certificates"))
	if why := ca.works(filepath.Join(work, "certificates")); why != "" {
		t.Error(why)
	}
}

// A traditional encrypted key, an RSA-1024 key and a key others can read,
// all from openssl, at the start of flower-superlink.
func TestSuperLinkKeyRefusalsAndWarnings(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	slFlowerCerts(t, dir)
	free := func() []string {
		return []string{"--driver-api-address", freeAddr(t), "--grpc-rere-fleet-api-address", freeAddr(t)}
	}

	// Proc-Type: 4,ENCRYPTED
	opensslRun(t, dir, "genrsa", "-aes128", "-traditional", "-passout", "pass:secret", "-out", "enc.key", "2048")
	if b, _ := os.ReadFile(filepath.Join(dir, "enc.key")); !bytes.Contains(b, []byte("Proc-Type: 4,ENCRYPTED")) {
		t.Fatalf("openssl did not write a traditional encrypted key:\n%s", b)
	}
	out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", append([]string{"--certificates", slCA, slCert, "enc.key"}, free()...)...)
	if code != 1 || !strings.Contains(out, "enc.key") || !strings.Contains(out, "encrypted with a passphrase") ||
		!strings.Contains(out, "openssl pkey -in enc.key -out PLAIN.key") || strings.Contains(out, "asn1") {
		t.Errorf("traditional encrypted key: exit %d:\n%s", code, out)
	}

	// RSA-1024, self-signed, as an old generate.sh-like script makes it.
	opensslRun(t, dir, "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "weak.key", "-out", "weak.pem",
		"-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "30")
	out, code = run(t, 30*time.Second, dir, nil, "flower-superlink", append([]string{"--certificates", "weak.pem", "weak.pem", "weak.key"}, free()...)...)
	if code != 1 || !strings.Contains(out, "1024 bits") || !strings.Contains(out, "2048") {
		t.Errorf("RSA-1024: exit %d:\n%s", code, out)
	}

	// A server key others can read: it serves, with a warning and the chmod.
	if err := os.Chmod(filepath.Join(dir, slKey), 0o644); err != nil {
		t.Fatal(err)
	}
	sl := slStart(t, dir, slSeedArgs...)
	if o := sl.out.String(); !strings.Contains(o, "level=WARN") || !strings.Contains(o, "open to other users (mode 0644)") ||
		!strings.Contains(o, "chmod 600 "+slKey) {
		t.Errorf("no warning about the 0644 key:\n%s", o)
	}
}

// After a failed reload, the next good one says the certificate is good
// again; serials in the log are as openssl prints them.
func TestSuperLinkLogsGoodAgain(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	slFlowerCerts(t, dir)
	sl := slStart(t, dir, append(append([]string{}, slSeedArgs...), "--certificates-poll-interval", "1h")...)
	serial := strings.TrimPrefix(strings.TrimSpace(opensslRun(t, dir, "x509", "-in", slCert, "-noout", "-serial")), "serial=")
	if !strings.Contains(sl.out.String(), "serial="+serial) {
		t.Errorf("the log does not give the serial as openssl does (%s):\n%s", serial, sl.out.String())
	}
	keyPath := filepath.Join(dir, slKey)
	good, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	other, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := certfile.WriteFileAtomic(keyPath, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	sl.cmd.Process.Signal(syscall.SIGHUP)
	sl.waitOutput(t, "certificate reload failed", 10*time.Second)
	if err := certfile.WriteFileAtomic(keyPath, good, 0o600); err != nil {
		t.Fatal(err)
	}
	sl.cmd.Process.Signal(syscall.SIGHUP)
	sl.waitOutput(t, "certificate files are good again", 10*time.Second)
	if o := sl.out.String(); !strings.Contains(o, fmt.Sprintf("serial=%s", serial)) {
		t.Errorf("the good-again line lacks the serial:\n%s", o)
	}
}

// ACME start-up refusals: a storage folder others can write or another user
// owns, an e-mail that is not an address, a domain with a space, a CA that
// cannot be reached; and the storage default without HOME.
func TestACMEStartupRefusals(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	foreign := "/" // root's, when we are not root
	if os.Geteuid() == 0 {
		foreign = filepath.Join(dir, "nobody")
		if err := os.Mkdir(foreign, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(foreign, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	mine := filepath.Join(dir, "mine")
	// A CA address where nothing listens: a port no other test is handed.
	closedCA := "https://" + freeAddr(t) + "/directory"
	// A CA whose HTTPS certificate is not trusted here: start-up ends at
	// once (not after the default --acme-timeout of 3 minutes).
	untrusted := httptest.NewTLSServer(http.NotFoundHandler())
	defer untrusted.Close()
	d := []string{"--acme-domain", "superlink.example.org"}
	for _, c := range []struct {
		args []string
		code int
		want []string
	}{
		{append(d, "--acme-storage", open), 1, []string{"--acme-storage", "can be written by other users (mode 0777)", "chmod 700 " + open}},
		{append(d, "--acme-storage", foreign), 1, []string{"--acme-storage", "belongs to another user", "chown"}},
		{append(d, "--acme-email", "notanaddress"), 2, []string{`--acme-email: e-mail address "notanaddress"`}},
		{[]string{"--acme-domain", "foo bar.example.org"}, 2, []string{`--acme-domain: domain "foo bar.example.org": it contains a space`}},
		{append(d, "--acme-storage", mine, "--acme-ca", closedCA, "--acme-timeout", "2s"), 1,
			[]string{"--acme-ca:", "cannot reach the ACME CA at " + closedCA, "connection refused"}},
		{append(d, "--acme-storage", filepath.Join(dir, "mine2"), "--acme-ca", untrusted.URL+"/directory"), 1,
			[]string{"--acme-ca-root:", "cannot reach the ACME CA at " + untrusted.URL, "is not trusted here", "--acme-ca-root FILE"}},
	} {
		out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", append(c.args,
			"--driver-api-address", freeAddr(t), "--grpc-rere-fleet-api-address", freeAddr(t))...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		last := lines[len(lines)-1]
		if code != c.code {
			t.Errorf("%s: exit %d, want %d:\n%s", strings.Join(c.args, " "), code, c.code, out)
		}
		for _, w := range c.want {
			if !strings.Contains(last, w) {
				t.Errorf("%s: the last line lacks %q:\n%s", strings.Join(c.args, " "), w, out)
			}
		}
		if strings.Contains(last, "DNS for superlink.example.org") {
			t.Errorf("%s: blames the domain's DNS:\n%s", strings.Join(c.args, " "), out)
		}
		if strings.Contains(out, "will retry") {
			t.Errorf("%s: a retry is promised before the exit:\n%s", strings.Join(c.args, " "), out)
		}
	}

	// Without HOME the default is not the current folder.
	cmd := exec.Command(bin(t, "flower-superlink"), "--help")
	cmd.Dir = dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_DATA_HOME=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	help, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(help, []byte("created 0700 (default "))
	if i < 0 {
		t.Fatalf("--help does not give the storage default:\n%s", help)
	}
	def, _, _ := strings.Cut(string(help[i+len("created 0700 (default "):]), ")")
	if !filepath.IsAbs(def) {
		t.Errorf("without HOME the storage default is %q, not an absolute place", def)
	}
}
