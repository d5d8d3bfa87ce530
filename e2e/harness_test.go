// Package e2e builds Sepal's binaries and runs them as a user would: real
// processes, real gRPC over real TLS on loopback, ports picked at run time.
// Run with -short to skip these tests locally; CI runs them.
//
// The harness, in this file:
//
//   - bin builds a command of cmd/ the first time a test asks for it;
//   - start and run run a binary (kept output, stopped in cleanup);
//   - startSuperLink starts flower-superlink with its flags, free ports
//     and, if asked, flower-certs' certificates; superLink.again starts it
//     again on the same command line;
//   - checkHealth is the one gRPC health check, handshakeTLS the one TLS
//     handshake.
package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/transport"
)

// binDir holds the binaries the tests built, each on first use.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "sepal-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	defer pgtest.CloseAll() // the PostgreSQL servers the tests started
	binDir = dir
	return m.Run()
}

func moduleRoot() string {
	wd, _ := os.Getwd()
	return filepath.Dir(wd)
}

// needE2E skips the test under -short.
func needE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped under -short (CI runs it)")
	}
}

// needTool returns the path of the first of names (a command looked up
// in PATH, or an absolute path) that exists, from Debian's package pkg.
// Without it the test fails in CI (CI set: .ci/run installs pkg) and is
// skipped elsewhere, saying what to install.
func needTool(t testing.TB, pkg string, names ...string) string {
	t.Helper()
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed: .ci/run installs Debian's %s package", names[0], pkg)
	}
	t.Skipf("%s is not installed (apt-get install %s); CI runs this test", names[0], pkg)
	return ""
}

// build is one binary built for the tests.
type build struct {
	once sync.Once
	path string
	err  error
}

// builds are the binaries asked for so far, by file name.
var builds sync.Map // string -> *build

// buildOnce builds the package pkg (a path of the module, such as
// "./cmd/flower-certs") with go build's flags into binDir/name the first
// time a test asks for name, and returns its path. Tests asking at the
// same time wait for the one build; a failed build fails each of them.
func buildOnce(t testing.TB, name, pkg string, flags ...string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(name, new(build))
	b := v.(*build)
	b.once.Do(func() {
		b.path = filepath.Join(binDir, name)
		args := append(append([]string{"build"}, flags...), "-o", b.path, pkg)
		cmd := exec.Command("go", args...)
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	})
	if b.err != nil {
		t.Fatalf("building %s: %v", name, b.err)
	}
	return b.path
}

// bin returns the path of a command of cmd/, such as "flower-superlink",
// built on the first call for it.
func bin(t testing.TB, name string) string {
	t.Helper()
	return buildOnce(t, name, "./cmd/"+name)
}

// freeAddr returns a loopback address whose port (TCP and UDP) was free a
// moment ago, for a process the test starts next (load.FreeAddr: drawn
// below the kernel's ephemeral range, never twice in one run).
func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := load.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// proc is a process started by a test; its output (stdout and stderr
// together) is kept and printed when the test fails.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *testkit.SyncBuffer // written by the process while the test reads
	done chan struct{}
	err  error
}

// waitDelay bounds how long a process's end waits for its output pipe
// once it exited: a child it leaves behind (such as Flower's
// flower-superexec) may hold the pipe open.
const waitDelay = 5 * time.Second

// start runs a binary (a name from bin, or an absolute path) in dir with
// extra environment variables, stopping it in cleanup.
func start(t testing.TB, dir string, env []string, name string, args ...string) *proc {
	t.Helper()
	path := name
	if !filepath.IsAbs(name) {
		path = bin(t, name)
	}
	p := &proc{name: filepath.Base(name), out: &testkit.SyncBuffer{}, done: make(chan struct{})}
	args = loopbackControl(name, args)
	p.cmd = exec.Command(path, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	p.cmd.WaitDelay = waitDelay
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- %s %s (pid %d) output ----\n%s", p.name, strings.Join(args, " "), p.cmd.Process.Pid, p.out.String())
		}
	})
	return p
}

// loopbackControl gives a flower-superlink that would listen for the
// Control API on its default (0.0.0.0:9093: a fixed port, shared by tests
// that run side by side) a free loopback port instead, unless the test
// chose an address or asked for --help or --version.
func loopbackControl(name string, args []string) []string {
	if filepath.Base(name) != "flower-superlink" {
		return args
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--control-api-address") || a == "--help" || a == "-h" || a == "--version" {
			return args
		}
	}
	return append(slices.Clone(args), "--control-api-address", "127.0.0.1:0")
}

