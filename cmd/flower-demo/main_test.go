package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/testkit"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		args    []string
		usage   string // a *cli.UsageError holding this, or "" for success
		clients int
		rounds  int
	}{
		{args: nil, clients: 2, rounds: 3},
		{args: []string{"--clients", "5", "--rounds", "1"}, clients: 5, rounds: 1},
		{args: []string{"--clients", "0"}, usage: "--clients 0: give a number of client apps from 1 to 100"},
		{args: []string{"--clients", "101"}, usage: "--clients 101"},
		{args: []string{"--rounds", "-1"}, usage: "--rounds -1: give a number of rounds from 1 to 100"},
		{args: []string{"--rounds", "x"}, usage: `invalid argument "x" for "--rounds`},
		{args: []string{"now"}, usage: `unexpected argument "now": flower-demo takes flags only`},
		{args: []string{"--keeep"}, usage: "unknown flag: --keeep"},
	} {
		var stdout bytes.Buffer
		o, err := parse(c.args, &stdout)
		if c.usage != "" {
			var ue *cli.UsageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.usage) {
				t.Errorf("parse(%q) = %v, want a usage error with %q", c.args, err, c.usage)
			}
			continue
		}
		if err != nil || o.clients != c.clients || o.rounds != c.rounds {
			t.Errorf("parse(%q) = %+v, %v; want clients %d rounds %d", c.args, o, err, c.clients, c.rounds)
		}
	}
}

func TestVersionAndHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &stdout, &stderr); !errors.Is(err, cli.ErrVersion) || stdout.String() != "flower-demo "+cli.Version+"\n" {
		t.Fatalf("--version: %v %q", err, stdout.String())
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"--help"}, &stdout, &stderr); !errors.Is(err, cli.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if u := stdout.String(); !strings.Contains(u, "Examples:\n  go run ./cmd/flower-demo\n") || !strings.Contains(u, "--clients int") {
		t.Fatalf("usage does not open with examples:\n%s", u)
	}
	if stderr.Len() != 0 {
		t.Fatalf("--help or --version wrote to stderr:\n%s", stderr.String())
	}
}

func TestWriteCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certificates")
	f, err := writeCertificates(dir)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{f.ca: 0o644, f.caKey: 0o600, f.cert: 0o644, f.key: 0o600} {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("certificates folder: %v %v, want mode 0700", st.Mode().Perm(), err)
	}
	// The server certificate chains to the CA under the names the nodes dial.
	roots := x509.NewCertPool()
	caPEM, _ := os.ReadFile(f.ca)
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	leaf := readLeaf(t, f.cert)
	for _, host := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("server.pem does not verify for %s: %v", host, err)
		}
	}
	if got := strings.Join(sans(leaf), ", "); got != "localhost, 127.0.0.1, ::1" {
		t.Errorf("sans = %q", got)
	}
	// A second run refuses to overwrite them.
	if _, err := writeCertificates(dir); err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), f.ca) {
		t.Errorf("second write: %v, want a refusal naming %s", err, f.ca)
	}
}

func readLeaf(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("%s: no CERTIFICATE block", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRun runs the whole demo in this process with two rounds and checks
// its story and that --dir keeps the certificates.
func TestRun(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--dir", dir, "--rounds", "2", "--clients", "3"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"round 1/2: ", "round 2/2: ", "nodes 3 ",
		"tls           TLS 1.3, ", "ALPN h2",
		"SANs localhost, 127.0.0.1, ::1",
		"client apps   3 started",
		"stopped       3 client apps left after the reconnect task",
		"in 2 rounds with 3 client apps",
		"with certificates from " + filepath.Join(dir, "certificates") + ".\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if stderr.Len() != 0 {
		t.Errorf("warnings on a clean run:\n%s", stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "certificates", "server.key")); err != nil {
		t.Errorf("--dir did not keep the certificates: %v", err)
	}
}

// cancelOn cancels when the output written so far contains s.
type cancelOn struct {
	bytes.Buffer
	s      string
	cancel context.CancelFunc
}

func (c *cancelOn) Write(p []byte) (int, error) {
	n, err := c.Buffer.Write(p)
	if strings.Contains(c.String(), c.s) {
		c.cancel()
	}
	return n, err
}

// TestRunInterrupted ends the demo in the middle of the run, as Ctrl-C
// does: it stops every piece, removes its temporary folder and says so.
func TestRunInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout := &cancelOn{s: "round 1/", cancel: cancel}
	var stderr bytes.Buffer
	err := run(ctx, []string{"--rounds", "100"}, stdout, &stderr)
	if err == nil || err.Error() != "interrupted: the client apps and the SuperLink were stopped" {
		t.Fatalf("run after cancel: %v\n%s", err, stdout.String())
	}
	m := regexp.MustCompile(`(?m)^certificates +(\S+)`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no certificates line:\n%s", stdout.String())
	}
	if _, err := os.Stat(filepath.Dir(m[1])); !os.IsNotExist(err) {
		t.Errorf("temporary folder %s left behind (%v)", filepath.Dir(m[1]), err)
	}
}

// hupOn sends SIGHUP to this process once the output written so far
// contains s, and holds that write until log shows the reload it causes
// (or 10 s pass), so that the demo is still running when it arrives.
type hupOn struct {
	bytes.Buffer
	s, want string
	log     *testkit.SyncBuffer
	sent    bool
}

func (h *hupOn) Write(p []byte) (int, error) {
	n, err := h.Buffer.Write(p)
	if !h.sent && strings.Contains(h.String(), h.s) {
		h.sent = true
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(h.log.String(), h.want) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
	}
	return n, err
}

// TestRunSIGHUP: SIGHUP in the middle of the run reloads the SuperLink's
// certificate files and does not end the demo.
func TestRunSIGHUP(t *testing.T) {
	const want = `msg="SIGHUP: reloaded" reload="certificate files"`
	stderr := &testkit.SyncBuffer{}
	stdout := &hupOn{s: "round 1/", want: want, log: stderr}
	if err := run(context.Background(), []string{"--rounds", "2", "--verbose"}, stdout, stderr); err != nil {
		t.Fatalf("run with a SIGHUP: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	if !stdout.sent || !strings.Contains(stderr.String(), want) {
		t.Errorf("SIGHUP sent %v, and the log lacks %q:\n%s", stdout.sent, want, stderr.String())
	}
}
