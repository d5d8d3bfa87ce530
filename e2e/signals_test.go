package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
)

// hup sends SIGHUP to p n times, waiting after each until p logged want
// once more, and checks that p is still running.
func hup(t *testing.T, p *proc, n int, want string) {
	t.Helper()
	for i := range n {
		before := strings.Count(p.out.String(), want)
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatalf("SIGHUP to %s: %v", p.name, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for strings.Count(p.out.String(), want) <= before {
			select {
			case <-p.done:
				t.Fatalf("%s ended after SIGHUP %d (%v)", p.name, i+1, p.err)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not log %q after SIGHUP %d:\n%s", p.name, want, i+1, p.out.String())
			}
		}
	}
	select {
	case <-p.done:
		t.Fatalf("%s ended after SIGHUP (%v)", p.name, p.err)
	case <-time.After(100 * time.Millisecond):
	}
}

// stopWith sends sig to p and wants exit 0 within 15 s.
func stopWith(t *testing.T, p *proc, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("%s exited %d after %v, want 0:\n%s", p.name, code, sig, p.out.String())
	}
}

// SIGHUP never ends flower-superlink in the file and plaintext modes: with
// files it reloads them (and keeps the certificate it serves when the new
// files are bad), with --insecure it says there is nothing to reload.
// SIGTERM and SIGINT still stop it with exit 0.
func TestSIGHUPSuperLink(t *testing.T) {
	needE2E(t)
	t.Run("files", func(t *testing.T) {
		t.Parallel()
		sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--certificates-poll-interval", "1h"}})
		dir := sl.dir
		hup(t, sl.proc, 2, `msg="SIGHUP: reloaded" reload="certificate files"`)
		serial := servedSerial(t, sl.fleet, sl.tls)
		// A key file that no longer matches: the reload fails, the
		// certificate served stays.
		key := filepath.Join(dir, slKey)
		good, err := os.ReadFile(key)
		if err != nil {
			t.Fatal(err)
		}
		other := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
		if err := os.WriteFile(key, other.Pair.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		hup(t, sl.proc, 1, `level=WARN msg="SIGHUP: reload failed, what was loaded before stays in use" reload="certificate files"`)
		if got := servedSerial(t, sl.fleet, sl.tls); got.Cmp(serial) != 0 {
			t.Fatalf("serves %x after a failed reload, want %x", got, serial)
		}
		if err := os.WriteFile(key, good, 0o600); err != nil {
			t.Fatal(err)
		}
		hup(t, sl.proc, 1, `msg="SIGHUP: reloaded" reload="certificate files"`)
		if err := checkHealth(t, sl.fleet, sl.tls); err != nil {
			t.Fatalf("health after the reloads: %v", err)
		}
		stopWith(t, sl.proc, syscall.SIGTERM)
	})
	t.Run("insecure", func(t *testing.T) {
		t.Parallel()
		sl := startSuperLink(t, linkOptions{args: []string{"--insecure"}})
		hup(t, sl.proc, 2, `msg="SIGHUP: nothing to reload: plaintext (--insecure) has no certificate; SIGINT or SIGTERM stop it"`)
		if err := checkHealth(t, sl.fleet, nil); err != nil {
			t.Fatalf("after SIGHUP: %v", err)
		}
		stopWith(t, sl.proc, syscall.SIGINT)
	})
}

// In ACME mode SIGHUP says that ACME certificates renew on their own, both
// while the first certificate is being obtained (here from a CA that does
// not answer) and once it is served (from pebble); the SuperLink goes on.
func TestSIGHUPSuperLinkACME(t *testing.T) {
	needE2E(t)
	const want = `msg="SIGHUP: nothing to reload: ACME certificates (--acme-domain) are renewed on their own, without a reload; SIGINT or SIGTERM stop it"`
	t.Run("obtaining", func(t *testing.T) {
		t.Parallel()
		dead := freeAddr(t) // nothing listens: the CA cannot be reached
		sl := startSuperLink(t, linkOptions{early: true, args: []string{"--acme-domain", acmeDomain,
			"--acme-ca", "https://" + dead + "/dir", "--acme-storage", filepath.Join(t.TempDir(), "acme")}})
		time.Sleep(300 * time.Millisecond) // obtaining
		hup(t, sl.proc, 2, want)
		stopWith(t, sl.proc, syscall.SIGINT)
		if sl.serving() {
			t.Fatalf("said it serves without a certificate:\n%s", sl.out.String())
		}
	})
	t.Run("serving", func(t *testing.T) {
		t.Parallel()
		fleet := freeAddr(t)
		pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet)})
		l := startACMELink(t, pb, acmeLinkOptions{client: "certmagic", challenge: "tls-alpn-01", fleet: fleet})
		roots := pb.issuingRoots(t)
		leaf, _ := waitACMECert(t, l, roots, 60*time.Second)
		l.waitOutput(t, "msg=serving", 10*time.Second)
		hup(t, l.proc, 2, want)
		if err := checkHealth(t, l.fleet, acmeTLS(roots, acmeDomain)); err != nil {
			t.Fatalf("health after SIGHUP: %v", err)
		}
		if again, err := handshakeTLS(l.fleet, acmeTLS(roots, acmeDomain)); err != nil || again.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			t.Fatalf("after SIGHUP: %v, serial changed: %v", err, err == nil && again.SerialNumber.Cmp(leaf.SerialNumber) != 0)
		}
		stopWith(t, l.proc, syscall.SIGTERM)
	})
}

