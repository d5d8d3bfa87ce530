package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
)

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
func TestBrokenSetIsNotNothingChanged(t *testing.T) {
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

// flower-certs node NAME for a revoked NAME says that its certificate is
// revoked and how to issue a new one (exit 1), instead of "nothing
// changed" and how to run a SuperNode with it; the other names of the same
// run are issued and shown as usual; --force issues a usable one.
func TestNodeRevokedIsNotNothingChanged(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	mustRun(t, tmp, "node", "alice")
	mustRun(t, tmp, "revoke", "alice")
	aliceCert, _ := clientPaths(dir, "node", "alice")
	serial := certfmt.Serial(parseCert(t, aliceCert).SerialNumber)

	out, err := runIn(t, tmp, "node", "alice", "bob")
	var ue *cli.UsageError
	if err == nil || errors.As(err, &ue) {
		t.Fatalf("node for a revoked name: %v, want exit 1\n%s", err, out)
	}
	for _, w := range []string{aliceCert, "sepal:node:alice", "is revoked (serial " + serial, "flower-certs node --force --dir " + dir + " alice"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the error lacks %q: %v", w, err)
		}
	}
	if strings.Contains(out, "alice.pem --client-key") || strings.Contains(out, "likewise for alice") {
		t.Errorf("the output shows how to run a SuperNode with the revoked certificate:\n%s", out)
	}
	bobCert, _ := clientPaths(dir, "node", "bob")
	if !strings.Contains(out, "wrote "+bobCert) || !strings.Contains(out, "--client-certificate "+bobCert) {
		t.Errorf("bob was not issued and shown beside the revoked alice:\n%s", out)
	}

	out = mustRun(t, tmp, "node", "--force", "alice")
	if got := certfmt.Serial(parseCert(t, aliceCert).SerialNumber); got == serial || !strings.Contains(out, "--client-certificate "+aliceCert) {
		t.Errorf("--force: serial %s (revoked %s), output:\n%s", got, serial, out)
	}
	if out := mustRun(t, tmp, "node", "alice"); !strings.Contains(out, "nothing changed for alice") {
		t.Errorf("the reissued certificate:\n%s", out)
	}
}
