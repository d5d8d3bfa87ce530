// Package e2e builds Sepal's binaries and runs them as a user would: real
// processes, real gRPC over real TLS on loopback, ports picked at run time.
// Run with -short to skip these tests locally; CI runs them.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/internal/testkit"
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
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s did not end within %v; output:\n%s", name, strings.Join(args, " "), d, out)
	}
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			t.Fatalf("%s: %v", name, err)
		}
	}
	return string(out), code
}
