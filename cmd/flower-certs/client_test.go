package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

func TestNodeCertificates(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	out := mustRun(t, tmp, "node", "node-1", "node-2")
	p := pathsIn(dir)
	crl := filepath.Join(dir, crlName)
	for _, n := range []string{"node-1", "node-2"} {
		cert, key := clientPaths(dir, transport.RoleNode, n)
		for _, f := range []string{cert, key} {
			if !strings.Contains(out, "wrote "+f) {
				t.Errorf("output does not name %s:\n%s", f, out)
			}
		}
		if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", key, err, fi.Mode().Perm())
		}
		c, err := certfile.CheckClient(cert, key, time.Now())
		if err != nil {
			t.Fatalf("the written pair fails CheckClient: %v", err)
		}
		id, err := transport.IdentityOf(c.Leaf)
		if err != nil || id != (transport.Identity{Role: transport.RoleNode, Name: n}) {
			t.Errorf("%s identity %v, %v", cert, id, err)
		}
		ca := parseCert(t, p.caCert)
		if err := c.Leaf.CheckSignatureFrom(ca); err != nil {
			t.Errorf("%s is not signed by the CA: %v", cert, err)
		}
		if d := time.Until(c.Leaf.NotAfter); d < 364*24*time.Hour || d > 366*24*time.Hour {
			t.Errorf("valid for %v, want 365 days", d)
		}
	}
	if fi, err := os.Stat(clientDir(dir, transport.RoleNode)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("nodes/ folder: %v, want mode 0700", err)
	}
	// An empty CRL is written with the first client certificate.
	list, err := certfile.LoadCRL(crl, parseCert(t, p.caCert))
	if err != nil || len(list.RevokedCertificateEntries) != 0 {
		t.Fatalf("crl.pem: %v, %v; want an empty CRL of the CA", list, err)
	}
	cert1, key1 := clientPaths(dir, transport.RoleNode, "node-1")
	for _, want := range []string{
		"flower-superlink --certificates " + p.caCert + " " + p.serverCert + " " + p.serverKey + " --fleet-api-client-ca " + p.caCert + " --client-crl " + crl,
		"flower-client-app client:app --root-certificates " + p.caCert + " --server 127.0.0.1:9092 --client-certificate " + cert1 + " --client-key " + key1,
		"likewise for node-2",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// Again: nothing changes; --force issues a new pair and says how to
	// revoke the old one.
	before := snapshot(t, clientDir(dir, transport.RoleNode))
	out = mustRun(t, tmp, "node", "node-1")
	if !strings.Contains(out, "nothing changed for node-1") {
		t.Errorf("second run:\n%s", out)
	}
	if after := snapshot(t, clientDir(dir, transport.RoleNode)); !equalSnap(before, after) {
		t.Error("a second run changed files")
	}
	old := parseCert(t, cert1)
	out = mustRun(t, tmp, "node", "--force", "node-1")
	if now := parseCert(t, cert1); now.SerialNumber.Cmp(old.SerialNumber) == 0 {
		t.Error("--force did not issue a new certificate")
	}
	if want := "revoke --dir " + dir + " --serial " + certfmt.Serial(old.SerialNumber); !strings.Contains(out, want) {
		t.Errorf("--force output lacks %q:\n%s", want, out)
	}

	// A ServerApp certificate, default name; the SuperLink line now asks
	// for both roles.
	out = mustRun(t, tmp, "serverapp")
	acert, akey := clientPaths(dir, transport.RoleServerApp, defaultServerAppName)
	c, err := certfile.CheckClient(acert, akey, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := transport.IdentityOf(c.Leaf); id.String() != "sepal:serverapp:serverapp" {
		t.Errorf("ServerApp identity %v", id)
	}
	for _, want := range []string{
		"--fleet-api-client-ca " + p.caCert + " --driver-api-client-ca " + p.caCert + " --client-crl " + crl,
		"flower-server-app server:app --root-certificates " + p.caCert + " --server 127.0.0.1:9091 --client-certificate " + acert + " --client-key " + akey,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func equalSnap(a, b map[string]fileState) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || string(w.data) != string(v.data) || !w.mtime.Equal(v.mtime) {
			return false
		}
	}
	return true
}

func TestRevoke(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	mustRun(t, tmp, "node", "node-1", "node-2", "node-3")
	mustRun(t, tmp, "serverapp", "app")
	ca := parseCert(t, pathsIn(dir).caCert)
	crl := filepath.Join(dir, crlName)
	serial := func(role, n string) string {
		c, _ := clientPaths(dir, role, n)
		return certfmt.Serial(parseCert(t, c).SerialNumber)
	}
	revoked := func() map[string]bool {
		l, err := certfile.LoadCRL(crl, ca)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, e := range l.RevokedCertificateEntries {
			m[certfmt.Serial(e.SerialNumber)] = true
		}
		return m
	}

	out := mustRun(t, tmp, "revoke", "node-2")
	if !strings.Contains(out, "revoked sepal:node:node-2 (serial "+serial(transport.RoleNode, "node-2")+")") || !strings.Contains(out, "no restart") {
		t.Errorf("revoke output:\n%s", out)
	}
	if r := revoked(); len(r) != 1 || !r[serial(transport.RoleNode, "node-2")] {
		t.Errorf("revoked %v, want node-2 only", r)
	}
	out = mustRun(t, tmp, "revoke", "node-2")
	if !strings.Contains(out, "revoked already") || !strings.Contains(out, "unchanged") {
		t.Errorf("revoking twice:\n%s", out)
	}
	mustRun(t, tmp, "revoke", "--serverapp", "app", "--serial", "serial="+serial(transport.RoleNode, "node-3"))
	if r := revoked(); len(r) != 3 || !r[serial(transport.RoleServerApp, "app")] || !r[serial(transport.RoleNode, "node-3")] {
		t.Errorf("revoked %v, want node-2, node-3 and app", r)
	}
	if l, _ := certfile.LoadCRL(crl, ca); l.Number.Int64() != 3 {
		t.Errorf("CRL number %v, want 3 (one per change)", l.Number)
	}

	for _, c := range []struct {
		args  []string
		usage bool
		want  string
	}{
		{[]string{"revoke"}, true, "missing NAME"},
		{[]string{"revoke", "nobody"}, false, "no node certificate of that name"},
		{[]string{"revoke", "app"}, false, "add --serverapp"},
		{[]string{"revoke", "--serial", "xyz"}, true, "--serial \"xyz\""},
		{[]string{"revoke", "../x"}, true, "must start with a letter or a digit"},
		{[]string{"node"}, true, "missing NAME"},
		{[]string{"node", "a b"}, true, "holds ' '"},
		{[]string{"node", "x", "x"}, true, "given twice"},
		{[]string{"node", "--days", "0", "x"}, true, "--days 0"},
		{[]string{"node", "--days", "5000", "x"}, true, "would outlive its CA"},
		{[]string{"revoke", "--dir", filepath.Join(tmp, "none"), "x"}, false, "run flower-certs first"}, // the last --dir wins
	} {
		var buf strings.Builder
		err := run(append([]string{"--dir", dir}, c.args...), &buf, &buf)
		var ue *cli.UsageError
		if err == nil || !strings.Contains(err.Error(), c.want) || errors.As(err, &ue) != c.usage {
			t.Errorf("%q: %v, want a (usage %v) error with %q", c.args, err, c.usage, c.want)
		}
	}

	// A CRL signed by another CA is refused, not extended.
	other, err := selfsigned.NewCA(selfsigned.CAOptions{CommonName: "Other"})
	if err != nil {
		t.Fatal(err)
	}
	bad, err := other.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crl, bad.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, tmp, "revoke", "node-1")
	if !strings.Contains(out, "another CA's") {
		t.Errorf("revoke over another CA's CRL does not say it replaces it:\n%s", out)
	}
	if r := revoked(); len(r) != 1 || !r[serial(transport.RoleNode, "node-1")] {
		t.Errorf("after replacing another CA's CRL: revoked %v, want node-1 only", r)
	}
	// A CRL that does not parse is refused, not replaced.
	if err := os.WriteFile(crl, []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runIn(t, tmp, "revoke", "node-3"); err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Errorf("revoke into a broken CRL: %v", err)
	}
}

