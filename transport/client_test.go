package transport_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

func TestClientConfigRootFileErrors(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, selfsigned.ServerOptions{})
	write := func(name string, data []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	missing := filepath.Join(dir, "nope.crt")
	empty := write("empty.crt", []byte(" \n"))
	key := write("server.key", p.Pair.KeyPEM)
	text := write("notes.txt", []byte("hello, not a certificate\n"))
	for _, tc := range []struct {
		name  string
		o     transport.ClientOptions
		words []string
	}{
		{"missing", transport.ClientOptions{RootCertificates: missing}, []string{missing, "ClientOptions.RootCertificates", "no such file", "the CA certificate"}},
		{"empty", transport.ClientOptions{RootCertificates: empty}, []string{empty, "ClientOptions.RootCertificates", "empty", "CERTIFICATE"}},
		{"key", transport.ClientOptions{RootCertificates: key}, []string{key, "ClientOptions.RootCertificates", "no certificate", `"PRIVATE KEY"`}},
		{"not PEM", transport.ClientOptions{RootCertificates: text}, []string{text, "ClientOptions.RootCertificates", "no certificate", "no PEM block"}},
		{"insecure and roots", transport.ClientOptions{RootCertificates: p.CAFile, Insecure: true}, []string{"ClientOptions.Insecure", "ClientOptions.RootCertificates", "conflict"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := transport.ClientConfig(tc.o)
			if cfg != nil {
				t.Error("ClientConfig returned a config with an error")
			}
			e := wantExplained(t, err, transport.KindConfig, transport.ErrConfig, tc.words...)
			if want := "RootCertificates"; tc.name != "insecure and roots" && (e.Field != want || e.File != tc.o.RootCertificates) {
				t.Errorf("Field %q File %q, want %q %q", e.Field, e.File, want, tc.o.RootCertificates)
			}
			_, err = transport.ClientCredentials(tc.o)
			wantExplained(t, err, transport.KindConfig, transport.ErrConfig, tc.words...)
			wantExplained(t, probe(t, "127.0.0.1:1", tc.o), transport.KindConfig, transport.ErrConfig, tc.words...)
		})
	}
	_, err := transport.ClientConfig(transport.ClientOptions{RootCertificates: missing})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing file does not wrap fs.ErrNotExist: %v", err)
	}
}

func TestClientConfig(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	cfg, err := transport.ClientConfig(transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "sepal.test"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != 0x0303 || len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "h2" || cfg.ServerName != "sepal.test" {
		t.Errorf("MinVersion %x NextProtos %q ServerName %q", cfg.MinVersion, cfg.NextProtos, cfg.ServerName)
	}
	if _, err := p.Cert.Leaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs}); err != nil {
		t.Errorf("the pool does not hold the CA: %v", err)
	}
	sys, err := transport.ClientConfig(transport.ClientOptions{})
	if err != nil || sys.RootCAs != nil {
		t.Errorf("no RootCertificates: RootCAs %v, err %v; want the system pool (nil)", sys.RootCAs, err)
	}
	creds, err := transport.ClientCredentials(transport.ClientOptions{Insecure: true})
	if err != nil || creds.Info().SecurityProtocol != "insecure" {
		t.Errorf("Insecure: %v, %v", creds, err)
	}
	creds, err = transport.ClientCredentials(transport.ClientOptions{RootCertificates: p.CAFile})
	if err != nil || creds.Info().SecurityProtocol != "tls" {
		t.Errorf("TLS: %v, %v", creds, err)
	}
}

func TestProbeSucceeds(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveTLS(t, p.Source())
	if err := probe(t, addr, transport.ClientOptions{RootCertificates: p.CAFile}); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	if err := probe(t, "localhost:"+port, transport.ClientOptions{RootCertificates: p.CAFile}); err != nil {
		t.Fatal(err)
	}
	// A certificate for a name only, reached by IP with --tls-server-name.
	named := p.Issue(t, selfsigned.ServerOptions{Hosts: []string{"superlink.sepal.test"}, NoDefaultHosts: true})
	addr = serveTLS(t, named.Source())
	if err := probe(t, addr, transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "superlink.sepal.test"}); err != nil {
		t.Fatal(err)
	}
	// A plaintext server checked with --insecure.
	plain := serveGRPC(t)
	if err := probe(t, plain, transport.ClientOptions{Insecure: true}); err != nil {
		t.Fatalf("plaintext server with Insecure: %v", err)
	}
}

