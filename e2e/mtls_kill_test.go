package e2e

import (
	"bytes"
	"crypto/x509"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
)

// copyTree copies the folder src to dst (made), files with their modes.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(to, fi.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// clientSetState says what is wrong with a client folder: a pair whose key
// does not match its certificate, a CRL the CA did not sign, a private key
// readable by others, a file cut short; "" when all is well.
func clientSetState(t *testing.T, dir string, names ...string) string {
	t.Helper()
	var why []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		fi, _ := d.Info()
		if bytes.Contains(b, []byte("PRIVATE KEY")) && fi.Mode().Perm()&0o077 != 0 {
			why = append(why, p+" is a private key open to others")
		}
		return nil
	})
	ca, err := certfile.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		return err.Error()
	}
	if _, err := certfile.LoadCRL(filepath.Join(dir, "crl.pem"), ca.Cert); err != nil {
		why = append(why, err.Error())
	}
	for _, n := range names {
		c, err := certfile.CheckClient(filepath.Join(dir, "nodes", n+".pem"), filepath.Join(dir, "nodes", n+".key"), time.Time{})
		if err != nil {
			why = append(why, err.Error())
			continue
		}
		if err := c.Leaf.CheckSignatureFrom(ca.Cert); err != nil {
			why = append(why, n+": not signed by the CA")
		}
	}
	return strings.Join(why, "; ")
}

// TestFlowerCertsClientKilledAtEveryStep kills flower-certs node and
// flower-certs revoke (SIGKILL) after each of their file operations: no
// private key is ever open to others, a node's certificate and key are the
// old pair or the new one (or a committed write the next run completes),
// the CRL always loads, and the next run repairs what it finds.
func TestFlowerCertsClientKilledAtEveryStep(t *testing.T) {
	needE2E(t)
	t.Parallel()
	killable := killpointsBinary(t)
	tmpl := t.TempDir()
	for _, args := range [][]string{nil, {"node", "alice"}} {
		if out, code := run(t, time.Minute, tmpl, nil, "flower-certs", args...); code != 0 {
			t.Fatalf("flower-certs %q: exit %d\n%s", args, code, out)
		}
	}
	for _, sc := range []struct {
		name  string
		args  []string
		dir   string   // the folder written
		nodes []string // the pairs that must work after the next run
	}{
		{"node in a fresh folder", []string{"node", "--dir", "fresh", "carol"}, "fresh", []string{"carol"}},
		{"node --force", []string{"node", "--force", "alice"}, "certificates", []string{"alice"}},
		{"a second node", []string{"node", "bob"}, "certificates", []string{"alice", "bob"}},
		{"revoke", []string{"revoke", "alice"}, "certificates", []string{"alice"}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			steps := 0
			for n := 1; ; n++ {
				work := t.TempDir()
				copyTree(t, tmpl, work)
				dir := filepath.Join(work, sc.dir)
				out, code := run(t, time.Minute, work, []string{"SEPAL_KILL_AFTER_STEP=" + strconv.Itoa(n)}, killable, sc.args...)
				if code == 0 {
					steps = n - 1
					break
				}
				if code != -1 {
					t.Fatalf("step %d: exit %d, want death by SIGKILL:\n%s", n, code, out)
				}
				if _, err := os.Stat(dir); err == nil {
					// The keys are never open, killed or not.
					for _, p := range []string{dir, filepath.Join(dir, "nodes")} {
						if !certfile.PendingSet(p) {
							if why := clientSetState(t, dir); strings.Contains(why, "open to others") {
								t.Errorf("step %d: %s", n, why)
							}
						}
					}
				}
				// The next run of the same command repairs and completes.
				out, code = run(t, time.Minute, work, nil, "flower-certs", sc.args...)
				if code != 0 {
					t.Errorf("step %d: the next run exited %d:\n%s", n, code, out)
					continue
				}
				if why := clientSetState(t, dir, sc.nodes...); why != "" {
					t.Errorf("step %d: after the next run: %s\n%s", n, why, out)
				}
				if sc.args[0] == "revoke" {
					if l, err := certfile.LoadCRL(filepath.Join(dir, "crl.pem"), readCA(t, dir)); err != nil || len(l.RevokedCertificateEntries) != 1 {
						t.Errorf("step %d: after the next run the CRL is %v (%v), want alice revoked", n, l, err)
					}
				}
				_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
					if err == nil && strings.HasPrefix(d.Name(), ".") {
						t.Errorf("step %d: %s is left over", n, p)
					}
					return nil
				})
			}
			if steps < 4 {
				t.Fatalf("%q ran %d steps: the kill points are not reached", sc.args, steps)
			}
			t.Logf("killed after each of %d steps", steps)
		})
	}
}

func readCA(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	ca, err := certfile.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	return ca.Cert
}
