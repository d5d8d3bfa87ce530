package main

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/selfsigned"
)

// TestNewCAReplacesCRL: --new-ca over a folder with client certificates
// and a CRL writes an empty CRL of the new CA with it (the SuperLink then
// starts), and says which client certificates to issue again, and how.
func TestNewCAReplacesCRL(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	mustRun(t, tmp, "node", "node-1", "node-2")
	mustRun(t, tmp, "serverapp")
	mustRun(t, tmp, "revoke", "node-2")
	out := mustRun(t, tmp, "--new-ca")
	p := pathsIn(dir)
	crl := filepath.Join(dir, crlName)
	l, err := certfile.LoadCRL(crl, parseCert(t, p.caCert))
	if err != nil || len(l.RevokedCertificateEntries) != 0 {
		t.Fatalf("crl.pem after --new-ca: %v, %v; want an empty CRL of the new CA", l, err)
	}
	if _, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: p.caCert, CRLFile: crl, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Errorf("the SuperLink's client CA and CRL after --new-ca: %v", err)
	}
	for _, want := range []string{
		"wrote " + crl,
		shellJoin([]string{name, "node", "--force", "--dir", dir, "node-1", "node-2"}),
		shellJoin([]string{name, "serverapp", "--force", "--dir", dir, "serverapp"}),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--new-ca output lacks %q:\n%s", want, out)
		}
	}
	// The SuperLink it shows requires the client certificates, as before.
	start := shellJoin([]string{"flower-superlink", "--certificates", p.caCert, p.serverCert, p.serverKey,
		"--fleet-api-client-ca", p.caCert, "--driver-api-client-ca", p.caCert, "--client-crl", crl})
	if !strings.Contains(out, "Start the SuperLink with:\n  "+start+"\n") {
		t.Errorf("--new-ca output does not start the SuperLink with %q:\n%s", start, out)
	}
	// The commands it prints work.
	mustRun(t, tmp, "node", "--force", "node-1", "node-2")
	if _, err := certfile.CheckClient(filepath.Join(dir, "nodes", "node-1.pem"), filepath.Join(dir, "nodes", "node-1.key"), time.Time{}); err != nil {
		t.Error(err)
	}
}

// TestStaleCRLFixWorks: the fix the SuperLink prints for a CRL of another
// CA (the CA was made again by hand) is a command that works.
func TestStaleCRLFixWorks(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "certificates")
	mustRun(t, tmp)
	mustRun(t, tmp, "node", "node-1")
	p := pathsIn(dir)
	crl := filepath.Join(dir, crlName)
	other, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale, err := other.SignCRL(nil, nil, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crl, stale.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: p.caCert, CRLFile: crl, Logger: slog.New(slog.DiscardHandler)})
	var fe *certfile.FileError
	if !errors.As(err, &fe) {
		t.Fatalf("a CRL of another CA: %v, want a *FileError", err)
	}
	fix := name + " revoke --dir " + dir
	if msg := certfix.Reword(err).Error(); !strings.Contains(msg, fix) {
		t.Fatalf("the message %q does not name %q", msg, fix)
	}
	out := mustRun(t, tmp, "revoke")
	if !strings.Contains(out, "wrote "+crl) {
		t.Errorf("flower-certs revoke without a NAME over another CA's CRL:\n%s", out)
	}
	if l, err := certfile.LoadCRL(crl, parseCert(t, p.caCert)); err != nil || len(l.RevokedCertificateEntries) != 0 {
		t.Errorf("crl.pem: %v, %v; want an empty CRL of the CA", l, err)
	}
	// With the CA's own CRL there, a NAME is still needed.
	if _, err := runIn(t, tmp, "revoke"); err == nil || !strings.Contains(err.Error(), "missing NAME") {
		t.Errorf("revoke without a NAME over the CA's own CRL: %v", err)
	}
}
