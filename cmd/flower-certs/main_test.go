package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
)

// runIn runs the command with --dir dir/certificates and returns its stdout.
func runIn(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(append([]string{"--dir", filepath.Join(dir, "certificates")}, args...), &out, &errb)
	return out.String() + errb.String(), err
}

func mustRun(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := runIn(t, dir, args...)
	if err != nil {
		t.Fatalf("flower-certs %q: %v\n%s", args, err, out)
	}
	return out
}

// snapshot is the bytes and mtime of every file in the folder.
type fileState struct {
	data  []byte
	mtime time.Time
	mode  os.FileMode
}

func snapshot(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	m := map[string]fileState{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := os.Stat(p)
		m[e.Name()] = fileState{b, fi.ModTime(), fi.Mode().Perm()}
	}
	return m
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s holds no CERTIFICATE", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func parseKey(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatalf("%s holds no PKCS#8 PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDefaultRun(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	out := mustRun(t, tmp, "--host", "superlink.lab.example.org", "--host", "10.0.0.5,fd00::5")
	p := pathsIn(dir)
	for _, f := range []string{p.caCert, p.caKey, p.serverCert, p.serverKey} {
		if !strings.Contains(out, "wrote "+f) {
			t.Errorf("output does not name %s:\n%s", f, out)
		}
	}
	for _, want := range []string{
		"flower-superlink --certificates " + p.caCert + " " + p.serverCert + " " + p.serverKey,
		"flower-client-app client:app --root-certificates " + p.caCert + " --server superlink.lab.example.org:9092",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	s := snapshot(t, dir)
	for name, mode := range map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "server.pem": 0o644, "server.key": 0o600} {
		if s[name].mode != mode {
			t.Errorf("%s mode %04o, want %04o", name, s[name].mode, mode)
		}
	}
	if len(s) != 4 {
		t.Errorf("folder holds %d files, want 4", len(s))
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("folder mode %04o, want 0700", fi.Mode().Perm())
	}
	ca, leaf := parseCert(t, p.caCert), parseCert(t, p.serverCert)
	if !ca.IsCA || !ca.MaxPathLenZero {
		t.Error("ca.crt is not a CA limited to leaf certificates")
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "superlink.lab.example.org", "10.0.0.5", "fd00::5"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("server.pem does not verify for %s: %v", name, err)
		}
	}
	if k, ok := parseKey(t, p.serverKey).(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("server key is not ECDSA P-256")
	}
	if d := time.Until(leaf.NotAfter); d < 364*24*time.Hour || d > 366*24*time.Hour {
		t.Errorf("server certificate valid for %v, want 365 days", d)
	}
	if _, err := certfile.Check(p.caCert, p.serverCert, p.serverKey, time.Now()); err != nil {
		t.Errorf("the written files fail Check: %v", err)
	}
}

func TestSecondRunChangesNothingAndForceReissues(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	before := snapshot(t, dir)
	time.Sleep(20 * time.Millisecond) // so a rewrite would show in the mtime

	out := mustRun(t, tmp, "--host", "x.example.org")
	if !strings.Contains(out, "nothing changed") || !strings.Contains(out, "--host x.example.org --force") ||
		!strings.Contains(out, "--new-ca") || !strings.Contains(out, "shape new certificates only") {
		t.Errorf("second run output:\n%s", out)
	}
	after := snapshot(t, dir)
	for name, b := range before {
		if a := after[name]; !bytes.Equal(a.data, b.data) || !a.mtime.Equal(b.mtime) {
			t.Errorf("second run changed %s", name)
		}
	}

	out = mustRun(t, tmp, "--force", "--host", "x.example.org")
	forced := snapshot(t, dir)
	for _, name := range []string{"ca.crt", "ca.key"} {
		if !bytes.Equal(forced[name].data, before[name].data) || !forced[name].mtime.Equal(before[name].mtime) {
			t.Errorf("--force changed %s; the CA must be kept", name)
		}
	}
	for _, name := range []string{"server.pem", "server.key"} {
		if bytes.Equal(forced[name].data, before[name].data) {
			t.Errorf("--force did not replace %s", name)
		}
	}
	if !strings.Contains(out, "Reusing the CA") {
		t.Errorf("--force output does not say the CA is reused:\n%s", out)
	}
	leaf := parseCert(t, filepath.Join(dir, "server.pem"))
	if !slices.Contains(leaf.DNSNames, "x.example.org") {
		t.Errorf("--force certificate SANs %v lack x.example.org", leaf.DNSNames)
	}
	if _, err := certfile.Check(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), time.Now()); err != nil {
		t.Errorf("the reissued pair fails Check against the kept CA: %v", err)
	}

	mustRun(t, tmp, "--new-ca")
	renewed := snapshot(t, dir)
	for _, name := range []string{"ca.crt", "ca.key", "server.pem", "server.key"} {
		if bytes.Equal(renewed[name].data, forced[name].data) {
			t.Errorf("--new-ca did not replace %s", name)
		}
	}
}

