// Package pgtest starts throwaway PostgreSQL servers for tests: real
// PostgreSQL from Debian's postgresql package, never a mock.
//
// A test that needs a database calls NewDatabase, which starts one server
// per test binary the first time (lazily; later calls share it) and
// creates a fresh, empty database on it for that test:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		dsn := pgtest.NewDatabase(t) // postgres://postgres:...@127.0.0.1:PORT/test_1?sslmode=disable
//		...
//	}
//
// A test that stops and starts the server (a database that goes away)
// takes a server of its own with NewServer, so that it does not disturb
// the tests that share one.
//
// How a server runs: initdb makes a cluster in a new folder under the
// system temp folder (sepal-pgtest-*), and the postgres binary serves it
// on a free port of 127.0.0.1, with its unix socket in that folder,
// fsync off, password (SCRAM) authentication over TCP for the superuser
// "postgres" and a random password. The binaries are found under
// /usr/lib/postgresql/*/bin (Debian's layout: they are not on PATH; the
// newest version wins), or in the folder named by $PGTEST_BIN. PostgreSQL
// refuses to run as root, so when the tests run as root (as CI does)
// initdb and postgres run as the user "nobody", and the folder is chowned
// to it.
//
// Nothing is left behind: Main stops the servers and removes their folders
// when the tests end; postgres is started directly (not through pg_ctl,
// which would detach it) with a parent-death signal, so a test binary that
// crashes or is killed takes its servers with it; and the folder of a
// server whose test binary is gone is removed by the next run.
//
// When PostgreSQL is not installed, a test that asks for it fails in CI
// ($CI set) with a message naming the Debian package to install, and is
// skipped elsewhere with the same message. Under -short, it is skipped.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the name of the superuser of every server.
const Superuser = "postgres"

// dirPrefix names the folders of servers, so that a later run can find
// those left by a crashed test binary.
const dirPrefix = "sepal-pgtest-"

// ErrNotInstalled is returned (wrapped) by Start when the PostgreSQL
// binaries are not found.
var ErrNotInstalled = errors.New("PostgreSQL is not installed: install Debian's postgresql package " +
	"(apt-get install postgresql; .ci/run does it); pgtest looks for initdb and postgres under " +
	"/usr/lib/postgresql/*/bin, or in $PGTEST_BIN")

// Server is a PostgreSQL server started by this package. Its methods are
// safe for concurrent use.
type Server struct {
	// Host and Port are where the server listens (TCP, 127.0.0.1).
	Host string
	Port int
	// User and Password are the superuser's credentials.
	User, Password string
	// Dir is the server's folder: the cluster in Dir/data, the unix
	// socket in Dir, the server's log in Dir/postgres.log.
	Dir string

	bin     string // folder of initdb and postgres
	cred    *syscall.Credential
	durable bool // fsync and synchronous commits on (StartOptions)

	mu      sync.Mutex
	proc    *os.Process
	exited  chan struct{} // closed when proc has ended
	stopped bool          // Close was called
	dbs     atomic.Int64
}

// DSN returns a libpq URL for database db (Superuser, sslmode=disable).
func (s *Server) DSN(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(s.User, s.Password),
		Host: net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// KeyValueDSN returns the same connection as DSN in libpq's key/value
// form, without the password (give it through PGPASSWORD or a passfile).
func (s *Server) KeyValueDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable", s.Host, s.Port, s.User, db)
}

// LogFile is the server's log.
func (s *Server) LogFile() string { return filepath.Join(s.Dir, "postgres.log") }

// need skips or fails t when PostgreSQL tests cannot run, per the package
// comment.
func need(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("PostgreSQL test: skipped under -short (CI runs it)")
	}
	if _, err := findBin(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%v", err)
		}
		t.Skipf("%v (skipped outside CI)", err)
	}
}

// shared is the server shared by the tests of one test binary.
var shared struct {
	sync.Mutex
	s   *Server
	err error
}

// all lists every server started by this process, for Main.
var all struct {
	sync.Mutex
	list []*Server
}

