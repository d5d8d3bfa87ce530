package clientflags

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// explainWith parses args as the client app's flags, explains err (a
// failure to reach addr) with transport as app does, then words it for
// the command, and checks that the result keeps what err matched.
func explainWith(t *testing.T, err error, addr string, args ...string) string {
	t.Helper()
	f, _ := parse(t, args...)
	o, oerr := f.TLS()
	if oerr != nil {
		t.Fatalf("%q: %v", args, oerr)
	}
	te := transport.Explain(err, addr, o)
	got := f.Explain(te)
	if !errors.Is(got, te) {
		t.Errorf("the worded error does not unwrap to transport's: %v", got)
	}
	return got.Error()
}

func wantWords(t *testing.T, msg string, words ...string) {
	t.Helper()
	for _, w := range words {
		if !strings.Contains(msg, w) {
			t.Errorf("%q lacks %q", msg, w)
		}
	}
	if strings.Contains(msg, "ClientOptions") {
		t.Errorf("%q names a Go field to a command user", msg)
	}
}

// writePEM writes data to a file of dir and returns its path.
func writePEM(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// gRPCText is an error as gRPC leaves a failed handshake: text only.
func gRPCText(s string) error {
	return fmt.Errorf("connection error: desc = %q", "transport: authentication handshake failed: "+s)
}

// TestExplainServerCertificate: what transport finds wrong with the
// server's certificate, worded with the flags and the flower-certs command
// that fixes it, and, for a certificate flower-certs did not make (an ACME
// one), with what its operator does instead.
func TestExplainServerCertificate(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	p := testkit.NewPKI(t, selfsigned.CAOptions{NotBefore: now.Add(-72 * time.Hour)}, selfsigned.ServerOptions{})
	other := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	otherCA := writePEM(t, dir, "other-ca.crt", other.CA.CertPEM)
	twin, err := selfsigned.NewCA(selfsigned.CAOptions{CommonName: p.CA.Cert.Subject.CommonName})
	if err != nil {
		t.Fatal(err)
	}
	twinCA := writePEM(t, dir, "twin-ca.crt", twin.CertPEM)
	expired := p.Issue(t, selfsigned.ServerOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}).Pair.Leaf
	named := p.Issue(t, selfsigned.ServerOptions{Hosts: []string{"other.example"}, NoDefaultHosts: true}).Pair.Leaf
	acme := leafOf(t, p.CA, "superlink.example.org", now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	acmeValid := leafOf(t, p.CA, "superlink.example.org", now.Add(-time.Hour), now.Add(time.Hour))
	const addr = "127.0.0.1:9092"
	expiredAt := func(c *x509.Certificate) error {
		return &tls.CertificateVerificationError{UnverifiedCertificates: []*x509.Certificate{c}, Err: x509.CertificateInvalidError{
			Cert: c, Reason: x509.Expired, Detail: fmt.Sprintf("current time %s is after %s", now.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))}}
	}
	for _, c := range []struct {
		name  string
		err   error
		addr  string
		args  []string
		start string
		words []string
		not   string
	}{
		{"unknown authority", x509.UnknownAuthorityError{Cert: p.Pair.Leaf}, addr, []string{"--root-certificates", otherCA},
			"the certificate of the server at 127.0.0.1:9092 is not signed by a CA in " + otherCA,
			[]string{"pass --root-certificates with the CA certificate that signed it instead of " + otherCA, "(flower-certs writes it as certificates/ca.crt on the server's machine)"}, ""},
		{"unknown authority, system roots", x509.UnknownAuthorityError{Cert: p.Pair.Leaf}, addr, nil,
			"the certificate of the server at 127.0.0.1:9092 is not signed by a CA in the system roots",
			[]string{"pass --root-certificates with the CA certificate that signed it (flower-certs"}, "instead of"},
		{"a CA made again", x509.UnknownAuthorityError{Cert: p.Pair.Leaf}, addr, []string{"--root-certificates", twinCA},
			"the certificate of the server at 127.0.0.1:9092 is not signed by a CA in " + twinCA,
			[]string{twinCA + " holds another CA of that name", "made again", "pass --root-certificates with the CA certificate that issued the server's certificate"}, ""},
		{"expired", expiredAt(expired), addr, nil,
			"the certificate of the server at 127.0.0.1:9092 has expired (",
			[]string{"re-issue it on the server (flower-certs --force)", "check the clock of this machine"}, ""},
		{"expired, from gRPC's text", gRPCText("tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time 2026-11-26T03:00:00Z is after 2026-02-01T00:00:00Z"), addr, nil,
			"the certificate of the server at 127.0.0.1:9092 has expired (valid until 2026-02-01T00:00:00Z, and the time here is 2026-11-26T03:00:00Z)",
			[]string{"flower-certs --force"}, ""},
		{"expired ACME certificate", expiredAt(acme), addr, nil,
			"the certificate of the server at 127.0.0.1:9092 has expired (",
			[]string{"its operator must renew it (a SuperLink with --acme-domain renews its own certificate"}, "flower-certs"},
		{"not yet valid", gRPCText("x509: certificate has expired or is not yet valid: current time 2026-01-01T00:00:00Z is before 2026-02-01T00:00:00Z"), addr, nil,
			"the certificate of the server at 127.0.0.1:9092 is not yet valid (valid from 2026-02-01T00:00:00Z",
			[]string{"check the clock of this machine and of the server, or re-issue the certificate (flower-certs --force)"}, ""},
		{"name mismatch", x509.HostnameError{Certificate: named, Host: "127.0.0.1"}, addr, nil,
			`the certificate of the server at 127.0.0.1:9092 does not hold "127.0.0.1", the name dialled; it holds other.example`,
			[]string{"pass --server with one of its names and the port (e.g. --server other.example:9092)", "or --tls-server-name with one of them", "flower-certs --host 127.0.0.1 --force"}, ""},
		{"name mismatch with --tls-server-name", x509.HostnameError{Certificate: named, Host: "sl.example"}, addr, []string{"--tls-server-name", "sl.example"},
			`does not hold "sl.example", the name --tls-server-name asks for; it holds other.example`,
			[]string{"flower-certs --host sl.example --force"}, ""},
		{"a name an ACME certificate lacks", x509.HostnameError{Certificate: acmeValid, Host: "other.example.org"}, addr, []string{"--tls-server-name", "other.example.org"},
			`does not hold "other.example.org"`,
			[]string{"--server superlink.example.org:9092", "(with ACME: --acme-domain other.example.org)"}, "flower-certs"},
		{"an IP an ACME certificate lacks", x509.HostnameError{Certificate: acmeValid, Host: "127.0.0.1"}, addr, nil,
			`does not hold "127.0.0.1"`,
			[]string{"--server superlink.example.org:9092"}, "issue"},
		{"no names", gRPCText("tls: failed to verify certificate: x509: certificate relies on legacy Common Name field, use SANs instead"), "sl.example:9092", nil,
			"the certificate of the server at sl.example:9092 holds no names",
			[]string{"re-issue it with the server's names (flower-certs --host NAME --force)"}, ""},
		{"many names", gRPCText("x509: certificate is valid for 120 names, but none matched sl.example"), "sl.example:9092", nil,
			`does not hold "sl.example", the name dialled; it holds many other names`,
			[]string{"--tls-server-name", "flower-certs --host sl.example --force"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := explainWith(t, c.err, c.addr, c.args...)
			if !strings.HasPrefix(msg, c.start) && !strings.Contains(msg, c.start) {
				t.Errorf("%q does not say %q", msg, c.start)
			}
			wantWords(t, msg, c.words...)
			if c.not != "" && strings.Contains(msg, c.not) {
				t.Errorf("%q says %q", msg, c.not)
			}
		})
	}
}

