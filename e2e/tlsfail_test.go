package e2e

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

// tlsFailLimit is how long a client or server app may take to give up on a
// TLS failure: such failures are never retried.
const tlsFailLimit = 10 * time.Second

// writeTestCerts makes a CA and a server certificate with o in dir, written
// as flower-certs writes them.
func writeTestCerts(t *testing.T, dir string, o selfsigned.ServerOptions) (testkit.Files, *testkit.PKI) {
	t.Helper()
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, o)
	return p.WriteFiles(t, dir), p
}

// link is a SuperLink the failing apps are pointed at.
type link struct{ fleet, driver string }

// startExpiredSuperLink serves the Fleet and Driver APIs in this process
// with an expired certificate, which flower-superlink refuses to start with.
func startExpiredSuperLink(t *testing.T, p *testkit.PKI) link {
	t.Helper()
	sl := superlink.New(superlink.Options{State: memstate.New(memstate.Options{}), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	creds := transport.ServerCredentials(p.Source())
	l := testkit.Serve(t, func(ctx context.Context, fleet, driver net.Listener) error {
		return sl.Serve(ctx, superlink.Listeners{Fleet: fleet, Driver: driver, FleetCreds: creds, DriverCreds: creds})
	})
	return link{fleet: l.Fleet, driver: l.Driver}
}

// TestTLSFailures points both apps at a SuperLink they must not trust, or
// cannot talk to, and checks that each gives up at once, exits non-zero and
// says why in one message naming the cause, the flag or file and the fix.
func TestTLSFailures(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()

	good, _ := writeTestCerts(t, filepath.Join(dir, "good"), selfsigned.ServerOptions{})
	other, _ := writeTestCerts(t, filepath.Join(dir, "other"), selfsigned.ServerOptions{})
	named, _ := writeTestCerts(t, filepath.Join(dir, "named"), selfsigned.ServerOptions{NoDefaultHosts: true, Hosts: []string{"other.example"}})
	expiredFiles, expired := writeTestCerts(t, filepath.Join(dir, "expired"), selfsigned.ServerOptions{
		NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})

	startLink := func(args ...string) link {
		l := startSuperLink(t, linkOptions{dir: dir, args: args})
		return link{fleet: l.fleet, driver: l.driver}
	}
	tlsLink := startLink("--certificates", good.CA, good.Cert, good.Key)
	namedLink := startLink("--certificates", named.CA, named.Cert, named.Key)
	plainLink := startLink("--insecure")
	expiredLink := startExpiredSuperLink(t, expired)

	type tlsCase struct {
		name string
		link link
		// host replaces 127.0.0.1 in --server when set.
		host string
		args []string
		// want are the key parts of the message, the first its start;
		// PORT is the port dialled.
		want []string
	}
	cases := []tlsCase{
		{
			name: "wrong CA", link: tlsLink,
			args: []string{"--root-certificates", other.CA},
			want: []string{"the certificate of the server at 127.0.0.1:PORT is not signed by a CA in " + other.CA, "(x509: unknown authority, it was issued by ",
				"pass --root-certificates with the CA certificate that signed it instead of " + other.CA, "certificates/ca.crt"},
		},
		{
			name: "expired", link: expiredLink,
			args: []string{"--root-certificates", expiredFiles.CA},
			want: []string{"the certificate of the server at 127.0.0.1:PORT has expired (", "until " + expired.Pair.Leaf.NotAfter.UTC().Format(time.RFC3339),
				"re-issue it on the server (flower-certs --force)", "check the clock of this machine"},
		},
		{
			name: "name mismatch", link: namedLink,
			args: []string{"--root-certificates", named.CA},
			want: []string{`the certificate of the server at 127.0.0.1:PORT does not hold "127.0.0.1", the name dialled; it holds other.example`,
				"--server other.example:PORT", "--tls-server-name", "flower-certs --host 127.0.0.1 --force"},
		},
		{
			name: "plaintext client to TLS", link: tlsLink,
			args: []string{"--insecure"},
			want: []string{"the server at 127.0.0.1:PORT speaks TLS; drop --insecure and pass --root-certificates"},
		},
		{
			name: "TLS client to plaintext", link: plainLink,
			args: []string{"--root-certificates", good.CA},
			want: []string{"the server at 127.0.0.1:PORT does not speak TLS; it may run with --insecure: pass --insecure, or start it with certificates"},
		},
		{
			name: "0.0.0.0 with TLS", link: tlsLink, host: "0.0.0.0",
			args: []string{"--root-certificates", good.CA},
			want: []string{"--server 0.0.0.0:PORT: 0.0.0.0 is an address servers listen on, not one to dial", "pass --server 127.0.0.1:PORT"},
		},
	}
	for _, c := range cases {
		for _, app := range []string{"flower-client-app", "flower-server-app"} {
			t.Run(c.name+"/"+app, func(t *testing.T) {
				t.Parallel()
				addr, ref := c.link.fleet, "client:app"
				if app == "flower-server-app" {
					addr, ref = c.link.driver, "server:app"
				}
				_, port, _ := net.SplitHostPort(addr)
				if c.host != "" {
					addr = net.JoinHostPort(c.host, port)
				}
				args := append([]string{ref, "--server", addr}, c.args...)
				began := time.Now()
				out, code := run(t, tlsFailLimit, dir, nil, app, args...)
				took := time.Since(began)
				if code != 1 {
					t.Fatalf("%s %s exited %d after %v, want 1:\n%s", app, strings.Join(args, " "), code, took, out)
				}
				// One message, on one line, that starts with the command
				// and what happened: "flower-client-app: the server at ...".
				start := app + ": " + strings.ReplaceAll(c.want[0], "PORT", port)
				msg := messageLine(out, app+": ")
				if !strings.HasPrefix(msg, start) {
					t.Fatalf("%s %s: no line starting %q:\n%s", app, strings.Join(args, " "), start, out)
				}
				for _, w := range c.want {
					w = strings.ReplaceAll(w, "PORT", port)
					if !strings.Contains(msg, w) {
						t.Errorf("%s %s (exit %d after %v): the message lacks %q:\n%s\nfull output:\n%s", app, strings.Join(args, " "), code, took.Round(time.Millisecond), w, msg, out)
					}
				}
				t.Logf("exit %d after %v: %s", code, took.Round(time.Millisecond), msg)
			})
		}
	}
}

// messageLine returns the line of out that starts with prefix, or "".
func messageLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}
