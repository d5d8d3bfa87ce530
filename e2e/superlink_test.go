package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
)

// slOpenSSL runs openssl s_client against addr from dir and returns its
// combined output and exit code.
func slOpenSSL(t *testing.T, dir, addr string, args ...string) (string, int) {
	t.Helper()
	openssl := needTool(t, "openssl", "openssl")
	host, _, _ := net.SplitHostPort(addr)
	args = append([]string{"s_client", "-connect", addr, "-verify_ip", host}, args...)
	return run(t, 30*time.Second, dir, nil, openssl, args...)
}

// servedSerial makes one TLS handshake with addr, verifying with cfg, and
// returns the serial of the certificate served.
func servedSerial(t *testing.T, addr string, cfg *tls.Config) *big.Int {
	t.Helper()
	leaf, err := handshakeTLS(addr, cfg)
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	return leaf.SerialNumber
}

// slFileSerial returns the serial of the certificate in the PEM file path.
func slFileSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// Flower's documented command, with certificates made by flower-certs,
// serves TLS 1.3 with ALPN h2 that openssl verifies against ca.crt on both
// ports, refuses TLS 1.1, and answers gRPC health checks.
func TestSuperLinkSeedCommandServesTLS(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{certs: true})
	dir := sl.dir

	for _, port := range []struct{ name, addr string }{{"driver", sl.driver}, {"fleet", sl.fleet}} {
		t.Run(port.name, func(t *testing.T) {
			out, code := slOpenSSL(t, dir, port.addr, "-alpn", "h2", "-CAfile", slCA, "-verify_return_error")
			if code != 0 {
				t.Fatalf("openssl s_client exit %d:\n%s", code, out)
			}
			for _, want := range []*regexp.Regexp{
				regexp.MustCompile(`(?m)^Verification: OK$`),
				regexp.MustCompile(`(?m)^ALPN protocol: h2$`),
				regexp.MustCompile(`(?m)^\s*Protocol\s*: TLSv1\.3$`),
				regexp.MustCompile(`(?m)^Verify return code: 0 \(ok\)$`),
			} {
				if !want.MatchString(out) {
					t.Errorf("openssl s_client output lacks %s:\n%s", want, out)
				}
			}

			// TLS 1.1: SECLEVEL=0 lets openssl offer it, so that the refusal
			// seen is the server's.
			out, code = slOpenSSL(t, dir, port.addr, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", slCA)
			if code == 0 || !strings.Contains(out, "alert protocol version") {
				t.Errorf("TLS 1.1 was not refused by the server (exit %d):\n%s", code, out)
			}
			if !strings.Contains(out, "no peer certificate available") || !strings.Contains(out, "Cipher is (NONE)") {
				t.Errorf("a TLS 1.1 session was established:\n%s", out)
			}

			if err := checkHealth(t, port.addr, sl.tls); err != nil {
				t.Error(err)
			}
		})
	}

	out := sl.out.String()
	for _, want := range []string{
		"fleet_api_address=" + sl.fleet,
		"driver_api_address=" + sl.driver,
		"sans=localhost,127.0.0.1,::1",
		`tls_min_version="TLS 1.2"`,
		"not_after=",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("the log holds key material:\n%s", out)
	}
}

// The 1.9+ spelling serves the same certificate.
func TestSuperLinkSSLFlags(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	sl := startSuperLink(t, linkOptions{dir: dir, args: []string{"--ssl-ca-certfile", slCA, "--ssl-certfile", slCert, "--ssl-keyfile", slKey}})
	want := slFileSerial(t, filepath.Join(dir, slCert))
	for _, addr := range []string{sl.driver, sl.fleet} {
		if got := servedSerial(t, addr, trustCA(t, filepath.Join(dir, slCA))); got.Cmp(want) != 0 {
			t.Errorf("%s serves serial %x, want %x", addr, got, want)
		}
	}
}

// slBadCase writes a bad CA/certificate/key slTriple into dir and returns the
// file its message must name.
type slBadCase struct {
	name  string
	setup func(t *testing.T, dir string, ca, otherCA *selfsigned.CA) (caFile, certFile, keyFile, named string)
}

func slWriteFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func slIssue(t *testing.T, ca *selfsigned.CA, o selfsigned.ServerOptions) *selfsigned.Pair {
	t.Helper()
	p, err := ca.IssueServer(o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// slTriple writes ca, cert and key PEM into dir under the seed's names.
func slTriple(t *testing.T, dir string, ca, cert, key []byte) (string, string, string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "certificates"), 0o700); err != nil {
		t.Fatal(err)
	}
	return slWriteFile(t, filepath.Join(dir, slCA), ca), slWriteFile(t, filepath.Join(dir, slCert), cert), slWriteFile(t, filepath.Join(dir, slKey), key)
}

