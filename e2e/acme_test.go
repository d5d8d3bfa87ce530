package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The ACME tests run flower-superlink against a pebble of its own (pebble's
// validation ports are per instance) with each ACME client. A case that a
// client cannot do is skipped by name with the reason.

const acmeDomain = "superlink.test"

var acmeClients = []string{"certmagic", "autocert"}

// acmeLink is a flower-superlink started with --acme-* flags.
type acmeLink struct {
	*superLink
	http    string // --acme-http-address, with http-01
	storage string // --acme-storage; "" with only --database
}

type acmeLinkOptions struct {
	client, challenge string
	domain            string
	storage           string
	fleet             string // "" = a free one
	httpAddr          string // with http-01
	database          string // --database, and no --acme-storage (the storage is then that database)
	extra             []string
}

// startACMELink starts flower-superlink with the --acme-* flags of o
// against pb, and returns at once: it serves once it has its certificate
// (waitACMECert).
func startACMELink(t *testing.T, pb *pebbleCA, o acmeLinkOptions) *acmeLink {
	t.Helper()
	l := &acmeLink{http: o.httpAddr, storage: o.storage}
	if l.storage == "" && o.database == "" {
		l.storage = filepath.Join(t.TempDir(), "acme")
	}
	domain := o.domain
	if domain == "" {
		domain = acmeDomain
	}
	args := []string{"--acme-domain", domain, "--acme-ca", pb.DirURL, "--acme-ca-root", pb.MinicaFile,
		"--acme-client", o.client}
	if l.storage != "" {
		args = append(args, "--acme-storage", l.storage)
	}
	if o.database != "" {
		args = append(args, "--database", o.database)
	}
	if o.challenge == "http-01" {
		args = append(args, "--acme-challenge", "http-01", "--acme-http-address", l.http)
	}
	args = append(args, o.extra...)
	l.superLink = startSuperLink(t, linkOptions{args: args, fleet: o.fleet, early: true})
	return l
}

// port returns the port of a host:port address.
func port(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// acmeTLS is a client TLS config (ALPN h2) that verifies a certificate
// for serverName against roots. An empty serverName sends no SNI and
// checks acmeDomain anyway.
func acmeTLS(roots *x509.CertPool, serverName string) *tls.Config {
	cfg := &tls.Config{RootCAs: roots, ServerName: serverName, NextProtos: []string{"h2"}}
	if serverName == "" {
		cfg.InsecureSkipVerify = true // verified below, against acmeDomain
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			opts := x509.VerifyOptions{Roots: roots, DNSName: acmeDomain, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		}
	}
	return cfg
}

// waitACMECert waits until the Fleet API serves a certificate for
// acmeDomain that chains to roots, and returns it and the time since the
// process started. The server may then refuse the connection, as one
// that requires client certificates does.
func waitACMECert(t *testing.T, l *acmeLink, roots *x509.CertPool, d time.Duration) (*x509.Certificate, time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	var lastErr error
	for time.Now().Before(deadline) {
		if leaf, err := handshakeTLS(l.fleet, acmeTLS(roots, acmeDomain)); leaf != nil {
			return leaf, time.Since(l.started)
		} else {
			lastErr = err
		}
		select {
		case <-l.done:
			t.Fatalf("flower-superlink ended (%v) before serving an ACME certificate", l.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("no ACME certificate served on %s within %v: %v", l.fleet, d, lastErr)
	return nil, 0
}

// acmeRound runs two client apps and a server app for one FedAvg round,
// verifying the SuperLink's ACME certificate with the system pool
// (SSL_CERT_FILE = pebble's issuing root) and no --root-certificates.
func acmeRound(t *testing.T, pb *pebbleCA, l *acmeLink) {
	t.Helper()
	dir := t.TempDir()
	env := []string{"SSL_CERT_FILE=" + pb.RootFile, "SSL_CERT_DIR=" + dir}
	var clients []*proc
	for range 2 {
		clients = append(clients, start(t, dir, env, "flower-client-app", "client:app",
			"--server", l.fleet, "--tls-server-name", acmeDomain))
	}
	out, code := run(t, 90*time.Second, dir, env, "flower-server-app", "server:app",
		"--server", l.driver, "--tls-server-name", acmeDomain, "--rounds", "1", "--min-nodes", "2")
	if code != 0 {
		t.Fatalf("flower-server-app exited %d:\n%s", code, out)
	}
	if !regexp.MustCompile(`(?m)^round\s+1\b`).MatchString(out) {
		t.Fatalf("flower-server-app printed no line for round 1:\n%s", out)
	}
	for _, c := range clients {
		c.stop()
	}
}

// measured collects start-to-serving times for the closing log line.
var measured sync.Map // "client/case" -> time.Duration

func TestACMEChallenges(t *testing.T) {
	needE2E(t)
	for _, challenge := range []string{"tls-alpn-01", "http-01"} {
		for _, client := range acmeClients {
			t.Run(challenge+"/"+client, func(t *testing.T) {
				t.Parallel()
				fleet, httpAddr := freeAddr(t), freeAddr(t)
				pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), HTTPPort: port(t, httpAddr), AuthzReuse: -1})
				o := acmeLinkOptions{client: client, challenge: challenge, fleet: fleet, httpAddr: httpAddr}
				if challenge == "http-01" {
					o.extra = []string{"--acme-email", "ops@superlink.test"} // an account with a contact
				} else {
					// without an email (never a prompt), and a second domain
					o.extra = []string{"--acme-domain", "second.superlink.test"}
				}
				l := startACMELink(t, pb, o)
				roots := pb.issuingRoots(t)
				leaf, took := waitACMECert(t, l, roots, 60*time.Second)
				t.Logf("measured: %s %s: process start to serving the ACME certificate: %v", client, challenge, took.Round(time.Millisecond))
				measured.Store(client+"/"+challenge, took)
				if leaf.Issuer.CommonName == "" || !strings.Contains(leaf.Issuer.CommonName, "Pebble") {
					t.Errorf("certificate issued by %q, want pebble", leaf.Issuer.CommonName)
				}
				l.waitOutput(t, "msg=serving", 10*time.Second) // not "serving certificate", logged just before
				out := l.out.String()
				answered := strings.Index(out, "answering "+challenge+" challenge")
				if answered < 0 || answered > strings.Index(out, "msg=serving") {
					t.Errorf("the SuperLink did not log answering the %s challenge before it said it serves", challenge)
				}
				if challenge == "tls-alpn-01" && strings.Contains(out, "responder listening") {
					t.Errorf("a separate TLS-ALPN-01 responder answered at start-up; the Fleet API listener itself must")
				}
				if out := l.out.String(); strings.Contains(out, "enter your email") || strings.Contains(out, "Do you agree") {
					t.Errorf("the SuperLink prompted:\n%s", out)
				}
				if fi, err := os.Stat(l.storage); err != nil || fi.Mode().Perm() != 0o700 {
					t.Errorf("--acme-storage folder: %v, want mode 0700 (%v)", fi.Mode(), err)
				}
				// A client that dials the IP and sends no SNI gets the first domain's certificate.
				if noSNI, err := handshakeTLS(l.fleet, acmeTLS(roots, "")); err != nil {
					t.Errorf("handshake without SNI: %v", err)
				} else if noSNI.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
					t.Errorf("without SNI: serial %x, want %x", noSNI.SerialNumber, leaf.SerialNumber)
				}
				if challenge == "tls-alpn-01" {
					if second, err := handshakeTLS(l.fleet, acmeTLS(roots, "second.superlink.test")); err != nil {
						t.Errorf("second --acme-domain: %v", err)
					} else if second.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
						t.Errorf("second --acme-domain served the first domain's certificate")
					}
				}
				// The Driver API serves the same certificate.
				if _, err := handshakeTLS(l.driver, acmeTLS(roots, acmeDomain)); err != nil {
					t.Errorf("Driver API handshake: %v", err)
				}
				if err := checkHealth(t, l.fleet, acmeTLS(roots, acmeDomain)); err != nil {
					t.Fatalf("gRPC health check over the ACME certificate: %v", err)
				}
				acmeRound(t, pb, l)
			})
		}
	}
}