func TestShortCAEndsTheServerCertificate(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	os.Mkdir(dir, 0o700)
	// 100 days and a half: --days 100 fits, whatever the second.
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{NotAfter: time.Now().Add(100*24*time.Hour + 12*time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, "ca.key"), ca.KeyPEM, 0o600)
	out := mustRun(t, tmp)
	if !strings.Contains(out, "ends with its CA on") {
		t.Errorf("output does not say the certificate ends with its CA:\n%s", out)
	}
	if got := parseCert(t, filepath.Join(dir, "server.pem")).NotAfter; !got.Equal(ca.Cert.NotAfter) {
		t.Errorf("server NotAfter %v, want the CA's %v", got, ca.Cert.NotAfter)
	}
	if _, err := runIn(t, tmp, "--force", "--days", "365"); err == nil || !strings.Contains(err.Error(), "--days 100 or fewer") {
		t.Errorf("an explicit --days beyond the CA: %v", err)
	}
}

func TestMissingCAIsMadeWithForce(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	os.Remove(filepath.Join(dir, "ca.crt"))
	os.Remove(filepath.Join(dir, "ca.key"))
	mustRun(t, tmp, "--force")
	p := pathsIn(dir)
	if _, err := certfile.Check(p.caCert, p.serverCert, p.serverKey, time.Now()); err != nil {
		t.Errorf("after --force without a CA: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, dir string) // dir is the certificates folder, made by a first run
		args    []string
		usage   bool
		wants   []string
		noFirst bool
	}{
		{name: "ca.crt without ca.key", setup: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ca.key")) },
			args: []string{"--force"}, wants: []string{"ca.crt exists but", "ca.key does not", "--new-ca"}},
		{name: "ca.key without ca.crt", setup: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ca.crt")) },
			wants: []string{"ca.key exists but", "ca.crt does not"}},
		{name: "server.pem without server.key", setup: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "server.key")) },
			wants: []string{"server.pem exists but", "server.key does not", "--force"}},
		{name: "a CA key that does not match", setup: func(t *testing.T, dir string) {
			other, _ := selfsigned.NewCA(selfsigned.CAOptions{})
			os.WriteFile(filepath.Join(dir, "ca.key"), other.KeyPEM, 0o600)
		}, args: []string{"--force"}, wants: []string{"ca.key", "does not match", "--new-ca"}},
		{name: "bad host", noFirst: true, args: []string{"--host", "bad_name"}, usage: true, wants: []string{"--host", "bad_name", "DNS name"}},
		{name: "days beyond the reused CA", args: []string{"--force", "--days", "4000"}, usage: true,
			wants: []string{"--days 4000", "outlive its CA", "--new-ca"}},
		{name: "days zero", noFirst: true, args: []string{"--days", "0"}, usage: true, wants: []string{"--days 0"}},
		{name: "bad key type", noFirst: true, args: []string{"--key-type", "dsa"}, usage: true, wants: []string{"--key-type", "ecdsa-p256"}},
		{name: "extra argument", noFirst: true, args: []string{"certificates"}, usage: true, wants: []string{"unexpected argument"}},
		{name: "unknown flag", noFirst: true, args: []string{"--output", "x"}, usage: true, wants: []string{"--output"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			dir := filepath.Join(tmp, "certificates")
			if !tc.noFirst {
				mustRun(t, tmp)
			}
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			var before map[string]fileState
			if !tc.noFirst {
				before = snapshot(t, dir)
			}
			_, err := runIn(t, tmp, tc.args...)
			if err == nil {
				t.Fatal("no error")
			}
			var ue *cli.UsageError
			if errors.As(err, &ue) != tc.usage {
				t.Errorf("error %v: usage error %v, want %v", err, !tc.usage, tc.usage)
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if tc.noFirst {
				if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused run made %s", dir)
				}
				return
			}
			after := snapshot(t, dir)
			if len(after) != len(before) {
				t.Errorf("a refused run changed the folder: %d files, was %d", len(after), len(before))
			}
			for name, b := range before {
				if !bytes.Equal(after[name].data, b.data) {
					t.Errorf("a refused run changed %s", name)
				}
			}
		})
	}
}

