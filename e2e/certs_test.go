package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
)

// opensslRun runs openssl in dir and returns its combined output; openssl
// is the independent judge of what flower-certs writes.
func opensslRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	path := needTool(t, "openssl", "openssl")
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

type certFile struct {
	data  []byte
	mtime time.Time
}

func certFiles(t *testing.T, dir string) map[string]certFile {
	t.Helper()
	m := map[string]certFile{}
	for _, name := range []string{"ca.crt", "ca.key", "server.pem", "server.key"} {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		m[name] = certFile{b, fi.ModTime()}
	}
	return m
}

func serial(t *testing.T, certPEM []byte) string {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	if b == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

func TestFlowerCerts(t *testing.T) {
	needE2E(t)
	work := t.TempDir()
	dir := filepath.Join(work, "certificates")

	out, code := run(t, time.Minute, work, nil, "flower-certs", "--host", "superlink.example.org", "--host", "10.0.0.7")
	if code != 0 {
		t.Fatalf("flower-certs exited %d:\n%s", code, out)
	}
	for _, want := range []string{
		"certificates/ca.crt", "certificates/ca.key", "certificates/server.pem", "certificates/server.key",
		"flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key",
		"flower-client-app client:app --root-certificates certificates/ca.crt --server superlink.example.org:9092",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	if got := opensslRun(t, work, "verify", "-CAfile", "certificates/ca.crt", "certificates/server.pem"); !strings.Contains(got, "certificates/server.pem: OK") {
		t.Errorf("openssl verify: %s", got)
	}
	san := opensslRun(t, work, "x509", "-noout", "-ext", "subjectAltName", "-in", "certificates/server.pem")
	for _, want := range []string{"DNS:localhost", "IP Address:127.0.0.1", "IP Address:0:0:0:0:0:0:0:1", "DNS:superlink.example.org", "IP Address:10.0.0.7"} {
		if !strings.Contains(san, want) {
			t.Errorf("SANs lack %s:\n%s", want, san)
		}
	}
	if got := opensslRun(t, work, "pkey", "-in", "certificates/server.key", "-noout", "-text"); !strings.Contains(got, "NIST CURVE: P-256") {
		t.Errorf("openssl does not see a P-256 key:\n%s", got)
	}

	keyPEM, err := os.ReadFile(filepath.Join(dir, "server.key"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(keyPEM)
	if b == nil || b.Type != "PRIVATE KEY" {
		t.Fatal("server.key holds no PKCS#8 PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if ek, ok := k.(*ecdsa.PrivateKey); err != nil || !ok || ek.Curve != elliptic.P256() {
		t.Errorf("server.key is %T (%v), want ECDSA P-256", k, err)
	}
	for name, want := range map[string]os.FileMode{"server.key": 0o600, "ca.key": 0o600, "server.pem": 0o644, "ca.crt": 0o644, "": 0o700} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %04o, want %04o", filepath.Join("certificates", name), fi.Mode().Perm(), want)
		}
	}

	// A second run changes no file.
	first := certFiles(t, dir)
	time.Sleep(50 * time.Millisecond) // a rewrite would move the mtime
	out, code = run(t, time.Minute, work, nil, "flower-certs", "--host", "superlink.example.org", "--host", "10.0.0.7")
	if code != 0 || !strings.Contains(out, "nothing changed") || !strings.Contains(out, "--force") {
		t.Errorf("second run exited %d:\n%s", code, out)
	}
	for name, f := range certFiles(t, dir) {
		if !bytes.Equal(f.data, first[name].data) || !f.mtime.Equal(first[name].mtime) {
			t.Errorf("the second run changed %s", name)
		}
	}

	// --force issues a new server certificate from the same CA.
	out, code = run(t, time.Minute, work, nil, "flower-certs", "--force", "--host", "superlink.example.org")
	if code != 0 {
		t.Fatalf("flower-certs --force exited %d:\n%s", code, out)
	}
	forced := certFiles(t, dir)
	for _, name := range []string{"ca.crt", "ca.key"} {
		if !bytes.Equal(forced[name].data, first[name].data) || !forced[name].mtime.Equal(first[name].mtime) {
			t.Errorf("--force changed %s; the CA must be kept", name)
		}
	}
	if serial(t, forced["server.pem"].data) == serial(t, first["server.pem"].data) || bytes.Equal(forced["server.key"].data, first["server.key"].data) {
		t.Error("--force did not issue a new server certificate and key")
	}
	if got := opensslRun(t, work, "verify", "-CAfile", "certificates/ca.crt", "certificates/server.pem"); !strings.Contains(got, "certificates/server.pem: OK") {
		t.Errorf("openssl verify after --force: %s", got)
	}
}

func TestFlowerCertsRefusesHalfCA(t *testing.T) {
	needE2E(t)
	work := t.TempDir()
	if out, code := run(t, time.Minute, work, nil, "flower-certs"); code != 0 {
		t.Fatalf("flower-certs exited %d:\n%s", code, out)
	}
	if err := os.Remove(filepath.Join(work, "certificates", "ca.key")); err != nil {
		t.Fatal(err)
	}
	out, code := run(t, time.Minute, work, nil, "flower-certs", "--force")
	if code != 1 || !strings.Contains(out, "certificates/ca.crt exists but certificates/ca.key does not") || !strings.Contains(out, "--new-ca") {
		t.Errorf("half CA: exit %d, want 1 with a message naming ca.key and --new-ca:\n%s", code, out)
	}
	out, code = run(t, time.Minute, t.TempDir(), nil, "flower-certs", "--host", "not_a_host")
	if code != 2 || !strings.Contains(out, `"not_a_host"`) {
		t.Errorf("bad --host: exit %d, want 2 naming the host:\n%s", code, out)
	}
}

// TestFlowerCertsReusesGenerateShCA makes certificates as Flower's
// generate.sh does (openssl, RSA, a CA without a common name), checks that
// Sepal accepts them as they are, and that flower-certs --force issues a new
// server certificate from that CA, so clients keep their ca.crt when they
// move to Sepal. RSA-2048 instead of generate.sh's 4096 keeps it quick.
func TestFlowerCertsReusesGenerateShCA(t *testing.T) {
	needE2E(t)
	work := t.TempDir()
	dir := filepath.Join(work, "certificates")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	conf := `[req]
default_bits = 2048
prompt = no
default_md = sha256
req_extensions = req_ext
distinguished_name = dn

[dn]
C = DE
ST = HH
O = Flower
CN = localhost

[req_ext]
subjectAltName = @alt_names

[alt_names]
DNS.1 = localhost
IP.1 = ::1
IP.2 = 127.0.0.1
`
	if err := os.WriteFile(filepath.Join(work, "certificate.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"genrsa", "-out", "certificates/ca.key", "2048"},
		{"req", "-new", "-x509", "-key", "certificates/ca.key", "-sha256", "-subj", "/C=DE/ST=HH/O=CA, Inc.", "-days", "365", "-out", "certificates/ca.crt"},
		{"genrsa", "-out", "certificates/server.key", "2048"},
		{"req", "-new", "-key", "certificates/server.key", "-out", "certificates/server.csr", "-config", "certificate.conf"},
		{"x509", "-req", "-in", "certificates/server.csr", "-CA", "certificates/ca.crt", "-CAkey", "certificates/ca.key", "-CAcreateserial",
			"-out", "certificates/server.pem", "-days", "365", "-sha256", "-extfile", "certificate.conf", "-extensions", "req_ext"},
	} {
		opensslRun(t, work, args...)
	}
	if _, err := certfile.Check(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), time.Now()); err != nil {
		t.Fatalf("Sepal refuses generate.sh's certificates: %v", err)
	}
	caBefore, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	out, code := run(t, time.Minute, work, nil, "flower-certs")
	if code != 0 || !strings.Contains(out, "nothing changed") {
		t.Fatalf("flower-certs over generate.sh's files exited %d:\n%s", code, out)
	}
	out, code = run(t, time.Minute, work, nil, "flower-certs", "--force")
	if code != 0 || !strings.Contains(out, "Reusing the CA") {
		t.Fatalf("flower-certs --force exited %d:\n%s", code, out)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("flower-certs --force replaced generate.sh's CA")
	}
	if got := opensslRun(t, work, "verify", "-CAfile", "certificates/ca.crt", "certificates/server.pem"); !strings.Contains(got, "certificates/server.pem: OK") {
		t.Errorf("openssl verify of the new server certificate: %s", got)
	}
	if got := opensslRun(t, work, "pkey", "-in", "certificates/server.key", "-noout", "-text"); !strings.Contains(got, "NIST CURVE: P-256") {
		t.Errorf("the new server key is not P-256:\n%s", got)
	}
}

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