// Shared returns the server shared by the tests of this test binary,
// starting it the first time. It skips or fails t as the package comment
// says when PostgreSQL is missing. Do not stop it: use NewServer for that.
func Shared(t testing.TB) *Server {
	t.Helper()
	need(t)
	shared.Lock()
	defer shared.Unlock()
	if shared.s == nil && shared.err == nil {
		shared.s, shared.err = Start()
	}
	if shared.err != nil {
		t.Fatalf("starting PostgreSQL: %v", shared.err)
	}
	return shared.s
}

// NewDatabase creates an empty database on the shared server, dropped when
// t ends, and returns its DSN (a libpq URL with the superuser's password).
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared(t).NewDatabase(t)
}

// NewServer starts a server for t alone, closed when t ends: for tests
// that stop and start it.
func NewServer(t testing.TB) *Server {
	t.Helper()
	need(t)
	s, err := Start()
	if err != nil {
		t.Fatalf("starting PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := os.ReadFile(s.LogFile()); err == nil {
				t.Logf("---- PostgreSQL log (%s) ----\n%s", s.LogFile(), tail(log, 4000))
			}
		}
		s.Close()
	})
	return s
}

// NewDatabase creates an empty database on s, dropped when t ends, and
// returns its DSN.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("test_%d", s.dbs.Add(1))
	if err := s.exec(context.Background(), "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() {
		// The server may have been stopped by the test; a database left
		// behind goes with the cluster.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return s.DSN(name)
}

// exec runs one statement as the superuser in the postgres database.
func (s *Server) exec(ctx context.Context, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql)
	return err
}

// Start makes a new cluster and starts a server on it, returning when it
// accepts connections. Most tests call NewDatabase or NewServer instead;
// a caller of Start must Close the server.
func Start() (*Server, error) { return StartWith(StartOptions{}) }

// StartOptions configure StartWith.
type StartOptions struct {
	// Durable keeps PostgreSQL's defaults of fsync, synchronous_commit and
	// full_page_writes (on), for benchmarks that compare it with a file
	// written with fsync. Default false: off, which is faster, for tests.
	Durable bool
}

// StartWith is Start with options.
func StartWith(o StartOptions) (*Server, error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	cleanStale(os.TempDir(), "/tmp")
	s := &Server{Host: "127.0.0.1", User: Superuser, Password: randomHex(12), bin: bin, durable: o.Durable}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return nil, fmt.Errorf("running as root, and PostgreSQL refuses to run as root; the user nobody to run it as: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if s.Dir, err = os.MkdirTemp(tempRoot(), dirPrefix); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	if err := os.WriteFile(filepath.Join(s.Dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	pwfile := filepath.Join(s.Dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.Password+"\n"), 0o600); err != nil {
		return nil, err
	}
	if s.cred != nil {
		for _, p := range []string{s.Dir, pwfile} {
			if err := os.Chown(p, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
				return nil, fmt.Errorf("handing %s to the user nobody: %w", p, err)
			}
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", filepath.Join(s.Dir, "data"), "-U", s.User,
		"--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = s.Dir
	initdb.Env = append(os.Environ(), "LC_ALL=C")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	os.Remove(pwfile)

	// A free port can be taken between the check and postgres's bind: try
	// a few.
	for attempt := 0; ; attempt++ {
		if s.Port, err = freePort(); err != nil {
			return nil, err
		}
		if err = s.start(); err == nil {
			break
		}
		if attempt == 2 {
			return nil, err
		}
	}
	all.Lock()
	all.list = append(all.list, s)
	all.Unlock()
	ok = true
	return s, nil
}

// Stop stops the server (a fast shutdown: clients are disconnected) and
// waits for it to end. The cluster stays; Restart serves it again on the
// same port.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.proc == nil {
		return nil
	}
	_ = s.proc.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.proc.Kill()
		<-s.exited
	}
	s.proc = nil
	return nil
}

// Restart starts a stopped server again on the same port and waits until
// it accepts connections.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("the PostgreSQL test server was closed")
	}
	if s.proc != nil {
		return nil
	}
	return s.startLocked()
}

// Close stops the server and removes its folder. It is safe to call more
// than once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.stopLocked()
	if s.Dir != "" {
		return os.RemoveAll(s.Dir)
	}
	return nil
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startLocked()
}