func TestKeyTypesAndDays(t *testing.T) {
	for _, tc := range []struct {
		keyType string
		check   func(any) bool
	}{
		{"rsa-2048", func(k any) bool { r, ok := k.(*rsa.PrivateKey); return ok && r.N.BitLen() == 2048 }},
		{"ed25519", func(k any) bool { _, ok := k.(ed25519.PrivateKey); return ok }},
	} {
		t.Run(tc.keyType, func(t *testing.T) {
			tmp := t.TempDir()
			mustRun(t, tmp, "--key-type", tc.keyType, "--days", "30")
			p := pathsIn(filepath.Join(tmp, "certificates"))
			for _, f := range []string{p.caKey, p.serverKey} {
				if k := parseKey(t, f); !tc.check(k) {
					t.Errorf("%s holds a %T, want %s", f, k, tc.keyType)
				}
			}
			if d := time.Until(parseCert(t, p.serverCert).NotAfter); d < 29*24*time.Hour || d > 31*24*time.Hour {
				t.Errorf("--days 30 gave %v", d)
			}
		})
	}
	// A long --days with a new CA stretches the CA to cover it.
	tmp := t.TempDir()
	mustRun(t, tmp, "--days", "5000")
	p := pathsIn(filepath.Join(tmp, "certificates"))
	if _, err := certfile.Check(p.caCert, p.serverCert, p.serverKey, time.Now().Add(4999*24*time.Hour)); err != nil {
		t.Errorf("--days 5000 with a new CA: %v", err)
	}
}

func TestVersionAndHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run([]string{"--version"}, &out, &errb); !errors.Is(err, cli.ErrVersion) || out.String() != "flower-certs "+cli.Version+"\n" {
		t.Errorf("--version: %q, %v", out.String(), err)
	}
	out.Reset()
	errb.Reset()
	if err := run([]string{"--help"}, &out, &errb); !errors.Is(err, cli.ErrHelp) ||
		!strings.HasPrefix(out.String(), "flower-certs: ") || !strings.Contains(out.String(), "Examples:\n  flower-certs ") || errb.Len() != 0 {
		t.Errorf("--help: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
}

func TestShellJoin(t *testing.T) {
	got := shellJoin([]string{"flower-superlink", "--certificates", "my certs/ca.crt", "it's"})
	if want := `flower-superlink --certificates 'my certs/ca.crt' 'it'\''s'`; got != want {
		t.Errorf("shellJoin = %s, want %s", got, want)
	}
}

// A reused CA key that others can read is pointed out, as the folder is.
func TestReusedCAKeyOpenToOthers(t *testing.T) {
	tmp := t.TempDir()
	mustRun(t, tmp)
	key := filepath.Join(tmp, "certificates", "ca.key")
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustRun(t, tmp, "--force")
	if !strings.Contains(out, "CA private key "+key+" is open to other users (mode 0644)") || !strings.Contains(out, "chmod 600 "+key) {
		t.Errorf("no note about the CA key's mode:\n%s", out)
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, tmp, "--force"); strings.Contains(out, "open to other users") {
		t.Errorf("a note about a 0600 CA key:\n%s", out)
	}
}

// --days up to and beyond the CA's 10 years work on a fresh folder: the
// new CA outlives the server certificate it issues.
func TestLongDaysOnAFreshFolder(t *testing.T) {
	for _, days := range []string{"3649", "3650", "3651", "4000"} {
		tmp := t.TempDir()
		out, err := runIn(t, tmp, "--days", days)
		if err != nil {
			t.Errorf("--days %s: %v\n%s", days, err, out)
			continue
		}
		dir := filepath.Join(tmp, "certificates")
		ca, srv := parseCert(t, filepath.Join(dir, "ca.crt")), parseCert(t, filepath.Join(dir, "server.pem"))
		if !ca.NotAfter.After(srv.NotAfter) {
			t.Errorf("--days %s: the CA ends %v, not after its server certificate (%v)", days, ca.NotAfter, srv.NotAfter)
		}
		if got, want := srv.NotAfter.Sub(srv.NotBefore.Add(selfsigned.Backdate)).Hours()/24, days; strconv.Itoa(int(got+0.5)) != want {
			t.Errorf("--days %s: the server certificate lasts %.2f days", days, got)
		}
		p := pathsIn(dir)
		if _, err := certfile.Check(p.caCert, p.serverCert, p.serverKey, time.Time{}); err != nil {
			t.Errorf("--days %s: %v", days, err)
		}
	}
}

// A second run over files that do not work together says so, with the
// fix, instead of "nothing changed".
func TestBrokenSetIsReportedWithItsFix(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		wants []string
	}{
		{"server key of another certificate", func(t *testing.T, dir string) {
			other, _ := selfsigned.NewCA(selfsigned.CAOptions{})
			os.WriteFile(filepath.Join(dir, "server.key"), other.KeyPEM, 0o600)
		}, []string{"server.key", "does not match", "flower-certs --force"}},
		{"server certificate from another CA", func(t *testing.T, dir string) {
			other, _ := selfsigned.NewCA(selfsigned.CAOptions{})
			os.WriteFile(filepath.Join(dir, "ca.crt"), other.CertPEM, 0o644)
			os.WriteFile(filepath.Join(dir, "ca.key"), other.KeyPEM, 0o600)
		}, []string{"server.pem", "does not chain", "ca.crt"}},
		{"CA key of another CA", func(t *testing.T, dir string) {
			other, _ := selfsigned.NewCA(selfsigned.CAOptions{})
			os.WriteFile(filepath.Join(dir, "ca.key"), other.KeyPEM, 0o600)
		}, []string{"ca.key", "does not match", "the CA in"}},
		{"server certificate cut short", func(t *testing.T, dir string) {
			b, _ := os.ReadFile(filepath.Join(dir, "server.pem"))
			os.WriteFile(filepath.Join(dir, "server.pem"), b[:len(b)/2], 0o644)
		}, []string{"server.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := t.TempDir()
			mustRun(t, tmp)
			dir := filepath.Join(tmp, "certificates")
			tc.setup(t, dir)
			before := snapshot(t, dir)
			out, err := runIn(t, tmp)
			var ue *cli.UsageError
			if err == nil || errors.As(err, &ue) || strings.Contains(out, "nothing changed.") {
				t.Fatalf("run over a broken set: %v (want exit 1)\n%s", err, out)
			}
			for _, w := range append(tc.wants, "does not work", "nothing changed") {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q lacks %q", err, w)
				}
			}
			after := snapshot(t, dir)
			for n, f := range before {
				if string(after[n].data) != string(f.data) {
					t.Errorf("the refused run changed %s", n)
				}
			}
		})
	}
}

