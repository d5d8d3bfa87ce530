package certfile

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/selfsigned"
)

func newTestCA(t testing.TB) *selfsigned.CA {
	t.Helper()
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// namesakeCA makes another CA with the name of ca, as a CA made again
// under one name (every flower-certs CA had one, once).
func namesakeCA(t testing.TB, ca *selfsigned.CA) *selfsigned.CA {
	t.Helper()
	c, err := selfsigned.NewCA(selfsigned.CAOptions{CommonName: ca.Cert.Subject.CommonName})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	other := newTestCA(t)
	crt, key, otherKey := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"), filepath.Join(dir, "other.key")
	for path, b := range map[string][]byte{crt: ca.CertPEM, key: ca.KeyPEM, otherKey: other.KeyPEM} {
		if err := WriteFileAtomic(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := LoadCA(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Cert.Equal(ca.Cert) || !bytes.Equal(got.KeyPEM, ca.KeyPEM) {
		t.Error("LoadCA does not give back the CA")
	}
	if _, err := got.IssueServer(selfsigned.ServerOptions{}); err != nil {
		t.Errorf("issuing from a loaded CA: %v", err)
	}
	if _, err := LoadCA(crt, otherKey); !errors.Is(err, ErrKeyMismatch) || !strings.Contains(err.Error(), otherKey) {
		t.Errorf("LoadCA with another key: %v", err)
	}
	if _, err := LoadCA(filepath.Join(dir, "none.crt"), key); !errors.Is(err, ErrMissing) {
		t.Errorf("LoadCA of a missing file: %v", err)
	}
	p, _ := ca.IssueServer(selfsigned.ServerOptions{})
	srv := filepath.Join(dir, "server.pem")
	WriteFileAtomic(srv, p.CertPEM, 0o644)
	if _, err := LoadCA(srv, key); !errors.Is(err, ErrNotCA) {
		t.Errorf("LoadCA of a server certificate: %v", err)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "server.key")
	if err := WriteFileAtomic(path, []byte("one"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(path, []byte("two"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "two" {
		t.Fatalf("content %q, %v", b, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	// A failed write (the folder does not exist) leaves nothing behind.
	if err := WriteFileAtomic(filepath.Join(dir, "no", "x"), []byte("x"), 0o600); err == nil || !strings.HasPrefix(err.Error(), "writing "+filepath.Join(dir, "no", "x")+": ") {
		t.Errorf("write into a missing folder: %v", err)
	}
	// A failed rename (the target is a non-empty folder) removes the temp file.
	if err := os.MkdirAll(filepath.Join(dir, "busy", "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(filepath.Join(dir, "busy"), []byte("x"), 0o600); err == nil {
		t.Error("rename over a folder: no error")
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"busy", "server.key"}) {
		t.Errorf("folder holds %q after a failed write, want only busy and server.key", names)
	}
}
