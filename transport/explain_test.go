package transport_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// Every failure as a real gRPC call reports it: gRPC keeps only the text,
// and Explain must still name the cause and the fix.
func TestExplainGRPCErrors(t *testing.T) {
	now := time.Now()
	good := testkit.NewPKI(t, selfsigned.CAOptions{NotBefore: now.Add(-72 * time.Hour)}, selfsigned.ServerOptions{})
	other := newPKI(t, selfsigned.ServerOptions{})
	expired := good.Issue(t, selfsigned.ServerOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	future := good.Issue(t, selfsigned.ServerOptions{NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)})
	named := good.Issue(t, selfsigned.ServerOptions{Hosts: []string{"superlink.sepal.test"}, NoDefaultHosts: true})
	ipOnly := good.Issue(t, selfsigned.ServerOptions{Hosts: []string{"10.9.8.7"}, NoDefaultHosts: true})
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	serve := func(p *testkit.PKI) string {
		return serveGRPC(t, grpc.Creds(transport.ServerCredentials(p.Source())))
	}
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

	goodAddr, namedAddr, ipAddr := serve(good), serve(named), serve(ipOnly)
	cases := []struct {
		name     string
		addr     string
		o        transport.ClientOptions
		kind     transport.Kind
		sentinel error
		words    []string
	}{
		{"unknown authority", goodAddr, transport.ClientOptions{RootCertificates: other.CAFile},
			transport.KindUnknownAuthority, transport.ErrUnknownAuthority, []string{"not signed by", "unknown authority", other.CAFile, "ClientOptions.RootCertificates"}},
		{"expired", serve(expired), transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindExpired, transport.ErrExpired, []string{"expired", "valid until " + stamp(expired.Pair.Leaf.NotAfter), "the time here is", "renew it", "clock"}},
		{"not yet valid", serve(future), transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindNotYetValid, transport.ErrNotYetValid, []string{"not yet valid", "valid from " + stamp(future.Pair.Leaf.NotBefore), "the time here is", "clock"}},
		{"name mismatch", "localhost:" + port(namedAddr), transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindNameMismatch, transport.ErrNameMismatch, []string{`"localhost"`, "superlink.sepal.test", "e.g. superlink.sepal.test:" + port(namedAddr), "ClientOptions.ServerName"}},
		{"IP not in the certificate", ipAddr, transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindNameMismatch, transport.ErrNameMismatch, []string{`"127.0.0.1"`, "10.9.8.7", "dial one of its names", "ClientOptions.ServerName"}},
		{"IP dialled, DNS-only certificate", namedAddr, transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindNameMismatch, transport.ErrNameMismatch, []string{`"127.0.0.1"`, "no IP address", "dial one of its names", "ClientOptions.ServerName"}},
		{"0.0.0.0", "0.0.0.0:" + port(goodAddr), transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindUnspecifiedAddress, transport.ErrUnspecifiedAddress, []string{"0.0.0.0 is an address servers listen on, not one to dial", "dial 127.0.0.1:" + port(goodAddr)}},
		{"plaintext server", serveGRPC(t), transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindPlaintextPeer, transport.ErrPlaintextPeer, []string{"does not speak TLS", "ClientOptions.Insecure", "start it with certificates"}},
		{"nothing listens", deadAddr(t), transport.ClientOptions{RootCertificates: good.CAFile},
			transport.KindNetwork, transport.ErrNetwork, []string{"connection refused", "the address names it"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			creds, err := transport.ClientCredentials(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			_, err = testkit.HealthCheck(t, tc.addr, creds)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("gRPC call: %v, want Unavailable", err)
			}
			t.Logf("gRPC said: %v", err)
			wantExplained(t, transport.Explain(err, tc.addr, tc.o), tc.kind, tc.sentinel, append(tc.words, tc.addr)...)
			if got := transport.IsPermanent(err); got != tc.kind.Permanent() {
				t.Errorf("IsPermanent(raw) = %v", got)
			}
		})
	}
}