// A run that was killed is completed or undone by the next one, which says
// what it did; then the set works.
func TestInterruptedRunIsRepaired(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	ca, err := certfile.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueServer(selfsigned.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// As WriteSet leaves it killed after its commit and one rename: the
	// new key in place, the new certificate in its temporary file.
	os.WriteFile(filepath.Join(dir, "server.key"), pair.KeyPEM, 0o600)
	os.WriteFile(filepath.Join(dir, ".server.pem.sepal-new"), pair.CertPEM, 0o644)
	os.WriteFile(filepath.Join(dir, ".sepal-set-journal"), []byte("sepal-set 1\nserver.key\nserver.pem\n"), 0o600)
	p := pathsIn(dir)
	if _, err := certfile.Check(p.caCert, p.serverCert, p.serverKey, time.Time{}); err == nil || !strings.Contains(err.Error(), "was interrupted") {
		t.Fatalf("Check of the half-renamed set: %v, want it to name the interrupted write", err)
	}
	out := mustRun(t, tmp)
	if !strings.Contains(out, "completed an interrupted write of server.key, server.pem") || !strings.Contains(out, "exist and match") {
		t.Errorf("the next run does not say it completed the write:\n%s", out)
	}
	if _, err := certfile.Check(p.caCert, p.serverCert, p.serverKey, time.Time{}); err != nil {
		t.Errorf("after the repair: %v", err)
	}
	if got := parseCert(t, p.serverCert).SerialNumber; got.Cmp(pair.Leaf.SerialNumber) != 0 {
		t.Errorf("the repair did not complete the new set")
	}

	// Killed before its commit: a temporary key is removed, the set stands.
	os.WriteFile(filepath.Join(dir, ".server.key.sepal-new"), []byte("-----BEGIN PRIVATE KEY-----\n"), 0o600)
	out = mustRun(t, tmp)
	if !strings.Contains(out, "removed 1 temporary file(s)") || !strings.Contains(out, ".server.key.sepal-new") {
		t.Errorf("the next run does not say it removed the temporary file:\n%s", out)
	}
	if len(snapshot(t, dir)) != 4 {
		t.Errorf("the folder holds %d files, want 4", len(snapshot(t, dir)))
	}
}

// The serial printed is the one openssl prints.
func TestSerialPrintedAsOpenSSL(t *testing.T) {
	tmp := t.TempDir()
	out := mustRun(t, tmp)
	c := parseCert(t, filepath.Join(tmp, "certificates", "server.pem"))
	if want := "serial " + certfmt.Serial(c.SerialNumber) + ","; !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
}