// pebbleFindsRenewal reports whether pebble can find the order of a
// certificate with this serial when a renewal order names it ("replaces").
// Pebble 2.10.1 files orders under the hex of the serial's minimal bytes
// but looks them up by the bytes of the ARI CertID, which are DER and start
// with a zero byte when the top bit is set (about 1 in 256 of its serials).
// Such a renewal is refused with HTTP 500, and certmagic retries it without
// "replaces" one minute later, after a 30-second test certificate expired.
// Let's Encrypt finds both forms.
func pebbleFindsRenewal(serial *big.Int) bool {
	b := serial.Bytes()
	return len(b) > 0 && b[0]&0x80 == 0
}

// TestACMERenewal: certificates of 30 s and a renewal check every second;
// the SuperLink serves a new serial without a restart while a client runs
// health checks over new connections every 200 ms and sees no failure.
func TestACMERenewal(t *testing.T) {
	needE2E(t)
	for _, client := range acmeClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			fleet := freeAddr(t)
			pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), Validity: 30 * time.Second, AuthzReuse: -1})
			roots := pb.issuingRoots(t)
			var l *acmeLink
			var first *x509.Certificate
			for attempt := 1; ; attempt++ {
				l = startACMELink(t, pb, acmeLinkOptions{client: client, fleet: fleet,
					extra: []string{"--acme-renew-interval", "1s", "--acme-renew-window", "0.5"}})
				first, _ = waitACMECert(t, l, roots, 60*time.Second)
				if pebbleFindsRenewal(first.SerialNumber) {
					break
				}
				if attempt == 4 {
					t.Fatalf("pebble issued %d serials its ARI lookup cannot find", attempt)
				}
				t.Logf("pebble cannot find the order of serial %x from its ARI CertID; starting again with fresh storage", first.SerialNumber)
				l.stop()
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var checks, failures atomic.Int64
			var firstFailure atomic.Value
			done := make(chan struct{})
			go func() {
				defer close(done)
				for ctx.Err() == nil {
					if err := checkHealth(t, l.fleet, acmeTLS(roots, acmeDomain)); err != nil && ctx.Err() == nil {
						if failures.Add(1) == 1 {
							firstFailure.Store(err.Error())
						}
					}
					checks.Add(1)
					select {
					case <-ctx.Done():
					case <-time.After(200 * time.Millisecond):
					}
				}
			}()

			deadline := time.Now().Add(time.Until(first.NotAfter) + 10*time.Second)
			var renewed *x509.Certificate
			for time.Now().Before(deadline) {
				leaf, err := handshakeTLS(l.fleet, acmeTLS(roots, acmeDomain))
				if err != nil {
					t.Fatalf("handshake during renewal: %v", err)
				}
				if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
					renewed = leaf
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			// Keep the client going a little past the swap.
			time.Sleep(time.Second)
			cancel()
			<-done
			if renewed == nil {
				t.Fatalf("still serving serial %x (expiry %v) after its expiry", first.SerialNumber, first.NotAfter)
			}
			t.Logf("renewed: serial %x -> %x, %d health checks", first.SerialNumber, renewed.SerialNumber, checks.Load())
			// Pebble's validity is in whole seconds and its ARI window may start
			// at once, so a renewal within the first second expires in the same
			// second: the new certificate must not expire sooner.
			if renewed.NotAfter.Before(first.NotAfter) {
				t.Errorf("renewed certificate expires %v, before the first's %v", renewed.NotAfter, first.NotAfter)
			}
			if n := failures.Load(); n > 0 {
				t.Errorf("%d of %d health checks failed during renewal; first: %v", n, checks.Load(), firstFailure.Load())
			}
			if checks.Load() < 5 {
				t.Errorf("only %d health checks ran", checks.Load())
			}
			// With authorization reuse off, the renewal's TLS-ALPN-01
			// validation was answered by the Fleet API listener itself.
			out := l.out.String()
			if i := strings.Index(out, "msg=serving"); i < 0 || !strings.Contains(out[i:], "answering tls-alpn-01 challenge") {
				t.Errorf("no tls-alpn-01 challenge answered on the Fleet API listener after start-up")
			}
		})
	}
}