// leafOf makes a server certificate for name signed by ca that flower-certs
// could not have made: no organization of ours, as an ACME CA's.
func leafOf(t *testing.T, ca *selfsigned.CA, name string, notBefore, notAfter time.Time) *x509.Certificate {
	t.Helper()
	p, err := ca.IssueServer(selfsigned.ServerOptions{Hosts: []string{name}, NoDefaultHosts: true, NotBefore: notBefore, NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	c := *p.Leaf
	c.Subject.Organization = nil
	return &c
}

// TestExplainConnection: TLS to a plaintext server and the reverse, an
// address no certificate holds, and network failures, each worded with
// the flags to pass.
func TestExplainConnection(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, c := range []struct {
		name  string
		err   error
		addr  string
		args  []string
		want  string
		words []string
	}{
		{"TLS client to a plaintext server", tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}, "127.0.0.1:9092", nil,
			"the server at 127.0.0.1:9092 does not speak TLS; it may run with --insecure: pass --insecure, or start it with certificates", nil},
		{"0.0.0.0", gRPCText("tls: failed to verify certificate: x509: certificate is valid for localhost, not 0.0.0.0"), "0.0.0.0:9092", nil,
			"--server 0.0.0.0:9092: 0.0.0.0 is an address servers listen on, not one to dial: pass --server 127.0.0.1:9092 or the SuperLink's host name (a name its certificate holds)", nil},
		{"connection refused", refused, "127.0.0.1:9092", nil,
			"cannot reach the server at 127.0.0.1:9092: ", []string{"connection refused", ": check that it runs and that --server names it"}},
		{"closed on a plaintext client", fmt.Errorf("rpc error: %w", io.EOF), "127.0.0.1:9092", []string{"--insecure"},
			"cannot reach the server at 127.0.0.1:9092: ", []string{"; if the server speaks TLS, drop --insecure and pass --root-certificates"}},
		{"nothing at ::", refused, "[::]:9092", nil,
			"cannot reach the server at [::]:9092: ", []string{"; besides, --server [::]:9092: :: is an address servers listen on"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := explainWith(t, c.err, c.addr, c.args...)
			if !strings.HasPrefix(msg, c.want) {
				t.Errorf("%q, want it to start %q", msg, c.want)
			}
			wantWords(t, msg, c.words...)
		})
	}

	// A TLS server, probed with --insecure.
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*p.Cert}}
	srv.StartTLS()
	defer srv.Close()
	l := srv.Listener
	f, _ := parse(t, "--insecure", "--server", l.Addr().String())
	o, _ := f.TLS()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := f.Explain(transport.Probe(ctx, l.Addr().String(), o))
	if !errors.Is(err, transport.ErrTLSPeer) || err.Error() != "the server at "+l.Addr().String()+" speaks TLS; drop --insecure and pass --root-certificates with the CA certificate that signed its certificate" {
		t.Errorf("a TLS server probed with --insecure: %v", err)
	}
}