// slNoSANCert is a server certificate signed by ca that names no host.
func slNoSANCert(t *testing.T, ca *selfsigned.CA, key *selfsigned.Pair) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Leaf.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

var slBadCases = []slBadCase{
	{"missing file", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.CertPEM, p.KeyPEM)
		os.Remove(s)
		return c, s, k, s
	}},
	{"empty certificate file", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, nil, p.KeyPEM)
		return c, s, k, s
	}},
	{"certificate file not PEM", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, []byte("this is not a certificate\n"), p.KeyPEM)
		return c, s, k, s
	}},
	{"CA file not PEM", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, []byte{0x30, 0x82, 0x01}, p.CertPEM, p.KeyPEM)
		return c, s, k, c
	}},
	{"key where the certificate belongs", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.KeyPEM, p.KeyPEM)
		return c, s, k, s
	}},
	{"certificate where the key belongs", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.CertPEM, p.CertPEM)
		return c, s, k, k
	}},
	{"key does not match the certificate", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p, q := slIssue(t, ca, selfsigned.ServerOptions{}), slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.CertPEM, q.KeyPEM)
		return c, s, k, k
	}},
	{"expired certificate", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.CertPEM, p.KeyPEM)
		return c, s, k, s
	}},
	{"certificate not yet valid", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{NotBefore: time.Now().Add(24 * time.Hour), NotAfter: time.Now().Add(72 * time.Hour)})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.CertPEM, p.KeyPEM)
		return c, s, k, s
	}},
	{"certificate not signed by the given CA", func(t *testing.T, dir string, ca, other *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, other, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, p.CertPEM, p.KeyPEM)
		return c, s, k, s
	}},
	{"certificate without SANs", func(t *testing.T, dir string, ca, _ *selfsigned.CA) (string, string, string, string) {
		p := slIssue(t, ca, selfsigned.ServerOptions{})
		c, s, k := slTriple(t, dir, ca.CertPEM, slNoSANCert(t, ca, p), p.KeyPEM)
		return c, s, k, s
	}},
}

// Each bad certificate input stops the SuperLink before it listens, with a
// non-zero exit and one message naming the file.
func TestSuperLinkRefusesBadCertificates(t *testing.T) {
	needE2E(t)
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{NotBefore: time.Now().Add(-30 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, err := selfsigned.NewCA(selfsigned.CAOptions{CommonName: "Some other CA"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range slBadCases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			caFile, certFile, keyFile, named := tc.setup(t, dir, ca, other)
			rel := func(p string) string { r, _ := filepath.Rel(dir, p); return r }
			for _, spelling := range [][]string{
				{"--certificates", rel(caFile), rel(certFile), rel(keyFile)},
				{"--ssl-ca-certfile", rel(caFile), "--ssl-certfile", rel(certFile), "--ssl-keyfile", rel(keyFile)},
			} {
				driver, fleet := freeAddr(t), freeAddr(t)
				args := append(spelling, "--driver-api-address", driver, "--grpc-rere-fleet-api-address", fleet)
				out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", args...)
				if code == 0 {
					t.Fatalf("%s: exit 0, want non-zero:\n%s", spelling[0], out)
				}
				if !strings.Contains(out, rel(named)) {
					t.Errorf("%s: the message does not name %s:\n%s", spelling[0], rel(named), out)
				}
				if lines := strings.Split(strings.TrimRight(out, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(out, "flower-superlink: ") {
					t.Errorf("%s: want one message line, got %d:\n%s", spelling[0], len(lines), out)
				}
				if strings.Contains(out, "serving") || strings.Contains(out, "PRIVATE KEY") {
					t.Errorf("%s: output says it served, or shows key material:\n%s", spelling[0], out)
				}
				for _, addr := range []string{driver, fleet} {
					if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
						c.Close()
						t.Errorf("something listens on %s after a refused start", addr)
					}
				}
			}
		})
	}
}

// A certificate that expires within 30 days starts, with a warning.
func TestSuperLinkWarnsOfExpiry(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := slIssue(t, ca, selfsigned.ServerOptions{NotAfter: time.Now().Add(10 * 24 * time.Hour)})
	slTriple(t, dir, ca.CertPEM, p.CertPEM, p.KeyPEM)
	sl := startSuperLink(t, linkOptions{dir: dir, certs: true})
	out := sl.out.String()
	if !regexp.MustCompile(`level=WARN .*expires`).MatchString(out) {
		t.Errorf("no expiry warning:\n%s", out)
	}
}

func TestSuperLinkFlags(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	free := []string{"--driver-api-address", freeAddr(t), "--grpc-rere-fleet-api-address", freeAddr(t)}
	noDB := freeAddr(t) // nothing listens there
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"no TLS flags", nil, 1, []string{"--certificates CA_CERT SERVER_CERT PRIVATE_KEY", "--insecure", "flower-certs"}},
		{"two values", []string{"--certificates", slCA, slCert}, 2, []string{"--certificates needs three values but got 2", "--certificates CA_CERT SERVER_CERT PRIVATE_KEY"}},
		{"two values then a flag", []string{"--certificates", slCA, slCert, "--insecure"}, 2, []string{"before --insecure"}},
		{"both spellings", append(append([]string{}, slSeedArgs...), "--ssl-ca-certfile", slCA, "--ssl-certfile", slCert, "--ssl-keyfile", slKey), 2,
			[]string{"--certificates and --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile conflict"}},
		{"certificates and insecure", append(append([]string{}, slSeedArgs...), "--insecure"), 2, []string{"--certificates and --insecure conflict"}},
		{"acme and certificates", append(append([]string{}, slSeedArgs...), "--acme-domain", "superlink.example.org"), 2, []string{"--certificates and --acme-domain conflict"}},
		{"ssl incomplete", []string{"--ssl-certfile", slCert, "--ssl-keyfile", slKey}, 2, []string{"needs --ssl-ca-certfile"}},
		{"database", append(append([]string{}, slSeedArgs...), "--database", "postgres://sepal:secret@db.invalid/sepal"), 1, []string{"--database postgres://sepal:xxxxx@db.invalid/sepal: the server's host name does not resolve"}},
		{"database empty", append(append([]string{}, slSeedArgs...), "--database", ""), 2, []string{"--database is empty: give a file"}},
		{"database unreachable", append(append([]string{}, slSeedArgs...), "--database", "postgres://sepal:secret@"+noDB+"/sepal"), 1,
			[]string{"--database postgres://sepal:xxxxx@" + noDB + "/sepal: cannot reach the server"}},
		{"positional argument", append(append([]string{}, slSeedArgs...), "server:app"), 2, []string{`unexpected argument "server:app"`}},
		{"unknown flag", append(append([]string{}, slSeedArgs...), "--bogus"), 2, []string{"--bogus"}},
		{"version", []string{"--version"}, 0, []string{"flower-superlink " + cli.Version}},
		{"help", []string{"--help"}, 0, []string{"Examples:\n  flower-certs", "flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key", "--certificates CA_CERT SERVER_CERT PRIVATE_KEY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.code != 0 {
				args = append(append([]string{}, args...), free...)
			}
			out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d:\n%s", code, tt.code, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			// A usage error is one line; a refusal after the certificate
			// was read (exit 1) ends with one line after its log.
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if tt.code == cli.ExitUsage && len(lines) != 1 || tt.code == cli.ExitError && !strings.HasPrefix(lines[len(lines)-1], "flower-superlink: ") {
				t.Errorf("want one line:\n%s", out)
			}
		})
	}
}

