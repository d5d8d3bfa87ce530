package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sepal-fl/sepal/internal/testkit"
)

func TestMain(m *testing.M) {
	if os.Getenv("PGTEST_HELPER") == "crash" {
		crashHelper()
		return
	}
	Main(m)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connecting to %s: %v", dsn, err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// Each test gets its own empty database on one shared server, which runs
// as an unprivileged user and asks for the password over TCP.
func TestNewDatabase(t *testing.T) {
	ctx := context.Background()
	a, b := NewDatabase(t), NewDatabase(t)
	if a == b {
		t.Fatalf("two databases with one DSN %s", a)
	}
	ca, cb := connect(t, a), connect(t, b)
	if _, err := ca.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("a table created in one test's database is visible in another's")
	}
	if first, again := Shared(t), Shared(t); first != again {
		t.Errorf("Shared started a second server")
	}

	// Not root, even when the tests are.
	var pid int
	if err := ca.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if uid := procUID(t, pid); uid == 0 {
		t.Errorf("postgres runs as root (uid 0)")
	}

	// The password is checked over TCP.
	s := Shared(t)
	bad := strings.Replace(a, ":"+s.Password+"@", ":wrong@", 1)
	_, err := pgx.Connect(ctx, bad)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28P01" {
		t.Errorf("connecting with a wrong password: %v, want SQLSTATE 28P01", err)
	}

	// The key/value form with the password from PGPASSWORD.
	t.Setenv("PGPASSWORD", s.Password)
	db := strings.TrimPrefix(a[strings.LastIndex(a, "/"):], "/")
	db = strings.SplitN(db, "?", 2)[0]
	c := connect(t, s.KeyValueDSN(db))
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").Scan(&n); err != nil || n != 1 {
		t.Errorf("key/value DSN reached another database (%d, %v)", n, err)
	}
}

func procUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("cannot read the process's uid: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			uid, _ := strconv.Atoi(f[1])
			return uid
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return -1
}

// A server of its own can be stopped (connections fail) and started again
// with its data.
func TestStopRestart(t *testing.T) {
	ctx := context.Background()
	s := NewServer(t)
	dsn := s.NewDatabase(t)
	c := connect(t, dsn)
	if _, err := c.Exec(ctx, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT 1"); err == nil {
		t.Errorf("a query succeeded on a stopped server")
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := pgx.Connect(cctx, dsn)
	cancel()
	if err == nil {
		t.Errorf("connected to a stopped server")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	var x int
	if err := connect(t, dsn).QueryRow(ctx, "SELECT x FROM kept").Scan(&x); err != nil || x != 42 {
		t.Errorf("after restart: %d, %v; want 42", x, err)
	}
	dir := s.Dir
	s.Close()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Close left %s: %v", dir, err)
	}
}

// crashHelper is a test binary that starts a server, prints where it is,
// and waits to be killed.
func crashHelper() {
	s, err := Start()
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	pm, _ := os.ReadFile(filepath.Join(s.Dir, "data", "postmaster.pid"))
	fmt.Printf("started %s %s\n", s.Dir, strings.SplitN(string(pm), "\n", 2)[0])
	time.Sleep(time.Minute)
	os.Exit(3)
}

// A test binary killed with SIGKILL takes its server with it (the
// parent-death signal), and the next run removes the folder it left.
func TestKilledTestBinaryLeavesNothing(t *testing.T) {
	need(t)
	// The helper's folder goes in a temp folder of this test's, so that
	// the clean-up of another test binary starting a server at the same
	// time (packages are tested in parallel) does not remove it first.
	// It must be reachable by the user nobody when we are root.
	root, err := os.MkdirTemp("", "pgtest-crash-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd, line := testkit.StartSelf(t, "PGTEST_HELPER=crash", "TMPDIR="+root)
	if !strings.HasPrefix(line, "started ") {
		t.Fatalf("helper: %q", line)
	}
	f := strings.Fields(line)
	dir := f[1]
	pid, err := strconv.Atoi(f[2])
	if err != nil || !isPostgres(pid) {
		t.Fatalf("helper's postmaster pid %q is not a running postgres", f[2])
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = cmd.Process.Wait()
	deadline := time.Now().Add(15 * time.Second)
	for alive(pid) && isPostgres(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGQUIT)
			t.Fatalf("postgres (pid %d) still runs 15s after its test binary was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the killed binary's folder %s is already gone (%v); the test cannot check the clean-up", dir, err)
	}
	if filepath.Dir(dir) != root {
		t.Fatalf("the helper's folder %s is not in %s", dir, root)
	}
	cleanStale(root)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		os.RemoveAll(dir)
		t.Errorf("the next run did not remove %s left by a killed test binary: %v", dir, err)
	}
}

func TestFindBinMissing(t *testing.T) {
	t.Setenv("PGTEST_BIN", t.TempDir())
	if _, err := findBin(); !errors.Is(err, ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install postgresql") {
		t.Errorf("findBin with an empty PGTEST_BIN: %v, want ErrNotInstalled naming the package", err)
	}
}