// SIGHUP never ends flower-client-app or flower-server-app, in each way
// they trust the SuperLink (plaintext, --root-certificates, the system
// roots): each logs that there is nothing to reload, the FedAvg run they
// are in finishes, and SIGTERM then stops the client app gracefully
// (DeleteNode, exit 0).
func TestSIGHUPClientAndServerApps(t *testing.T) {
	needE2E(t)
	for _, mode := range []string{"insecure", "root-certificates", "system-roots"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			var slArgs, tlsArgs, env []string
			var want string
			switch mode {
			case "insecure":
				slArgs, tlsArgs = []string{"--insecure"}, []string{"--insecure"}
				want = `msg="SIGHUP: nothing to reload: plaintext (--insecure) has no certificate; SIGINT or SIGTERM stop it"`
			case "root-certificates":
				flowerCerts(t, dir)
				slArgs, tlsArgs = slSeedArgs, []string{"--root-certificates", slCA}
				want = `msg="SIGHUP: nothing to reload: --root-certificates is read once, when the connection is made; SIGINT or SIGTERM stop it"`
			case "system-roots":
				flowerCerts(t, dir)
				slArgs = slSeedArgs
				env = []string{"SSL_CERT_FILE=" + filepath.Join(dir, slCA), "SSL_CERT_DIR=" + dir}
				want = `msg="SIGHUP: nothing to reload: the system's root certificates are read once, when the connection is made; SIGINT or SIGTERM stop it"`
			}
			sl := startSuperLink(t, linkOptions{dir: dir, args: slArgs})
			client := start(t, dir, env, "flower-client-app", append([]string{"client:app", "--server", sl.fleet, "--poll-interval", "200ms"}, tlsArgs...)...)
			client.waitOutput(t, "node registered", 30*time.Second)
			hup(t, client, 2, want)
			server := start(t, dir, env, "flower-server-app", append([]string{"server:app", "--server", sl.driver, "--rounds", "1", "--min-nodes", "1"}, tlsArgs...)...)
			server.waitOutput(t, "starting ServerApp", 30*time.Second)
			hup(t, server, 2, want)
			if code := server.wait(t, 90*time.Second); code != 0 {
				t.Fatalf("flower-server-app exited %d after SIGHUP:\n%s", code, server.out.String())
			}
			if rs := parseRounds(t, server.out.String()); len(rs) != 1 || rs[0].nodes != 1 {
				t.Fatalf("the run after SIGHUP: %+v:\n%s", rs, server.out.String())
			}
			hup(t, client, 1, want)
			stopWith(t, client, syscall.SIGTERM)
			if !strings.Contains(client.out.String(), "node deleted") {
				t.Fatalf("the client app did not call DeleteNode on SIGTERM:\n%s", client.out.String())
			}
		})
	}
}