// An address in use is refused, naming the flag, before it serves.
func TestSuperLinkAddressInUse(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	args := append(append([]string{}, slSeedArgs...), "--driver-api-address", freeAddr(t), "--grpc-rere-fleet-api-address", l.Addr().String())
	out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", args...)
	if code != 1 || !strings.Contains(out, "--grpc-rere-fleet-api-address "+l.Addr().String()+": the address is already in use") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

// The file source reloads while serving: the server certificate is
// reissued on disk by flower-certs --force and, after a SIGHUP, new
// handshakes on both ports see the new serial without a restart.
func TestSuperLinkReloadsOnSIGHUP(t *testing.T) {
	needE2E(t)
	// A poll interval of an hour: only the SIGHUP can explain a reload.
	sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--certificates-poll-interval", "1h"}})
	dir := sl.dir
	oldSerial := slFileSerial(t, filepath.Join(dir, slCert))
	for _, addr := range []string{sl.driver, sl.fleet} {
		if got := servedSerial(t, addr, sl.tls); got.Cmp(oldSerial) != 0 {
			t.Fatalf("%s serves %x before the reload, want %x", addr, got, oldSerial)
		}
	}

	flowerCerts(t, dir, "--force")
	newSerial := slFileSerial(t, filepath.Join(dir, slCert))
	if newSerial.Cmp(oldSerial) == 0 {
		t.Fatal("flower-certs --force did not issue a new certificate")
	}
	pid := sl.cmd.Process.Pid
	deadline := time.Now().Add(15 * time.Second)
	for _, addr := range []string{sl.driver, sl.fleet} {
		for {
			if err := sl.cmd.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatalf("SIGHUP to %d: %v", pid, err)
			}
			got := servedSerial(t, addr, sl.tls)
			if got.Cmp(newSerial) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves %x after SIGHUP, want %x", addr, got, newSerial)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if sl.cmd.Process.Pid != pid {
		t.Fatal("the process changed")
	}
	select {
	case <-sl.done:
		t.Fatalf("flower-superlink ended after SIGHUP: %v", sl.err)
	default:
	}
	if err := checkHealth(t, sl.fleet, sl.tls); err != nil {
		t.Errorf("after the reload: %v", err)
	}
}

// SIGINT and SIGTERM stop it gracefully with exit 0.
func TestSuperLinkStopsOnSignal(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			sl := startSuperLink(t, linkOptions{dir: dir, certs: true})
			if err := sl.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := sl.wait(t, 10*time.Second); code != 0 {
				t.Fatalf("exit %d after %v, want 0", code, sig)
			}
			for _, addr := range []string{sl.driver, sl.fleet} {
				if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
					c.Close()
					t.Errorf("%s still accepts connections after %v", addr, sig)
				}
			}
		})
	}
}