// stop sends SIGINT, then kills the process if it has not ended in 10 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// wait waits up to d for the process to end and returns its exit code
// (-1 when it had to be killed).
func (p *proc) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not end within %v", p.name, d)
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitOutput waits up to d for the output to contain s.
func (p *proc) waitOutput(t testing.TB, s string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(p.out.String(), s) {
			return
		}
		select {
		case <-p.done:
			if strings.Contains(p.out.String(), s) {
				return
			}
			t.Fatalf("%s ended (%v) before printing %q", p.name, p.err, s)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %q within %v", p.name, s, d)
}

// run runs a binary to its end within d and returns its combined output and
// exit code. A binary built for the call is built before d starts.
func run(t testing.TB, d time.Duration, dir string, env []string, name string, args ...string) (string, int) {
	t.Helper()
	path := name
	if !filepath.IsAbs(name) {
		path = bin(t, name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = waitDelay
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not end within %v; output:\n%s", name, strings.Join(args, " "), d, out)
	}
	code := 0
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case errors.Is(err, exec.ErrWaitDelay): // it exited; a child it left held the pipe
		code = cmd.ProcessState.ExitCode()
	default:
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), code
}

// The paths the seed's command reads, relative to the folder it runs in,
// where flower-certs writes them.
const (
	slCA   = "certificates/ca.crt"
	slCert = "certificates/server.pem"
	slKey  = "certificates/server.key"
)

// slSeedArgs is the seed's command line, without the addresses.
var slSeedArgs = []string{"--certificates", slCA, slCert, slKey}

// flowerCerts runs the real flower-certs in dir with args (none: the
// seed's certificates in dir/certificates; --force reissues the server's
// from the same CA) and fails the test unless it exits 0 having written
// the seed's three files.
func flowerCerts(t testing.TB, dir string, args ...string) {
	t.Helper()
	out, code := run(t, time.Minute, dir, nil, "flower-certs", args...)
	if code != 0 {
		t.Fatalf("flower-certs %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	for _, f := range []string{slCA, slCert, slKey} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("flower-certs did not write %s: %v\n%s", f, err, out)
		}
	}
}

// linkOptions say how startSuperLink starts flower-superlink. Without
// certs, args hold its TLS flags (--insecure, --ssl-*, --acme-*, ...).
type linkOptions struct {
	dir string   // the folder it runs in; "" a new temporary one
	env []string // added to its environment
	// certs serves the seed's certificate files of dir (slCA, slCert and
	// slKey, passed with --certificates before args), which flower-certs
	// writes first when dir holds no slCA.
	certs bool
	args  []string // its other flags; startSuperLink adds the addresses
	// fleet and driver are where the Fleet and Driver APIs listen (such
	// as 0.0.0.0:PORT); "" a free loopback address each.
	fleet, driver string
	// fleetFlag is the flag that sets the Fleet API's address;
	// "" --grpc-rere-fleet-api-address (Flower 1.8.0's spelling).
	fleetFlag string
	metrics   bool // serve --metrics-address on a free loopback address
	// early returns once the process runs, without waiting until it logs
	// that it serves (an ACME SuperLink serves only once it has its
	// certificate; call waitServing then).
	early bool
}

// superLink is a flower-superlink started by startSuperLink: a proc, whose
// log is printed when the test fails and which is stopped (SIGINT) when
// the test ends.
type superLink struct {
	*proc
	dir           string      // the folder it runs in
	fleet, driver string      // where its APIs are dialled: 127.0.0.1:PORT
	metrics       string      // the --metrics-address with linkOptions.metrics, or ""
	tls           *tls.Config // trusts its certificate with linkOptions.certs, else nil
	started       time.Time   // when the process started
	env, args     []string    // its environment and whole command line, for again
	early         bool        // linkOptions.early, for again
}

// startSuperLink starts flower-superlink as o says and, unless o.early,
// waits until it logs that it serves: then every API it was given
// listens. It fails the test if the process ends first.
func startSuperLink(t testing.TB, o linkOptions) *superLink {
	t.Helper()
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	var args []string
	l := &superLink{dir: o.dir, env: o.env, early: o.early}
	if o.certs {
		if _, err := os.Stat(filepath.Join(o.dir, slCA)); err != nil {
			flowerCerts(t, o.dir)
		}
		args = append(args, slSeedArgs...)
		l.tls = trustCA(t, filepath.Join(o.dir, slCA))
	}
	args = append(args, o.args...)
	if o.fleet == "" {
		o.fleet = freeAddr(t)
	}
	if o.driver == "" {
		o.driver = freeAddr(t)
	}
	if o.fleetFlag == "" {
		o.fleetFlag = "--grpc-rere-fleet-api-address"
	}
	args = append(args, "--driver-api-address", o.driver, o.fleetFlag, o.fleet)
	if o.metrics {
		l.metrics = freeAddr(t)
		args = append(args, "--metrics-address", l.metrics)
	}
	l.fleet, l.driver, l.args = dialable(o.fleet), dialable(o.driver), args
	l.proc = start(t, l.dir, l.env, "flower-superlink", l.args...)
	l.started = time.Now()
	if !l.early {
		l.waitServing(t)
	}
	return l
}

// again starts flower-superlink again in the same folder with the same
// environment and command line (addresses included), as a supervisor does
// once it stopped, and waits as the first start did. It returns the new
// process.
func (l *superLink) again(t testing.TB) *superLink {
	t.Helper()
	n := *l
	n.proc = start(t, n.dir, n.env, "flower-superlink", n.args...)
	n.started = time.Now()
	if !n.early {
		n.waitServing(t)
	}
	return &n
}

// waitServing waits up to a minute until the SuperLink logs that it
// serves (in either --log-format) and fails the test if it ends first.
func (l *superLink) waitServing(t testing.TB) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !l.serving(); {
		select {
		case <-l.done:
			if l.serving() {
				return
			}
			t.Fatalf("flower-superlink ended (%v) before serving", l.err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("flower-superlink did not log that it serves within a minute")
		}
	}
}

// serving reports whether the SuperLink logged that it serves.
func (l *superLink) serving() bool {
	out := l.out.String()
	return strings.Contains(out, "msg=serving") || strings.Contains(out, `"msg":"serving"`)
}

// dialable turns a listening address into one to dial: 0.0.0.0 and ::
// become 127.0.0.1 and ::1.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// trustCA is a client TLS config (transport.ClientConfig, ALPN h2) that
// trusts only the CA certificate in caFile and checks the name localhost,
// which flower-certs' server certificates hold.
func trustCA(t testing.TB, caFile string) *tls.Config {
	t.Helper()
	cfg, err := transport.ClientConfig(transport.ClientOptions{RootCertificates: caFile, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// checkHealth asks the gRPC health service at addr once (testkit's health
// check) over TLS with cfg, or plaintext when cfg is nil, and returns nil
// when it answers SERVING, else what it answered or why the call failed.
func checkHealth(t testing.TB, addr string, cfg *tls.Config) error {
	t.Helper()
	creds := insecure.NewCredentials()
	if cfg != nil {
		creds = credentials.NewTLS(cfg)
	}
	st, err := testkit.HealthCheck(t, addr, creds)
	if err != nil {
		return fmt.Errorf("health check of %s: %w", addr, err)
	}
	if st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check of %s: %v, want SERVING", addr, st)
	}
	return nil
}

// handshakeTLS dials addr (5 s at most), makes a TLS handshake with cfg
// and waits up to a second for the server's verdict: under TLS 1.3 a
// server refuses a client's certificate only after the client finished,
// and the SuperLink closes a connection without ALPN h2 after the
// handshake. With h2 it sends the HTTP/2 preface first, and a gRPC server
// that accepts writes its SETTINGS at once; a server that stays silent
// for the second accepted too. It returns the certificate served once
// the handshake completed (nil if it did not), and why the handshake
// failed or the server then refused the connection (nil if neither).
func handshakeTLS(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	st := tc.ConnectionState()
	leaf := st.PeerCertificates[0]
	tc.SetDeadline(time.Now().Add(time.Second))
	if st.NegotiatedProtocol == transport.ALPNH2 {
		if _, err := tc.Write([]byte(h2Preface)); err != nil {
			return leaf, err
		}
	}
	var b [1]byte
	var ne net.Error
	if _, err := tc.Read(b[:]); err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		return leaf, err
	}
	return leaf, nil
}

// h2Preface is the HTTP/2 client preface and an empty SETTINGS frame.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"