// TestACMERestartWithoutCA: the certificate in storage is served when the
// CA is down.
func TestACMERestartWithoutCA(t *testing.T) {
	needE2E(t)
	for _, client := range acmeClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			fleet := freeAddr(t)
			pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet)})
			roots := pb.issuingRoots(t)
			storage := filepath.Join(t.TempDir(), "acme")
			l := startACMELink(t, pb, acmeLinkOptions{client: client, fleet: fleet, storage: storage})
			first, _ := waitACMECert(t, l, roots, 60*time.Second)
			l.stop()
			if code := l.cmd.ProcessState.ExitCode(); code != 0 {
				t.Fatalf("flower-superlink exited %d after SIGINT, want 0", code)
			}
			pb.stop()

			l2 := startACMELink(t, pb, acmeLinkOptions{client: client, fleet: fleet, storage: storage,
				extra: []string{"--acme-timeout", "20s"}})
			leaf, took := waitACMECert(t, l2, roots, 30*time.Second)
			if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
				t.Errorf("after restart: serial %x, want the stored %x", leaf.SerialNumber, first.SerialNumber)
			}
			t.Logf("measured: %s: restart from storage with the CA down to serving: %v", client, took.Round(time.Millisecond))
			l2.waitOutput(t, "loaded from storage", 5*time.Second)
			if err := checkHealth(t, l2.fleet, acmeTLS(roots, acmeDomain)); err != nil {
				t.Fatalf("gRPC health check after restart: %v", err)
			}
			acmeRound(t, pb, l2)
		})
	}
}