// --insecure serves plaintext gRPC, with a loud warning.
func TestSuperLinkInsecure(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{args: []string{"--insecure"}})
	if !regexp.MustCompile(`level=WARN msg="serving WITHOUT TLS`).MatchString(sl.out.String()) {
		t.Errorf("no warning about plaintext:\n%s", sl.out.String())
	}
	if err := checkHealth(t, sl.fleet, nil); err != nil {
		t.Fatalf("plaintext: %v", err)
	}
}

// A traditional encrypted key, an RSA-1024 key and a key others can read,
// all from openssl, at the start of flower-superlink.
func TestSuperLinkKeyRefusalsAndWarnings(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	free := func() []string {
		return []string{"--driver-api-address", freeAddr(t), "--grpc-rere-fleet-api-address", freeAddr(t)}
	}

	// Proc-Type: 4,ENCRYPTED
	opensslRun(t, dir, "genrsa", "-aes128", "-traditional", "-passout", "pass:secret", "-out", "enc.key", "2048")
	if b, _ := os.ReadFile(filepath.Join(dir, "enc.key")); !bytes.Contains(b, []byte("Proc-Type: 4,ENCRYPTED")) {
		t.Fatalf("openssl did not write a traditional encrypted key:\n%s", b)
	}
	out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", append([]string{"--certificates", slCA, slCert, "enc.key"}, free()...)...)
	if code != 1 || !strings.Contains(out, "enc.key") || !strings.Contains(out, "encrypted with a passphrase") ||
		!strings.Contains(out, "openssl pkey -in enc.key -out PLAIN.key") || strings.Contains(out, "asn1") {
		t.Errorf("traditional encrypted key: exit %d:\n%s", code, out)
	}

	// RSA-1024, self-signed, as an old generate.sh-like script makes it.
	opensslRun(t, dir, "req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "weak.key", "-out", "weak.pem",
		"-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-days", "30")
	out, code = run(t, 30*time.Second, dir, nil, "flower-superlink", append([]string{"--certificates", "weak.pem", "weak.pem", "weak.key"}, free()...)...)
	if code != 1 || !strings.Contains(out, "1024 bits") || !strings.Contains(out, "2048") {
		t.Errorf("RSA-1024: exit %d:\n%s", code, out)
	}

	// A server key others can read: it serves, with a warning and the chmod.
	if err := os.Chmod(filepath.Join(dir, slKey), 0o644); err != nil {
		t.Fatal(err)
	}
	sl := startSuperLink(t, linkOptions{dir: dir, certs: true})
	if o := sl.out.String(); !strings.Contains(o, "level=WARN") || !strings.Contains(o, "open to other users (mode 0644)") ||
		!strings.Contains(o, "chmod 600 "+slKey) {
		t.Errorf("no warning about the 0644 key:\n%s", o)
	}
}

// After a failed reload, the next good one says the certificate is good
// again; serials in the log are as openssl prints them.
func TestSuperLinkLogsGoodAgainAfterFailedReload(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--certificates-poll-interval", "1h"}})
	dir := sl.dir
	serial := strings.TrimPrefix(strings.TrimSpace(opensslRun(t, dir, "x509", "-in", slCert, "-noout", "-serial")), "serial=")
	if !strings.Contains(sl.out.String(), "serial="+serial) {
		t.Errorf("the log does not give the serial as openssl does (%s):\n%s", serial, sl.out.String())
	}
	keyPath := filepath.Join(dir, slKey)
	good, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	other, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := certfile.WriteFileAtomic(keyPath, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	sl.cmd.Process.Signal(syscall.SIGHUP)
	sl.waitOutput(t, "certificate reload failed", 10*time.Second)
	if err := certfile.WriteFileAtomic(keyPath, good, 0o600); err != nil {
		t.Fatal(err)
	}
	sl.cmd.Process.Signal(syscall.SIGHUP)
	sl.waitOutput(t, "certificate files are good again", 10*time.Second)
	if o := sl.out.String(); !strings.Contains(o, fmt.Sprintf("serial=%s", serial)) {
		t.Errorf("the good-again line lacks the serial:\n%s", o)
	}
}