// Texts that real servers rarely produce: certificates without SANs or with
// many names, wrapped the way gRPC and fmt wrap them.
func TestExplainTexts(t *testing.T) {
	o := transport.ClientOptions{RootCertificates: "certificates/ca.crt"}
	wrap := func(s string) error {
		return status.Error(codes.Unavailable, fmt.Sprintf("connection error: desc = %q", "transport: authentication handshake failed: "+s))
	}
	cases := []struct {
		err   error
		addr  string
		kind  transport.Kind
		words []string
	}{
		{wrap("tls: failed to verify certificate: x509: certificate relies on legacy Common Name field, use SANs instead"), "sl.example:9092",
			transport.KindNameMismatch, []string{"holds no names", `"sl.example"`, "re-issue it with the names clients dial"}},
		{wrap("tls: failed to verify certificate: x509: certificate is not valid for any names, but wanted to match sl.example"), "sl.example:9092",
			transport.KindNameMismatch, []string{"holds no names", `"sl.example"`}},
		{wrap("tls: failed to verify certificate: x509: certificate is valid for 120 names, but none matched sl.example"), "sl.example:9092",
			transport.KindNameMismatch, []string{`"sl.example"`, "many other names", "ClientOptions.ServerName"}},
		{wrap("tls: failed to verify certificate: x509: certificate is valid for localhost, not ::"), "[::]:9092",
			transport.KindUnspecifiedAddress, []string{":: is an address servers listen on", "dial 127.0.0.1:9092"}},
		{wrap("tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time 2026-11-26T03:00:00Z is after 2026-02-01T00:00:00Z"), "sl.example:9092",
			transport.KindExpired, []string{"has expired", "valid until 2026-02-01T00:00:00Z", "the time here is 2026-11-26T03:00:00Z", "renew it"}},
		{fmt.Errorf("dial: %w", errors.New("tls: first record does not look like a TLS handshake")), "sl.example:9092",
			transport.KindPlaintextPeer, []string{"does not speak TLS", "ClientOptions.Insecure"}},
		{status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp: lookup sl.example: no such host"`), "sl.example:9092",
			transport.KindNetwork, []string{"no such host", "the address names it"}},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), "sl.example:9092",
			transport.KindNetwork, []string{"deadline exceeded", "the address names it"}},
		{&net.OpError{Op: "dial", Net: "tcp", Err: timeoutError{}}, "sl.example:9092",
			transport.KindNetwork, []string{"i/o timeout", "the address names it"}},
		{wrap("remote error: tls: handshake failure"), "sl.example:9092",
			transport.KindHandshake, []string{"handshake failure"}},
		{errors.New("something else\nentirely"), "sl.example:9092",
			transport.KindUnknown, []string{"sl.example:9092", "something else entirely"}},
	}
	for _, tc := range cases {
		t.Run(tc.kind.String(), func(t *testing.T) {
			wantExplained(t, transport.Explain(tc.err, tc.addr, o), tc.kind, sentinelOf(tc.kind), append(tc.words, tc.addr)...)
		})
	}
	if transport.Explain(nil, "x:1", o) != nil || transport.IsPermanent(nil) {
		t.Error("nil is not passed through")
	}
	first := transport.Explain(wrap("x509: certificate signed by unknown authority"), "x:1", o)
	if again := transport.Explain(first, "y:2", transport.ClientOptions{}); again != first {
		t.Errorf("an explained error was explained again: %v", again)
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func sentinelOf(k transport.Kind) error {
	return map[transport.Kind]error{
		transport.KindUnknown: transport.ErrUnknown, transport.KindNetwork: transport.ErrNetwork,
		transport.KindNameMismatch: transport.ErrNameMismatch, transport.KindUnspecifiedAddress: transport.ErrUnspecifiedAddress,
		transport.KindExpired: transport.ErrExpired, transport.KindPlaintextPeer: transport.ErrPlaintextPeer,
		transport.KindHandshake: transport.ErrHandshake, transport.KindNotYetValid: transport.ErrNotYetValid,
	}[k]
}

// notReadySource fails every handshake, as an ACME source does until its
// first certificate is in.
type notReadySource struct{}

func (notReadySource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, errors.New("the certificates are still being obtained")
}

// A server without a certificate yet answers with an internal_error alert:
// clients must retry, not give up as on a verification failure.
func TestExplainServerNotReady(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	o := transport.ClientOptions{RootCertificates: p.CAFile}
	words := []string{"internal error", "no certificate to serve yet", "ACME"}

	addr := serveTLS(t, notReadySource{})
	wantExplained(t, probe(t, addr, o), transport.KindServerNotReady, transport.ErrServerNotReady, append(words, addr)...)

	gaddr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(notReadySource{})))
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	_, err = testkit.HealthCheck(t, gaddr, creds)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("gRPC call: %v, want Unavailable", err)
	}
	if transport.IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = true: a client would give up on a server still obtaining its certificate", err)
	}
	wantExplained(t, transport.Explain(err, gaddr, o), transport.KindServerNotReady, transport.ErrServerNotReady, append(words, gaddr)...)
}

// Names in a message come from the server's certificate, which a hostile
// server chooses: control characters in them never reach the message.
func TestExplainControlCharacters(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "evil"},
		DNSNames:     []string{"evil\x1b[31m\r\n.example"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA.Cert, key.Public(), p.CA.Key)
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, testkit.StaticSource{Cert: &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}})
	err = transport.Probe(context.Background(), addr, transport.ClientOptions{RootCertificates: p.CAFile})
	if !errors.Is(err, transport.ErrNameMismatch) {
		t.Fatalf("Probe = %v, want a name mismatch", err)
	}
	if msg := err.Error(); strings.ContainsAny(msg, "\n\r\x1b") || !strings.Contains(msg, "evil?[31m??.example") {
		t.Fatalf("message holds control characters or lost the name: %q", msg)
	}
}