// A server that completes the handshake and then stays silent (no HTTP/2
// frame, no alert) passes: the handshake is what Probe checks. Probe
// returns when its context ends, not after ProbeTimeout.
func TestProbeSilentServer(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveTLSAnswering(t, transport.ServerConfig(p.Source()), false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	began := time.Now()
	if err := transport.Probe(ctx, addr, transport.ClientOptions{RootCertificates: p.CAFile}); err != nil {
		t.Fatalf("Probe of a server silent after the handshake: %v", err)
	}
	if d := time.Since(began); d >= transport.ProbeTimeout {
		t.Errorf("Probe returned after %v, past its context's 2s", d)
	}
}

func TestProbeUnknownAuthority(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	other := newPKI(t, selfsigned.ServerOptions{})
	addr := serveTLS(t, p.Source())

	err := probe(t, addr, transport.ClientOptions{RootCertificates: other.CAFile})
	e := wantExplained(t, err, transport.KindUnknownAuthority, transport.ErrUnknownAuthority,
		"not signed by", "unknown authority", other.CAFile, "ClientOptions.RootCertificates", addr, selfsigned.DefaultCACommonName)
	if e.File != other.CAFile || e.Cert == nil || !e.Cert.Equal(p.Pair.Leaf) || e.Addr != addr {
		t.Errorf("facts: File %q, Addr %q, Cert the server's: %v", e.File, e.Addr, e.Cert != nil && e.Cert.Equal(p.Pair.Leaf))
	}
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Errorf("the x509 error is not kept: %v", err)
	}

	err = probe(t, addr, transport.ClientOptions{})
	wantExplained(t, err, transport.KindUnknownAuthority, transport.ErrUnknownAuthority,
		"not signed by", "unknown authority", "the system roots", "ClientOptions.RootCertificates")
}

func TestProbeExpiredAndNotYetValid(t *testing.T) {
	now := time.Now()
	ca := testkit.NewPKI(t, selfsigned.CAOptions{NotBefore: now.Add(-72 * time.Hour)}, selfsigned.ServerOptions{})
	stamp := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }

	expired := ca.Issue(t, selfsigned.ServerOptions{NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)})
	addr := serveTLS(t, expired.Source())
	err := probe(t, addr, transport.ClientOptions{RootCertificates: expired.CAFile})
	e := wantExplained(t, err, transport.KindExpired, transport.ErrExpired,
		"expired", addr, stamp(expired.Pair.Leaf.NotBefore), stamp(expired.Pair.Leaf.NotAfter),
		"the time here is "+now.UTC().Format("2006-01-02T"), "renew it", "clock")
	if !e.NotAfter.Equal(expired.Pair.Leaf.NotAfter) || !e.NotBefore.Equal(expired.Pair.Leaf.NotBefore) || e.Now.Before(now.Add(-time.Second)) || e.Cert == nil {
		t.Errorf("facts: NotBefore %v NotAfter %v Now %v Cert %v", e.NotBefore, e.NotAfter, e.Now, e.Cert != nil)
	}
	var cie x509.CertificateInvalidError
	if !errors.As(err, &cie) || cie.Reason != x509.Expired {
		t.Errorf("the x509 error is not kept: %v", err)
	}

	future := ca.Issue(t, selfsigned.ServerOptions{NotBefore: now.Add(24 * time.Hour), NotAfter: now.Add(48 * time.Hour)})
	addr = serveTLS(t, future.Source())
	err = probe(t, addr, transport.ClientOptions{RootCertificates: future.CAFile})
	wantExplained(t, err, transport.KindNotYetValid, transport.ErrNotYetValid,
		"not yet valid", stamp(future.Pair.Leaf.NotBefore), stamp(future.Pair.Leaf.NotAfter), "the time here is", "clock")
}