// TestExplainRootCertificatesFile: a --root-certificates file that cannot
// be used is named with its flag.
func TestExplainRootCertificatesFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "ca.crt")
	f, _ := parse(t, "--root-certificates", missing)
	o, err := f.TLS()
	if err != nil {
		t.Fatal(err)
	}
	_, err = transport.ClientCredentials(o)
	got := f.Explain(err)
	if want := "--root-certificates " + missing + ": no such file: pass the CA certificate that issued the server's certificate, such as certificates/ca.crt from flower-certs"; got.Error() != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	var ue *cli.UsageError
	if !errors.Is(got, transport.ErrConfig) || errors.As(got, &ue) {
		t.Errorf("%v: not transport's config error, or a usage error", got)
	}
}

// TestExplainClientCertificateRefused: the server's refusal of this
// client's certificate names the flags that present one and the
// flower-certs command that issues it, with the certificate's own name.
func TestExplainClientCertificateRefused(t *testing.T) {
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, key := writeClient(t, ca, transport.Identity{Role: transport.RoleNode, Name: "alice"})
	alert := func(a string) error { return &net.OpError{Op: "remote error", Err: errors.New(a)} }
	for _, c := range []struct {
		name  string
		err   error
		args  []string
		words []string
	}{
		{"none presented", alert("tls: certificate required"), nil,
			[]string{"requires a client certificate (mutual TLS) and this client presented none (tls: certificate required)",
				"pass --client-certificate and --client-key with a node certificate from the SuperLink's CA (flower-certs node NAME on the SuperLink's machine)"}},
		{"another CA", alert("tls: unknown certificate authority"), []string{"--client-certificate", cert, "--client-key", key},
			[]string{"does not trust the CA that issued the client certificate " + cert + " (sepal:node:alice", "(flower-certs node NAME in the SuperLink's certificates folder)"}},
		{"revoked", alert("tls: bad certificate"), []string{"--client-certificate", cert, "--client-key", key},
			[]string{"has been revoked", "ask the SuperLink's operator for a new one (flower-certs node --force alice)"}},
		{"expired", alert("tls: expired certificate"), []string{"--client-certificate", cert, "--client-key", key},
			[]string{"as expired or not yet valid", "issue a new one (flower-certs node --force alice), or check the clocks"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			msg := explainWith(t, c.err, "127.0.0.1:9092", c.args...)
			wantWords(t, msg, c.words...)
			if !strings.HasPrefix(msg, "the server at 127.0.0.1:9092 ") {
				t.Errorf("%q does not start with the server", msg)
			}
		})
	}
}