// A CA made again under the name of the one a client trusts (as every
// flower-certs CA was once named): the unknown-authority message tells the
// two apart by their key ids and says what happened; CAs of different
// names get the plain message.
func TestExplainUnknownAuthoritySameName(t *testing.T) {
	const cn = "Sepal research CA"
	served := testkit.NewPKI(t, selfsigned.CAOptions{CommonName: cn}, selfsigned.ServerOptions{})
	trusted := testkit.NewPKI(t, selfsigned.CAOptions{CommonName: cn}, selfsigned.ServerOptions{})
	addr := serveTLS(t, served.Source())
	o := transport.ClientOptions{RootCertificates: trusted.CAFile}
	wantExplained(t, probe(t, addr, o), transport.KindUnknownAuthority, transport.ErrUnknownAuthority,
		`it was issued by "CN=`+cn+`,O=Sepal"`, trusted.CAFile+" holds another CA of that name",
		"with key id "+certfmt.KeyID(served.CA.Cert.SubjectKeyId), "of that name, key id "+certfmt.KeyID(trusted.CA.Cert.SubjectKeyId),
		"one of the two was made again", "ClientOptions.RootCertificates")

	// Default names differ, and the message shows the served CA's.
	other := newPKI(t, selfsigned.ServerOptions{})
	mine := newPKI(t, selfsigned.ServerOptions{})
	if other.CA.Cert.Subject.String() == mine.CA.Cert.Subject.String() {
		t.Fatalf("two new CAs share the name %q", mine.CA.Cert.Subject)
	}
	e := wantExplained(t, probe(t, serveTLS(t, other.Source()), transport.ClientOptions{RootCertificates: mine.CAFile}),
		transport.KindUnknownAuthority, transport.ErrUnknownAuthority, `it was issued by "`+other.CA.Cert.Subject.String()+`"`)
	if strings.Contains(e.Error(), "of that name") {
		t.Errorf("CAs of different names called namesakes: %v", e)
	}
}

// A certificate that flower-certs did not make (an ACME CA's, whose
// subject names no organization of ours): an expired one is for its
// operator to renew, a name it lacks is one to have it issued for, and an
// IP address is one an ACME certificate never holds. The certificate is in
// the error, so that a command can tell such a certificate from one of its
// own and word the fix (an ACME SuperLink renews its own).
func TestExplainACMECertificateFixes(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	leaf := func(notBefore, notAfter time.Time, names ...string) *tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]},
			DNSNames: names, NotBefore: notBefore, NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA.Cert, key.Public(), p.CA.Key)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	now := time.Now()
	o := transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "superlink.example.org"}
	for _, c := range []struct {
		name  string
		cert  *tls.Certificate
		o     transport.ClientOptions
		kind  transport.Kind
		words []string
	}{
		{"expired", leaf(now.Add(-48*time.Hour), now.Add(-24*time.Hour), "superlink.example.org"), o, transport.KindExpired,
			[]string{"has expired", "its operator must renew it"}},
		{"not yet valid", leaf(now.Add(24*time.Hour), now.Add(48*time.Hour), "superlink.example.org"), o, transport.KindNotYetValid,
			[]string{"not yet valid", "check the clock"}},
		{"name not held", leaf(now.Add(-time.Hour), now.Add(time.Hour), "superlink.example.org"),
			transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "other.example.org"},
			transport.KindNameMismatch, []string{`does not hold "other.example.org"`, "superlink.example.org", "have the certificate issued for other.example.org too"}},
		{"IP not held", leaf(now.Add(-time.Hour), now.Add(time.Hour), "superlink.example.org"), transport.ClientOptions{RootCertificates: p.CAFile},
			transport.KindNameMismatch, []string{`does not hold "127.0.0.1"`, "e.g. superlink.example.org:"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			addr := serveTLS(t, testkit.StaticSource{Cert: c.cert})
			e := wantExplained(t, probe(t, addr, c.o), c.kind, sentinelOf(c.kind), c.words...)
			if e.Cert == nil || e.Cert.Subject.CommonName != "superlink.example.org" {
				t.Errorf("the error does not carry the server's certificate: %+v", e.Cert)
			}
			if c.name == "IP not held" && strings.Contains(e.Error(), "issued for") {
				t.Errorf("an IP address to have an ACME certificate issued for: %v", e)
			}
		})
	}
}