// TestNodeCertificatesWithoutCA: in a folder without a CA (as beside an
// ACME SuperLink, whose server certificate comes from Let's Encrypt),
// flower-certs node makes a CA of its own and no server certificate.
func TestNodeCertificatesWithoutCA(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	out := mustRun(t, tmp, "node", "node-1")
	p := pathsIn(dir)
	for _, f := range []string{p.caCert, p.caKey} {
		if !strings.Contains(out, "wrote "+f) {
			t.Errorf("output does not name %s:\n%s", f, out)
		}
	}
	if ok, _ := exists(p.serverCert); ok {
		t.Error("a server certificate was made")
	}
	cert, key := clientPaths(dir, transport.RoleNode, "node-1")
	c, err := certfile.CheckClient(cert, key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Leaf.CheckSignatureFrom(parseCert(t, p.caCert)); err != nil {
		t.Errorf("not signed by the new CA: %v", err)
	}
	// The next one reuses it.
	before := parseCert(t, p.caCert)
	mustRun(t, tmp, "serverapp")
	if !parseCert(t, p.caCert).Equal(before) {
		t.Error("the CA was made again")
	}
	// Half a CA is refused.
	if err := os.Remove(p.caKey); err != nil {
		t.Fatal(err)
	}
	if _, err := runIn(t, tmp, "node", "node-2"); err == nil || !strings.Contains(err.Error(), "restore it") {
		t.Errorf("a CA certificate without its key: %v", err)
	}
}

// flower-certs node NAME for a revoked NAME says that its certificate is
// revoked and how to issue a new one (exit 1), instead of "nothing
// changed" and how to run a SuperNode with it; the other names of the same
// run are issued and shown as usual; --force issues a usable one.
func TestRevokedNodeIsToldHowToReissue(t *testing.T) {
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