// TestExplainWrongAPI: an app at the other API's port is told which port
// it is and which flower-superlink flag sets the one to dial.
func TestExplainWrongAPI(t *testing.T) {
	f, _ := parse(t)
	for _, c := range []struct {
		e    *app.WrongAPIError
		want string
	}{
		{&app.WrongAPIError{Addr: "127.0.0.1:9091", Want: "Fleet API", Found: "Driver API", Instead: "127.0.0.1:9092"},
			"127.0.0.1:9091 is the SuperLink's Driver API, where server apps connect, not its Fleet API. Client apps (SuperNodes) connect to the SuperLink's Fleet API: the port of flower-superlink's --grpc-rere-fleet-api-address (default 9092), such as --server 127.0.0.1:9092"},
		{&app.WrongAPIError{Addr: "127.0.0.1:9092", Want: "Driver API", Found: "Fleet API", Instead: "127.0.0.1:9091"},
			"127.0.0.1:9092 is the SuperLink's Fleet API, where client apps (SuperNodes) connect, not its Driver API. Server apps connect to the SuperLink's Driver API: the port of flower-superlink's --driver-api-address (default 9091), such as --server 127.0.0.1:9091"},
		{&app.WrongAPIError{Addr: "127.0.0.1:8080", Want: "Fleet API", Answer: "unknown service flwr.proto.Fleet", Instead: "127.0.0.1:9092"},
			"127.0.0.1:8080 does not serve the SuperLink's Fleet API (it answered: unknown service flwr.proto.Fleet); is it a SuperLink? Client apps (SuperNodes) connect to the SuperLink's Fleet API: the port of flower-superlink's --grpc-rere-fleet-api-address (default 9092), such as --server 127.0.0.1:9092"},
	} {
		got := f.Explain(fmt.Errorf("wrapped: %w", c.e))
		if got.Error() != c.want || !errors.Is(got, app.ErrWrongAPI) {
			t.Errorf("got  %q\nwant %q", got, c.want)
		}
	}
}

// Errors that are neither transport's nor app's wrong API pass unchanged.
func TestExplainOthers(t *testing.T) {
	f, _ := parse(t)
	other := errors.New("round 1: no usable result")
	if f.Explain(nil) != nil || f.Explain(other) != other {
		t.Error("Explain changed an error it does not word")
	}
	// Failures whose words name no option keep transport's.
	hs := transport.Explain(alertError("tls: handshake failure"), "127.0.0.1:9092", transport.ClientOptions{})
	if got := f.Explain(hs); got != hs {
		t.Errorf("a handshake failure was reworded: %v", got)
	}
}

func alertError(a string) error { return &net.OpError{Op: "remote error", Err: errors.New(a)} }
