package certfile

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// FileSource is a transport.CertSource that runs in the background.
var (
	_ transport.CertSource = (*FileSource)(nil)
	_ transport.Runner     = (*FileSource)(nil)
)

// logBuf is a log sink safe for the source writing while the test reads.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) count(s string) int { return strings.Count(l.String(), s) }

// fixture is a CA and server pair on disk in a temp folder.
type fixture struct {
	dir                       string
	ca                        *selfsigned.CA
	caFile, certFile, keyFile string
	log                       *logBuf
}

func newFixture(t testing.TB) (*fixture, *selfsigned.Pair) {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{dir: dir, ca: newTestCA(t), log: &logBuf{},
		caFile: filepath.Join(dir, "ca.crt"), certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server.key")}
	if err := WriteFileAtomic(fx.caFile, fx.ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	p := fx.issue(t)
	fx.writePair(t, p)
	return fx, p
}

func (fx *fixture) issue(t testing.TB) *selfsigned.Pair {
	t.Helper()
	p, err := fx.ca.IssueServer(selfsigned.ServerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (fx *fixture) writePair(t testing.TB, p *selfsigned.Pair) {
	t.Helper()
	if err := WriteFileAtomic(fx.certFile, p.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(fx.keyFile, p.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
}

func (fx *fixture) source(t testing.TB, poll time.Duration) *FileSource {
	t.Helper()
	s, err := NewFileSource(FileSourceOptions{CAFile: fx.caFile, CertFile: fx.certFile, KeyFile: fx.keyFile,
		PollInterval: poll, Logger: slog.New(slog.NewTextHandler(fx.log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runner is a source that runs in the background: FileSource or
// ClientCAFile.
type runner interface {
	Run(context.Context) error
}

// run runs s.Run until the test ends.

func run(t testing.TB, s runner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// serveTLS serves TLS handshakes on 127.0.0.1 with the source's certificate
// and returns the address.
func serveTLS(t testing.TB, s *FileSource) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: s.GetCertificate, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				c.(*tls.Conn).Handshake()
			}()
		}
	}()
	return l.Addr().String()
}

// handshake does one full TLS handshake, verifying against the CA, and
// returns the serial of the certificate served.
func handshake(addr string, ca *selfsigned.CA) (*big.Int, error) {
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	d := &net.Dialer{Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// waitServed does handshakes until one gets serial want, or fails after a
// generous deadline (this is not a timing assertion).
func waitServed(t testing.TB, addr string, ca *selfsigned.CA, want *big.Int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var got *big.Int
	var err error
	for time.Now().Before(deadline) {
		got, err = handshake(addr, ca)
		if err == nil && got.Cmp(want) == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the server still serves serial %x (%v), want %x", got, err, want)
}

// waitLog waits until the log holds s at least n times.
func waitLog(t testing.TB, l *logBuf, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for l.count(s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("the log holds %q %d times, want %d; log:\n%s", s, l.count(s), n, l)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFileSourceReloadsOnPoll(t *testing.T) {
	fx, first := newFixture(t)
	s := fx.source(t, 20*time.Millisecond)
	addr := serveTLS(t, s)
	got, err := handshake(addr, fx.ca)
	if err != nil || got.Cmp(first.Leaf.SerialNumber) != 0 {
		t.Fatalf("first handshake: serial %x, %v", got, err)
	}
	run(t, s)
	second := fx.issue(t)
	fx.writePair(t, second)
	waitServed(t, addr, fx.ca, second.Leaf.SerialNumber)
	if log := fx.log.String(); !strings.Contains(log, "serial="+serialHex(second.Leaf)) ||
		!strings.Contains(log, "trigger=poll") || !strings.Contains(log, "sans=\"[localhost 127.0.0.1 ::1]\"") {
		t.Errorf("the log does not report the new certificate:\n%s", log)
	}
}

// Reload, which a command calls on SIGHUP, serves new files at once, with
// polls an hour apart.
func TestFileSourceReload(t *testing.T) {
	fx, _ := newFixture(t)
	s := fx.source(t, time.Hour) // polling would take an hour
	addr := serveTLS(t, s)
	run(t, s)
	second := fx.issue(t)
	fx.writePair(t, second)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	waitServed(t, addr, fx.ca, second.Leaf.SerialNumber)
	if !strings.Contains(fx.log.String(), "trigger=reload") {
		t.Errorf("the log does not say Reload triggered the reload:\n%s", fx.log)
	}
}

func TestFileSourceKeepsLastGood(t *testing.T) {
	fx, first := newFixture(t)
	s := fx.source(t, 10*time.Millisecond)
	addr := serveTLS(t, s)
	run(t, s)
	next := fx.issue(t)
	other := fx.issue(t)
	const failed = "certificate reload failed"
	for _, bad := range []struct {
		name      string
		cert, key []byte
		want      error
	}{
		{"corrupt pair", []byte("-----BEGIN CERTIFICATE-----\nnot base64\n"), []byte("garbage"), ErrNotPEM},
		{"only the certificate replaced", next.CertPEM, first.KeyPEM, ErrKeyMismatch},
		{"key of another pair", next.CertPEM, other.KeyPEM, ErrKeyMismatch},
		{"empty key", next.CertPEM, nil, ErrEmpty},
		{"truncated certificate", next.CertPEM[:len(next.CertPEM)/2], next.KeyPEM, ErrNotPEM},
	} {
		t.Run(bad.name, func(t *testing.T) {
			before := fx.log.count(failed)
			if err := WriteFileAtomic(fx.certFile, bad.cert, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := WriteFileAtomic(fx.keyFile, bad.key, 0o600); err != nil {
				t.Fatal(err)
			}
			// The poll sees the change and logs it.
			waitLog(t, fx.log, failed, before+1)
			for j := range 50 {
				got, err := handshake(addr, fx.ca)
				if err != nil {
					t.Fatalf("handshake %d failed: %v", j, err)
				}
				if got.Cmp(first.Leaf.SerialNumber) != 0 {
					t.Fatalf("handshake %d got serial %x, want the last good %x", j, got, first.Leaf.SerialNumber)
				}
			}
			if err := s.Reload(); !errors.Is(err, bad.want) {
				t.Errorf("Reload: %v, want %v", err, bad.want)
			}
			// Ten polls later, nothing more was logged for the same change.
			n := fx.log.count(failed)
			time.Sleep(100 * time.Millisecond)
			if m := fx.log.count(failed); m != n {
				t.Errorf("polls logged an unchanged failure %d more times", m-n)
			}
		})
	}
	fx.writePair(t, next)
	waitServed(t, addr, fx.ca, next.Leaf.SerialNumber)
	for _, k := range [][]byte{first.KeyPEM, next.KeyPEM, other.KeyPEM} {
		lines := strings.Split(strings.TrimSpace(string(k)), "\n")
		for _, line := range lines[1 : len(lines)-1] { // the base64 body
			if strings.Contains(fx.log.String(), line[:16]) {
				t.Fatalf("the log holds key bytes %q:\n%s", line, fx.log)
			}
		}
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	fx, _ := newFixture(t)
	for _, tc := range []struct {
		o    FileSourceOptions
		want string
	}{
		{FileSourceOptions{CertFile: fx.certFile}, "needs both CertFile and KeyFile"},
		{FileSourceOptions{CertFile: fx.certFile, KeyFile: fx.keyFile, PollInterval: -time.Second}, "negative"},
		{FileSourceOptions{CertFile: fx.certFile, KeyFile: fx.keyFile + ".x"}, fx.keyFile + ".x"},
		{FileSourceOptions{CAFile: fx.caFile, CertFile: fx.certFile, KeyFile: fx.keyFile,
			Now: func() time.Time { return time.Now().Add(400 * 24 * time.Hour) }}, "expired on"},
	} {
		s, err := NewFileSource(tc.o)
		if err == nil || strings.HasPrefix(err.Error(), "selfsigned") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewFileSource(%+v) = %v, %v; want an error with %q", tc.o, s, err, tc.want)
		}
	}
}

// TestFileSourcePollLogsOnce runs the poll loop on synctest's fake clock:
// each distinct bad change is logged once however many polls see it, and a
// certificate that is not yet valid is served once its time comes.
func TestFileSourcePollLogsOnce(t *testing.T) {
	fx, first := newFixture(t)
	future, err := fx.ca.IssueServer(selfsigned.ServerOptions{NotBefore: time.Now().Add(time.Hour), NotAfter: time.Now().Add(48 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	other, third := fx.issue(t), fx.issue(t) // outside the bubble: real dates
	start := time.Now()
	synctest.Test(t, func(t *testing.T) {
		bubbleStart := time.Now()
		now := func() time.Time { return start.Add(time.Since(bubbleStart)) }
		s, err := NewFileSource(FileSourceOptions{CAFile: fx.caFile, CertFile: fx.certFile, KeyFile: fx.keyFile,
			Logger: slog.New(slog.NewTextHandler(fx.log, nil)), Now: now})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go s.Run(ctx)
		serial := func() *big.Int { c, _ := s.GetCertificate(nil); return c.Leaf.SerialNumber }
		const failed = "certificate reload failed"

		synctest.Wait()                                                                 // Run's ticker has started
		fx.writePair(t, &selfsigned.Pair{CertPEM: other.CertPEM, KeyPEM: first.KeyPEM}) // half-written
		time.Sleep(DefaultPollInterval * 3 / 2)
		synctest.Wait()
		if n := fx.log.count(failed); n != 0 {
			t.Errorf("a half-written pair was logged at the first poll that saw it (%d failures), want a poll of grace", n)
		}
		time.Sleep(10 * DefaultPollInterval)
		synctest.Wait()
		if n := fx.log.count(failed); n != 1 {
			t.Errorf("after 10 polls of one bad change: %d failures logged, want 1", n)
		}
		fx.writePair(t, &selfsigned.Pair{CertPEM: []byte("x"), KeyPEM: first.KeyPEM}) // another bad change
		time.Sleep(10 * DefaultPollInterval)
		synctest.Wait()
		if n := fx.log.count(failed); n != 2 {
			t.Errorf("after a second bad change: %d failures logged, want 2", n)
		}
		if serial().Cmp(first.Leaf.SerialNumber) != 0 {
			t.Errorf("a bad change replaced the served certificate")
		}

		// A file that cannot be read is reported once too.
		if err := os.Remove(fx.keyFile); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * DefaultPollInterval)
		synctest.Wait()
		if n := fx.log.count(failed); n != 3 || !strings.Contains(fx.log.String(), "file not found") {
			t.Errorf("a missing key: %d failures logged, want 3:\n%s", n, fx.log)
		}

		// A pair replaced one file at a time, completed within a poll
		// interval, is swapped in without a failure logged.
		if err := WriteFileAtomic(fx.certFile, third.CertPEM, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := WriteFileAtomic(fx.keyFile, first.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(DefaultPollInterval)
		synctest.Wait()
		if err := WriteFileAtomic(fx.keyFile, third.KeyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		time.Sleep(DefaultPollInterval)
		synctest.Wait()
		if n := fx.log.count(failed); n != 3 || serial().Cmp(third.Leaf.SerialNumber) != 0 {
			t.Errorf("a pair completed within a poll: %d failures logged (want 3), serving %x (want %x)\n%s", n, serial(), third.Leaf.SerialNumber, fx.log)
		}

		fx.writePair(t, future)
		time.Sleep(2 * DefaultPollInterval)
		synctest.Wait()
		if n := fx.log.count(failed); n != 4 || serial().Cmp(third.Leaf.SerialNumber) != 0 {
			t.Errorf("a not-yet-valid pair: %d failures logged (want 4), serving %x", n, serial())
		}
		time.Sleep(time.Hour) // its NotBefore passes; polls retry it
		synctest.Wait()
		if serial().Cmp(future.Leaf.SerialNumber) != 0 {
			t.Errorf("the pair is not served once valid: serving %x", serial())
		}
		if n := fx.log.count(failed); n != 4 {
			t.Errorf("retrying a not-yet-valid pair logged %d failures, want 4", n)
		}
		cancel()
	})
}

// A FileSource serves a certificate pair from files and reloads it while the
// server runs.
func ExampleFileSource() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	ca, _ := selfsigned.NewCA(selfsigned.CAOptions{})
	pair, _ := ca.IssueServer(selfsigned.ServerOptions{Hosts: []string{"flower.example.org"}})
	caFile, certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	WriteFileAtomic(caFile, ca.CertPEM, 0o644)
	WriteFileAtomic(certFile, pair.CertPEM, 0o644)
	WriteFileAtomic(keyFile, pair.KeyPEM, 0o600)

	src, err := NewFileSource(FileSourceOptions{CAFile: caFile, CertFile: certFile, KeyFile: keyFile,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Run(ctx) // polls the files

	cfg := &tls.Config{GetCertificate: src.GetCertificate}
	c, _ := cfg.GetCertificate(&tls.ClientHelloInfo{})
	fmt.Println(c.Leaf.DNSNames)
	// Output: [localhost flower.example.org]
}

// Check tells a missing file from other problems.
func ExampleCheck() {
	_, err := Check("certificates/ca.crt", "certificates/server.pem", "certificates/server.key", time.Now())
	fmt.Println(errors.Is(err, ErrMissing))
	fmt.Println(err)
	// Output:
	// true
	// CA certificate file certificates/ca.crt: file not found: check the path, or create the files with "flower-certs"
}

func ExampleCA_IssueServer() {
	ca, _ := selfsigned.NewCA(selfsigned.CAOptions{})
	pair, _ := ca.IssueServer(selfsigned.ServerOptions{Hosts: []string{"flower.example.org", "10.0.0.5"}})
	fmt.Println(pair.Leaf.DNSNames, pair.Leaf.IPAddresses, strings.HasPrefix(pair.Leaf.Issuer.CommonName, selfsigned.DefaultCACommonName+" "))
	// Output: [localhost flower.example.org] [127.0.0.1 ::1 10.0.0.5] true
}

// BenchmarkGetCertificate shows that the file source costs one atomic load
// per handshake; "static" is what crypto/tls does for a config with one
// certificate in tls.Config.Certificates (it returns &Certificates[0]).
func BenchmarkGetCertificate(b *testing.B) {
	fx, p := newFixture(b)
	s := fx.source(b, time.Hour)
	static, _ := p.TLSCertificate()
	cfg := &tls.Config{Certificates: []tls.Certificate{static}}
	hello := &tls.ClientHelloInfo{ServerName: "localhost"}
	b.Run("filesource", func(b *testing.B) {
		for b.Loop() {
			if c, _ := s.GetCertificate(hello); c == nil {
				b.Fatal("nil")
			}
		}
	})
	b.Run("static", func(b *testing.B) {
		for b.Loop() {
			if c := &cfg.Certificates[0]; c.Leaf == nil {
				b.Fatal("nil")
			}
		}
	})
}

// A FileSource warns, at start and when a new key is loaded, about a key
// file others can read; serials in its log are as openssl prints them.
func TestFileSourceWarnsOpenKeyAndPrintsOpenSSLSerials(t *testing.T) {
	fx, first := newFixture(t)
	if err := os.Chmod(fx.keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	fx.source(t, time.Hour)
	log := fx.log.String()
	if !strings.Contains(log, "open to other users (mode 0644)") || !strings.Contains(log, "chmod 600") {
		t.Errorf("no warning about the 0644 key:\n%s", log)
	}
	want := certfmt.Serial(first.Leaf.SerialNumber)
	if !strings.Contains(log, "serial="+want) || want != strings.ToUpper(want) {
		t.Errorf("log does not give the serial as openssl does (%s):\n%s", want, log)
	}
}

// After a reported failure, the next good reload says the files are good
// again: when a new good pair comes, and when the served files come back.
func TestFileSourceLogsGoodAgain(t *testing.T) {
	const good = "certificate files are good again"
	fx, first := newFixture(t)
	s := fx.source(t, time.Hour)
	other := fx.issue(t)

	// A mismatched pair (the key of another certificate), then the old key back.
	if err := WriteFileAtomic(fx.keyFile, other.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Reload of a mismatched pair: %v", err)
	}
	if fx.log.count(good) != 0 {
		t.Fatalf("good again before it is:\n%s", fx.log)
	}
	if err := WriteFileAtomic(fx.keyFile, first.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if fx.log.count(good+"; serving the same certificate") != 1 {
		t.Errorf("restoring the served files is not logged as good again:\n%s", fx.log)
	}
	// Once good, a reload of the same files says nothing more.
	if err := s.Reload(); err != nil || fx.log.count(good) != 1 {
		t.Errorf("an unchanged reload logged good again: %v\n%s", err, fx.log)
	}

	// A broken file, then a new good pair.
	if err := WriteFileAtomic(fx.certFile, []byte("garbage\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err == nil {
		t.Fatal("Reload of a broken certificate file succeeded")
	}
	fx.writePair(t, other)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	if fx.log.count(good+" after the failed reload") != 1 {
		t.Errorf("a new good pair after a failure is not logged as good again:\n%s", fx.log)
	}
	if c, _ := s.GetCertificate(nil); c.Leaf.SerialNumber.Cmp(other.Leaf.SerialNumber) != 0 {
		t.Error("the new pair is not served")
	}
}