// TestACMEFaults: a CA that rejects half the nonces still issues; a domain
// the CA cannot validate fails start-up, non-zero, with a clear message,
// within the start-up timeout.
func TestACMEFaults(t *testing.T) {
	needE2E(t)
	for _, client := range acmeClients {
		t.Run("nonce-reject/"+client, func(t *testing.T) {
			t.Parallel()
			fleet := freeAddr(t)
			pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), NonceReject: 50})
			l := startACMELink(t, pb, acmeLinkOptions{client: client, fleet: fleet})
			waitACMECert(t, l, pb.issuingRoots(t), 60*time.Second)
		})
		t.Run("unvalidatable-domain/"+client, func(t *testing.T) {
			t.Parallel()
			fleet := freeAddr(t)
			pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet)})
			// The name resolves to an address where nothing listens.
			pb.addA(t, "elsewhere.test", "127.0.0.2")
			bin(t, "flower-superlink") // built before the clock starts
			start := time.Now()
			l := startACMELink(t, pb, acmeLinkOptions{client: client, fleet: fleet, domain: "elsewhere.test",
				extra: []string{"--acme-timeout", "2m"}})
			// The CA's refusal ends start-up at once; the two minutes of
			// --acme-timeout are only the bound for a CA that never answers.
			code := l.wait(t, 3*time.Minute)
			took := time.Since(start)
			out := l.out.String()
			if code == 0 || code == -1 {
				t.Fatalf("flower-superlink exited %d, want 1:\n%s", code, out)
			}
			for _, want := range []string{
				"flower-superlink: no certificate for elsewhere.test from " + pb.DirURL,
				"127.0.0.2", // the CA's own text: where it tried to connect
				"DNS for elsewhere.test points to this host", "port 443", "rate limits", "staging",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "level=INFO msg=serving") {
				t.Errorf("flower-superlink reported serving without a certificate:\n%s", out)
			}
			if strings.Contains(out, "gave up") || took > time.Minute {
				t.Errorf("start-up waited for --acme-timeout (%v) instead of ending on the CA's refusal", took)
			}
			t.Logf("%s: failed start-up took %v", client, took.Round(time.Millisecond))
		})
	}
}

