package sqlstate

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"modernc.org/sqlite"

	"github.com/sepal-fl/sepal/state"
)

// openCached opens a SQLite file through stmtConnector with at most max
// statements a connection, and returns one connection of it, pinned.
func openCached(t *testing.T, path string, max int) *sql.Conn {
	t.Helper()
	base, err := sqlite.NewConnector("file:" + path + "?_pragma=busy_timeout(5000)&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(connectorFunc(func(ctx context.Context) (*stmtConn, error) {
		c, err := base.Connect(ctx)
		if err != nil {
			return nil, err
		}
		return newStmtConn(c.(sqliteConn), max), nil
	}))
	t.Cleanup(func() { db.Close() })
	conn, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

type connectorFunc func(context.Context) (*stmtConn, error)

func (f connectorFunc) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := f(ctx)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (f connectorFunc) Driver() driver.Driver { return nil }

// cached returns the statement conn keeps prepared for query (nil if
// none), how many it keeps, and the heap its prepared statements use.
func cached(t *testing.T, conn *sql.Conn, query string) (cs *cachedStmt, n, used int) {
	t.Helper()
	err := conn.Raw(func(dc any) error {
		c := dc.(*stmtConn)
		cs, n = c.stmts[query], len(c.stmts)
		var err error
		used, _, err = c.Unwrap().(sqlite.DBStatus).Status(sqlite.DBStatusStmtUsed, false)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return cs, n, used
}

func mustExec(t *testing.T, conn *sql.Conn, query string, args ...any) {
	t.Helper()
	if _, err := conn.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// TestStmtCacheReuse: a statement is prepared once and run again with new
// arguments, by Exec and Query alike, and a script is not kept.
func TestStmtCacheReuse(t *testing.T) {
	ctx := context.Background()
	conn := openCached(t, filepath.Join(t.TempDir(), "db"), 8)
	mustExec(t, conn, `CREATE TABLE t (x INTEGER PRIMARY KEY, b BLOB); CREATE INDEX t_b ON t (b)`)
	if _, n, _ := cached(t, conn, ""); n != 0 {
		t.Fatalf("a script was kept prepared: %d statements", n)
	}
	const ins = `INSERT INTO t (x, b) VALUES ($1, $2)`
	const sel = `SELECT b FROM t WHERE x = $1`
	var first *cachedStmt
	for i := range 5 {
		mustExec(t, conn, ins, i, []byte{byte(i), 7})
		cs, _, _ := cached(t, conn, ins)
		if cs == nil || (first != nil && cs != first) {
			t.Fatalf("run %d: statement %p, first %p: not kept", i, cs, first)
		}
		first = cs
	}
	var sel1 *cachedStmt
	for i := range 5 {
		var b []byte
		if err := conn.QueryRowContext(ctx, sel, i).Scan(&b); err != nil {
			t.Fatal(err)
		}
		if string(b) != string([]byte{byte(i), 7}) {
			t.Fatalf("row %d: got %v", i, b)
		}
		cs, _, _ := cached(t, conn, sel)
		if cs == nil || cs.busy || (sel1 != nil && cs != sel1) {
			t.Fatalf("query %d: statement %+v, first %p", i, cs, sel1)
		}
		sel1 = cs
	}
	if _, n, used := cached(t, conn, ""); n != 2 || used <= 0 {
		t.Fatalf("%d statements kept, %d bytes: want 2, some", n, used)
	}
}

// TestStmtCacheNested: a query run again while the rows of its own
// statement are open runs as text, and neither run disturbs the other.
func TestStmtCacheNested(t *testing.T) {
	ctx := context.Background()
	conn := openCached(t, filepath.Join(t.TempDir(), "db"), 8)
	mustExec(t, conn, `CREATE TABLE t (x INTEGER PRIMARY KEY)`)
	for i := range 4 {
		mustExec(t, conn, `INSERT INTO t (x) VALUES ($1)`, i)
	}
	const q = `SELECT x FROM t WHERE x >= $1 ORDER BY x`
	count := func(from int) int {
		rows, err := conn.QueryContext(ctx, q, from)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	count(0) // prepared and kept
	kept, _, _ := cached(t, conn, q)
	rows, err := conn.QueryContext(ctx, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close() // on failure: the connection closes once its rows are
	if cs, _, _ := cached(t, conn, q); cs != kept || !cs.busy {
		t.Fatalf("the outer query did not use the statement kept: %p %+v, kept %p", cs, cs, kept)
	}
	var got []int
	for rows.Next() {
		var x int
		if err := rows.Scan(&x); err != nil {
			t.Fatal(err)
		}
		got = append(got, x)
		if len(got) > 4 {
			t.Fatalf("outer rows %v: the inner queries reset the outer one", got)
		}
		if n := count(x); n != 4-x {
			t.Fatalf("inner query from %d: %d rows, want %d", x, n, 4-x)
		}
		// An Exec of the same text, which runs it to its end.
		if _, err := conn.ExecContext(ctx, q, x); err != nil {
			t.Fatal(err)
		}
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[0] != 0 || got[3] != 3 {
		t.Fatalf("outer rows %v, want 0..3", got)
	}
	if cs, _, _ := cached(t, conn, q); cs != kept || cs.busy {
		t.Fatalf("after the loop: statement %+v, kept %p", cs, kept)
	}
	if n := count(2); n != 2 {
		t.Fatalf("after the loop: %d rows, want 2", n)
	}
}

// TestStmtCacheErrors: a statement that failed (a constraint, a context
// that ended while it ran, one done before) runs again correctly.
func TestStmtCacheErrors(t *testing.T) {
	ctx := context.Background()
	conn := openCached(t, filepath.Join(t.TempDir(), "db"), 8)
	mustExec(t, conn, `CREATE TABLE t (x INTEGER PRIMARY KEY)`)
	const ins = `INSERT INTO t (x) VALUES ($1)`
	mustExec(t, conn, ins, 1)
	if _, err := conn.ExecContext(ctx, ins, 1); err == nil {
		t.Fatal("a duplicate key was inserted")
	}
	mustExec(t, conn, ins, 2)
	var n int
	if err := conn.QueryRowContext(ctx, `SELECT COUNT(*) FROM t`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d rows, %v: want 2", n, err)
	}

	// A query that takes long: the context's deadline interrupts it, in
	// Query (rows) and in Exec (run to its end) alike.
	const long = `WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < $1) SELECT COUNT(*) FROM c`
	for _, exec := range []bool{false, true} {
		for range 2 {
			short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
			var err error
			if exec {
				_, err = conn.ExecContext(short, long, int64(1)<<40)
			} else {
				err = conn.QueryRowContext(short, long, int64(1)<<40).Scan(&n)
			}
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("exec %v: a query of 2^40 rows with a deadline of 30 ms: %v", exec, err)
			}
			kept, _, _ := cached(t, conn, long)
			if kept == nil || kept.busy {
				t.Fatalf("exec %v: after the deadline: statement %+v", exec, kept)
			}
			if err := conn.QueryRowContext(ctx, long, 1000).Scan(&n); err != nil || n != 1000 {
				t.Fatalf("exec %v: after the deadline: %d, %v; want 1000", exec, n, err)
			}
			if cs, _, _ := cached(t, conn, long); cs != kept {
				t.Fatalf("exec %v: the statement was prepared again", exec)
			}
		}
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := conn.QueryRowContext(done, long, 5).Scan(&n); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled context: %v", err)
	}
	if err := conn.QueryRowContext(ctx, long, 5).Scan(&n); err != nil || n != 5 {
		t.Fatalf("after a canceled context: %d, %v; want 5", n, err)
	}
}

// TestStmtCacheSchemaChange: a statement kept prepared follows the schema
// another connection changes (SQLite prepares it again).
func TestStmtCacheSchemaChange(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "db")
	conn := openCached(t, path, 8)
	other := openCached(t, path, 8)
	mustExec(t, conn, `CREATE TABLE t (x INTEGER PRIMARY KEY)`)
	mustExec(t, conn, `INSERT INTO t (x) VALUES (1)`)
	const q = `SELECT * FROM t WHERE x = $1`
	columns := func() []string {
		rows, err := conn.QueryContext(ctx, q, 1)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		if !rows.Next() {
			t.Fatalf("no row: %v", rows.Err())
		}
		return cols
	}
	if c := columns(); len(c) != 1 {
		t.Fatalf("columns %v", c)
	}
	kept, _, _ := cached(t, conn, q)
	mustExec(t, other, `ALTER TABLE t ADD COLUMN y TEXT NOT NULL DEFAULT 'y'`)
	mustExec(t, other, `CREATE INDEX t_y ON t (y)`)
	if c := columns(); len(c) != 2 || c[1] != "y" {
		t.Fatalf("after ALTER TABLE: columns %v", c)
	}
	mustExec(t, other, `DROP TABLE t`)
	if _, err := conn.QueryContext(ctx, q, 1); err == nil {
		t.Fatal("a query of a dropped table ran")
	}
	mustExec(t, other, `CREATE TABLE t (x INTEGER PRIMARY KEY, z INTEGER, w INTEGER)`)
	mustExec(t, other, `INSERT INTO t VALUES (1, 2, 3)`)
	if c := columns(); len(c) != 3 {
		t.Fatalf("after the table was made again: columns %v", c)
	}
	if cs, _, _ := cached(t, conn, q); cs != kept {
		t.Fatal("the statement was dropped")
	}
}

// TestStmtCacheBounded: a connection keeps at most max statements, those
// used last, beyond it only while their rows are open, and finalizes them
// all when it closes.
func TestStmtCacheBounded(t *testing.T) {
	ctx := context.Background()
	conn := openCached(t, filepath.Join(t.TempDir(), "db"), 2)
	q := []string{`SELECT 1`, `SELECT 2`, `SELECT 3`, `SELECT 4`}
	run := func(q string) {
		var v int
		if err := conn.QueryRowContext(ctx, q).Scan(&v); err != nil {
			t.Fatal(err)
		}
	}
	run(q[0])
	run(q[1])
	run(q[0])
	run(q[2]) // evicts q[1], the one used least recently
	if cs, n, _ := cached(t, conn, q[1]); cs != nil || n != 2 {
		t.Fatalf("%d statements, %q kept: %v", n, q[1], cs != nil)
	}
	if cs, _, _ := cached(t, conn, q[0]); cs == nil {
		t.Fatalf("%q evicted", q[0])
	}
	// Rows open on both: the third is kept too, until they close.
	r0, err := conn.QueryContext(ctx, q[0])
	if err != nil {
		t.Fatal(err)
	}
	r2, err := conn.QueryContext(ctx, q[2])
	if err != nil {
		t.Fatal(err)
	}
	run(q[3])
	if _, n, _ := cached(t, conn, ""); n != 3 {
		t.Fatalf("%d statements with 2 busy, want 3", n)
	}
	r0.Close()
	r2.Close()
	run(q[1])
	if _, n, used := cached(t, conn, ""); n != 2 || used <= 0 {
		t.Fatalf("%d statements (%d bytes) once free, want 2", n, used)
	}
	var after int
	if err := conn.Raw(func(dc any) error {
		c := dc.(*stmtConn)
		c.finalize()
		var err error
		after, _, err = c.Unwrap().(sqlite.DBStatus).Status(sqlite.DBStatusStmtUsed, false)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if after != 0 {
		t.Fatalf("after finalize, prepared statements hold %d bytes", after)
	}
	run(q[0])
}

// TestStmtCacheState: a State on SQLite runs its queries through the
// cache, and a poll's statements are all kept.
func TestStmtCacheState(t *testing.T) {
	ctx := context.Background()
	s, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "state.db"), SQLiteOptions{Options: Options{Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.db.SetMaxOpenConns(1)
	id, err := s.CreateNode(ctx, state.NewNode{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.PullTaskIns(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var before int
	if err := conn.Raw(func(dc any) error {
		c, ok := dc.(*stmtConn)
		if !ok {
			return errors.New("the State's connection does not keep statements")
		}
		before = len(c.stmts)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if before == 0 {
		t.Fatal("no statement kept")
	}
	if _, err := s.PullTaskIns(ctx, id, ""); err != nil {
		t.Fatal(err)
	}
	conn, err = s.db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Raw(func(dc any) error {
		if n := len(dc.(*stmtConn).stmts); n != before {
			return errors.New("a second poll prepared statements the first had not")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