// startLocked starts postgres and waits until it accepts connections.
func (s *Server) startLocked() error {
	logf, err := os.OpenFile(s.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"-D", filepath.Join(s.Dir, "data"),
		"-p", strconv.Itoa(s.Port), "-k", s.Dir,
		"-c", "listen_addresses=" + s.Host,
		"-c", "max_connections=300", "-c", "shared_buffers=32MB"}
	if !s.durable {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout = logf
	cmd.Stderr = logf
	// SIGQUIT (immediate shutdown) when the test binary dies without
	// stopping it; Credential as nobody when we are root.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := startOnKeptThread(cmd); err != nil {
		return fmt.Errorf("starting postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.proc, s.exited = cmd.Process, exited

	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, s.DSN("postgres"))
		cancel()
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		select {
		case <-exited:
			s.proc = nil
			log, _ := os.ReadFile(s.LogFile())
			return fmt.Errorf("postgres ended at start-up: %v\n%s", cmd.ProcessState, tail(log, 2000))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stopLocked()
			log, _ := os.ReadFile(s.LogFile())
			return fmt.Errorf("postgres did not accept connections on port %d within 60s: %v\n%s", s.Port, err, tail(log, 2000))
		}
	}
}

// keeper is an OS thread that lives as long as the process: the parent
// death signal fires when the thread that started the child ends, and Go
// may end a thread (one locked by a goroutine that exits). Starting every
// server from this one locked thread keeps the signal for the process's
// death only.
var keeper struct {
	once sync.Once
	reqs chan keeperReq
}

type keeperReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func startOnKeptThread(cmd *exec.Cmd) error {
	keeper.once.Do(func() {
		keeper.reqs = make(chan keeperReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives until the process ends
			for r := range keeper.reqs {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error)
	keeper.reqs <- keeperReq{cmd, errc}
	return <-errc
}

// Main runs the tests of a package that uses pgtest, then closes every
// server they started, and exits with the tests' code. Call it from
// TestMain.
func Main(m *testing.M) {
	code := m.Run()
	CloseAll()
	os.Exit(code)
}

// CloseAll closes every server started by this process.
func CloseAll() {
	all.Lock()
	list := all.list
	all.list = nil
	all.Unlock()
	for _, s := range list {
		s.Close()
	}
	shared.Lock()
	shared.s, shared.err = nil, nil
	shared.Unlock()
}

// findBin returns the folder holding initdb and postgres.
func findBin() (string, error) {
	if d := os.Getenv("PGTEST_BIN"); d != "" {
		if isExec(filepath.Join(d, "postgres")) && isExec(filepath.Join(d, "initdb")) {
			return d, nil
		}
		return "", fmt.Errorf("%w ($PGTEST_BIN=%s holds no initdb and postgres)", ErrNotInstalled, d)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first.
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "postgres")) && isExec(filepath.Join(d, "initdb")) {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func version(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// tempRoot is the system temp folder, or /tmp when running as root with a
// temp folder that the user nobody cannot reach.
func tempRoot() string {
	d := os.TempDir()
	if os.Geteuid() != 0 {
		return d
	}
	for p := d; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if p == filepath.Dir(p) {
			return d
		}
	}
}

// cleanStale removes the folders of servers whose test binary is gone,
// stopping a postgres still running there (one started before the
// parent-death signal could act).
func cleanStale(roots ...string) {
	for _, root := range roots {
		dirs, _ := filepath.Glob(filepath.Join(root, dirPrefix+"*"))
		for _, d := range dirs {
			b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
			if err != nil {
				continue
			}
			owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || owner == os.Getpid() || alive(owner) {
				continue
			}
			if pm, err := os.ReadFile(filepath.Join(d, "data", "postmaster.pid")); err == nil {
				if pid, err := strconv.Atoi(strings.SplitN(string(pm), "\n", 2)[0]); err == nil && pid > 0 && isPostgres(pid) {
					_ = syscall.Kill(pid, syscall.SIGQUIT)
				}
			}
			os.RemoveAll(d)
		}
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// isPostgres reports whether pid is a postgres process (so that a pid
// reused by another program is never signalled).
func isPostgres(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == "postgres"
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