// TestACMEFlags: bad --acme-* command lines are refused in one line that
// names the flag, with exit code 2, before anything listens or any CA is
// asked.
func TestACMEFlags(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
		code int // 0 means 2, a usage error
	}{
		{[]string{"--acme-domain", "superlink.test", "--acme-ca-root", notPEM}, "--acme-ca-root " + notPEM + " holds no PEM certificate", 1},
		{[]string{"--acme-domain", "superlink.test", "--acme-ca-root", filepath.Join(dir, "missing.pem")}, "--acme-ca-root: open", 1},
		{[]string{"--acme-domain", "superlink.test", "--acme-storage", filepath.Join(blocker, "acme")}, "--acme-storage: cannot create the folder", 1},
		{[]string{"--acme-domain", "superlink.test", "--insecure"}, "conflict", 0},
		{[]string{"--acme-domain", "superlink.test", "--ssl-certfile", "x.pem"}, "conflict", 0},
		{[]string{"--acme-domain", "localhost"}, "--acme-domain", 0},
		{[]string{"--acme-domain", "192.0.2.1"}, "--acme-domain", 0},
		{[]string{"--acme-domain", "superlink.test", "--acme-challenge", "dns-01"}, "--acme-challenge", 0},
		{[]string{"--acme-domain", "superlink.test", "--acme-client", "lego"}, "--acme-client", 0},
		{[]string{"--acme-domain", "superlink.test", "--acme-ca", "http://ca.test/dir"}, "--acme-ca", 0},
		{[]string{"--acme-domain", "superlink.test", "--acme-http-address", ":8080"}, "--acme-http-address needs --acme-challenge http-01", 0},
		{[]string{"--acme-domain", "superlink.test", "--acme-timeout", "0s"}, "--acme-timeout", 0},
		{[]string{"--acme-email", "ops@superlink.test", "--insecure"}, "--acme-email needs --acme-domain", 0},
	} {
		out, code := run(t, 20*time.Second, dir, nil, "flower-superlink", append(c.args,
			"--grpc-rere-fleet-api-address", "127.0.0.1:0", "--driver-api-address", "127.0.0.1:0")...)
		want := c.code
		if want == 0 {
			want = 2
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); code != want || !strings.Contains(lines[len(lines)-1], c.want) || (want == 2 && len(lines) != 1) {
			t.Errorf("flower-superlink %s: exit %d, want %d and a line with %q:\n%s", strings.Join(c.args, " "), code, want, c.want, out)
		}
	}
}

// TestACMERenewalCADown: when renewal fails (the CA is gone), the current
// certificate stays in service and renewal is retried.
func TestACMERenewalCADown(t *testing.T) {
	needE2E(t)
	for _, client := range acmeClients {
		t.Run(client, func(t *testing.T) {
			t.Parallel()
			fleet := freeAddr(t)
			pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), Validity: 30 * time.Second})
			l := startACMELink(t, pb, acmeLinkOptions{client: client, fleet: fleet,
				extra: []string{"--acme-renew-interval", "1s", "--acme-renew-window", "0.5"}})
			roots := pb.issuingRoots(t)
			first, _ := waitACMECert(t, l, roots, 60*time.Second)
			pb.stop()
			mark := len(l.out.String())
			// Until just before expiry: the same certificate, every time,
			// while renewal attempts fail.
			for time.Until(first.NotAfter) > 3*time.Second {
				leaf, err := handshakeTLS(l.fleet, acmeTLS(roots, acmeDomain))
				if err != nil {
					t.Fatalf("handshake while the CA is down: %v", err)
				}
				if leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
					t.Fatalf("serial changed to %x with the CA down", leaf.SerialNumber)
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err := checkHealth(t, l.fleet, acmeTLS(roots, acmeDomain)); err != nil {
				t.Fatalf("health check with the CA down: %v", err)
			}
			if later := l.out.String()[mark:]; !strings.Contains(later, "connection refused") {
				t.Errorf("no failed renewal attempt was logged after the CA stopped:\n%s", later)
			}
		})
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