func TestProbeNameMismatch(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{Hosts: []string{"superlink.sepal.test", "10.9.8.7"}, NoDefaultHosts: true})
	addr := serveTLS(t, p.Source())
	_, port, _ := net.SplitHostPort(addr)

	err := probe(t, addr, transport.ClientOptions{RootCertificates: p.CAFile})
	e := wantExplained(t, err, transport.KindNameMismatch, transport.ErrNameMismatch,
		`"127.0.0.1"`, "superlink.sepal.test", "10.9.8.7", "dial one of its names", "e.g. superlink.sepal.test:"+port, "ClientOptions.ServerName")
	if e.Name != "127.0.0.1" || !slices.Equal(e.Names, []string{"superlink.sepal.test", "10.9.8.7"}) || e.Holds != "superlink.sepal.test, 10.9.8.7" {
		t.Errorf("facts: Name %q Names %q Holds %q", e.Name, e.Names, e.Holds)
	}
	var he x509.HostnameError
	if !errors.As(err, &he) {
		t.Errorf("the x509 error is not kept: %v", err)
	}

	err = probe(t, "localhost:"+port, transport.ClientOptions{RootCertificates: p.CAFile})
	wantExplained(t, err, transport.KindNameMismatch, transport.ErrNameMismatch,
		`"localhost"`, "superlink.sepal.test, 10.9.8.7", "dial one of its names", "ClientOptions.ServerName")

	err = probe(t, addr, transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "other.sepal.test"})
	wantExplained(t, err, transport.KindNameMismatch, transport.ErrNameMismatch,
		`"other.sepal.test"`, "the server name checked", "superlink.sepal.test")
}

func TestProbeUnspecifiedAddress(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveTLS(t, p.Source())
	_, port, _ := net.SplitHostPort(addr)
	// On Linux, 0.0.0.0 reaches the loopback listener: the handshake fails
	// on the name, as with Flower 1.8.0's default --server 0.0.0.0:9092.
	err := probe(t, "0.0.0.0:"+port, transport.ClientOptions{RootCertificates: p.CAFile})
	wantExplained(t, err, transport.KindUnspecifiedAddress, transport.ErrUnspecifiedAddress,
		"0.0.0.0 is an address servers listen on, not one to dial", "dial 127.0.0.1:"+port, "host name")
	// With a name to check, 0.0.0.0 is only an address.
	if err := probe(t, "0.0.0.0:"+port, transport.ClientOptions{RootCertificates: p.CAFile, ServerName: "localhost"}); err != nil {
		t.Errorf("0.0.0.0 with ServerName localhost: %v", err)
	}
}

func TestProbePlaintextPeer(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t)
	err := probe(t, addr, transport.ClientOptions{RootCertificates: p.CAFile})
	wantExplained(t, err, transport.KindPlaintextPeer, transport.ErrPlaintextPeer,
		"the server at "+addr+" does not speak TLS", "ClientOptions.Insecure", "start it with certificates")
}

func TestProbeTLSPeer(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(p.Source())))
	err := probe(t, addr, transport.ClientOptions{Insecure: true})
	wantExplained(t, err, transport.KindTLSPeer, transport.ErrTLSPeer,
		"the server at "+addr+" speaks TLS", "unset ClientOptions.Insecure", "ClientOptions.RootCertificates")
}

func TestProbeNetwork(t *testing.T) {
	addr := deadAddr(t)
	for _, o := range []transport.ClientOptions{{}, {Insecure: true}} {
		err := probe(t, addr, o)
		wantExplained(t, err, transport.KindNetwork, transport.ErrNetwork, addr, "connection refused", "the address names it")
	}
}

// The gRPC path: the typed errors are gone, only the status text is left.
func TestExplainGRPCInsecureClientTLSServer(t *testing.T) {
	p := newPKI(t, selfsigned.ServerOptions{})
	addr := serveGRPC(t, grpc.Creds(transport.ServerCredentials(p.Source())))
	_, err := testkit.HealthCheck(t, addr, insecure.NewCredentials())
	if err == nil {
		t.Fatal("a plaintext call to a TLS server succeeded")
	}
	o := transport.ClientOptions{Insecure: true}
	e := transport.Explain(err, addr, o)
	t.Logf("gRPC said %q; Explain: %v", err, e)
	var te *transport.Error
	if !errors.As(e, &te) || te.Kind.Permanent() || !te.Closed {
		// gRPC only shows a closed connection: nothing here proves TLS.
		t.Errorf("Explain of %q = %v, want a retryable kind", err, e)
	}
	for _, w := range []string{addr, "if the server speaks TLS, unset ClientOptions.Insecure"} {
		if !strings.Contains(e.Error(), w) {
			t.Errorf("Explain lacks %q: %v", w, e)
		}
	}
	// The app then probes, which tells.
	wantExplained(t, probe(t, addr, o), transport.KindTLSPeer, transport.ErrTLSPeer, "speaks TLS", "unset ClientOptions.Insecure")
}
