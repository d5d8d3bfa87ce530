package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sepal-fl/sepal/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestIsDSN(t *testing.T) {
	for _, c := range []struct {
		s    string
		want bool
	}{
		{"postgres://u:p@h/db", true},
		{"postgresql://h/db?sslmode=verify-full", true},
		{"host=db.example.org dbname=sepal", true},
		{"  dbname = sepal", true},
		{"user=sepal", true},
		{"sslrootcert=/ca.pem host=db dbname=x", true},
		{"sslmode=verify-full host=db", true},
		{"hostaddr=10.0.0.1 dbname=x", true},
		{"application_name=sepal host=db", true},
		{"target_session_attrs=read-write host=a,b", true},
		{"load_balance_hosts=random host=a,b", true},
		{"service=sepal", true},
		{"sslpassword=k host=db", true},
		{"keepalives_idle=30 host=db", true},
		{"ssl_min_protocol_version=TLSv1.3 host=db", true},
		{"gssencmode=disable host=db", true},
		{"sslrootcert", false},
		{"sslrootcert.pem", false},
		{"./host=db", false},
		{"data/dbname=x", false},
		{"nosuchkey=1 host=db", false},
		{"HOST=db", false},
		{"state.db", false},
		{"/var/lib/sepal/state.db", false},
		{":flwr-in-memory-state:", false},
		{":memory:", false},
		{"a=b.db", false},
		{"acme", false},
		{"postgres", false},
	} {
		if got := IsDSN(c.s); got != c.want {
			t.Errorf("IsDSN(%q) = %v, want %v", c.s, got, c.want)
		}
	}
}

func TestRedact(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"postgres://sepal:s3cret@db:5432/sepal?sslmode=require", "postgres://sepal:xxxxx@db:5432/sepal?sslmode=require"},
		{"postgres://sepal@db/sepal", "postgres://sepal@db/sepal"},
		{"postgresql://db/sepal?password=s3cret&sslmode=disable", "postgresql://db/sepal?password=xxxxx&sslmode=disable"},
		{"host=db password=s3cret dbname=sepal", "host=db password=xxxxx dbname=sepal"},
		{"host=db password = 's3 cr\\'et' dbname=sepal", "host=db password = xxxxx dbname=sepal"},
		{"host=db PASSWORD=s3cret", "host=db PASSWORD=xxxxx"},
		{"postgres://sepal:s3cret@db:bad port/x", "postgres://sepal:xxxxx@db:bad port/x"},
		{"host=db dbname=sepal", "host=db dbname=sepal"},
		{"state.db", "state.db"},
		{"postgres://sepal@db:5432/sepal?sslmode=require&application_name=a:b", "postgres://sepal@db:5432/sepal?sslmode=require&application_name=a:b"},
		{"postgres://sepal:s3cret@db/sepal?sslpassword=s3key&sslmode=require", "postgres://sepal:xxxxx@db/sepal?sslpassword=xxxxx&sslmode=require"},
		{"postgres://db/sepal?SSLPassword=s3key", "postgres://db/sepal?SSLPassword=xxxxx"},
		{"postgres://db/sepal?pass%77ord=s3cret", "postgres://db/sepal?pass%77ord=xxxxx"},
		{"host=db sslpassword=s3key sslkey=/k.pem", "host=db sslpassword=xxxxx sslkey=/k.pem"},
		{"host=db SSLPASSWORD = 's3 key' dbname=sepal", "host=db SSLPASSWORD = xxxxx dbname=sepal"},
		{`host=db password=s3a\ b dbname=sepal`, "host=db password=xxxxx dbname=sepal"},
		{"postgres://sepal:s3%2Fp%23w@db/sepal", "postgres://sepal:xxxxx@db/sepal"},
	} {
		got := Redact(c.in)
		if got != c.want {
			t.Errorf("Redact(%q) = %q, want %q", c.in, got, c.want)
		}
		if strings.Contains(got, "s3") {
			t.Errorf("Redact(%q) leaks the password: %q", c.in, got)
		}
	}
}

// TestRedactMalformed: passwords that make a URL ambiguous, and key/value
// values with escapes and quotes: the secret is in no part of the output,
// and the host and database stay when they can be told apart.
func TestRedactMalformed(t *testing.T) {
	for _, c := range []struct {
		name, in, secret string
		keep             []string
	}{
		{"url slash", "postgres://u:pa/s3ss@dbhost/statedb", "pa/s3ss", []string{"postgres://u:", "@dbhost/statedb"}},
		{"url hash", "postgres://u:pa#s3ss@dbhost/statedb", "pa#s3ss", []string{"postgres://u:", "@dbhost/statedb"}},
		{"url question mark", "postgres://u:pa?s3ss@dbhost/statedb", "pa?s3ss", []string{"postgres://u:", "@dbhost/statedb"}},
		{"url at", "postgres://u:pa@s3ss@dbhost/statedb", "pa@s3ss", []string{"postgres://u:", "@dbhost/statedb"}},
		{"url numeric hash", "postgresql://u:12#s3ss@dbhost:5432/statedb?sslmode=require", "12#s3ss", []string{"@dbhost:5432/statedb?sslmode=require"}},
		{"url numeric question mark", "postgres://u:12?s3ss@dbhost/statedb", "12?s3ss", []string{"@dbhost/statedb"}},
		{"url numeric slash", "postgres://u:12/s3ss@dbhost/statedb", "12/s3ss", []string{"@dbhost/statedb"}},
		{"url all", "postgres://u:a/b?c#d@s3@dbhost/statedb?sslmode=disable", "a/b?c#d@s3", []string{"@dbhost/statedb?sslmode=disable"}},
		{"url colon", "postgres://u:pa:s3ss@dbhost/statedb", "pa:s3ss", []string{"@dbhost/statedb"}},
		{"url bad port", "postgres://u:s3cret@dbhost:bad port/statedb", "s3cret", []string{"@dbhost:bad port/statedb"}},
		{"query at", "postgres://dbhost:5432/statedb?password=p@s3ss", "p@s3ss", []string{"postgres://dbhost"}},
		{"query hash", "postgres://dbhost/statedb?password=p#s3ss&sslmode=disable", "p#s3ss", []string{"dbhost/statedb", "sslmode=disable"}},
		{"query sslpassword", "postgres://dbhost/statedb?sslmode=verify-full&sslpassword=k/s3y", "k/s3y", []string{"dbhost/statedb", "sslmode=verify-full"}},
		{"kv escaped space", `host=dbhost password=a\ s3b dbname=statedb`, "s3b", []string{"host=dbhost", "dbname=statedb"}},
		{"kv escaped quote", `host=dbhost password=a\'s3b dbname=statedb`, "s3b", []string{"host=dbhost", "dbname=statedb"}},
		{"kv trailing backslash", `host=dbhost dbname=statedb password=s3b\`, "s3b", []string{"host=dbhost", "dbname=statedb"}},
		{"kv quoted", "host=dbhost password='a s3 b' dbname=statedb", "s3", []string{"host=dbhost", "dbname=statedb"}},
		{"kv quoted escapes", `host=dbhost password='a\' s3\\' dbname=statedb`, "s3", []string{"host=dbhost", "dbname=statedb"}},
		{"kv quoted empty", "host=dbhost password='' dbname=statedb", "''", []string{"host=dbhost", "dbname=statedb"}},
		{"kv unterminated quote", "host=dbhost dbname=statedb password='a s3 b", "s3", []string{"host=dbhost", "dbname=statedb"}},
		{"kv sslpassword", "host=dbhost sslkey=/k.pem sslpassword=s3key dbname=statedb", "s3key", []string{"host=dbhost", "sslkey=/k.pem", "dbname=statedb"}},
		{"kv sslpassword quoted", "host=dbhost sslpassword='s3 key' dbname=statedb", "s3", []string{"host=dbhost", "dbname=statedb"}},
		{"kv spaces", "host=dbhost password = s3cret dbname=statedb", "s3cret", []string{"host=dbhost", "dbname=statedb"}},
		{"kv tab", "host=dbhost\tpassword=s3cret\tdbname=statedb", "s3cret", []string{"host=dbhost", "dbname=statedb"}},
		{"kv upper case", "host=dbhost Password=s3cret dbname=statedb", "s3cret", []string{"host=dbhost", "dbname=statedb"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Redact(c.in)
			if strings.Contains(got, c.secret) || strings.Contains(got, "s3") {
				t.Errorf("Redact(%q) = %q: holds the secret %q", c.in, got, c.secret)
			}
			if !strings.Contains(got, "xxxxx") {
				t.Errorf("Redact(%q) = %q: no xxxxx", c.in, got)
			}
			for _, k := range c.keep {
				if !strings.Contains(got, k) {
					t.Errorf("Redact(%q) = %q: lost %q", c.in, got, k)
				}
			}
			// Where pgx accepts the string, the password it would send is
			// not in the output either.
			if cfg, err := pgconn.ParseConfig(c.in); err == nil && cfg.Password != "" && strings.Contains(got, cfg.Password) {
				t.Errorf("Redact(%q) = %q: holds pgx's password %q", c.in, got, cfg.Password)
			}
		})
	}
}

// Open's errors say what is wrong, name the flag, and never hold the
// password.
func TestOpenErrors(t *testing.T) {
	s := pgtest.Shared(t)
	good := pgtest.NewDatabase(t)
	ctx := context.Background()
	pool, err := Open(ctx, good, Options{What: "--database"})
	if err != nil {
		t.Fatal(err)
	}
	pool.Close()

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := l.Addr().(*net.TCPAddr).Port
	l.Close()

	wrongPW := strings.Replace(good, ":"+s.Password+"@", ":not-the-password@", 1)
	for _, c := range []struct {
		name, dsn string
		want      []string
	}{
		{"wrong password", wrongPW, []string{"--database postgres://postgres:xxxxx@", "refused the credentials", "PGPASSWORD", "28P01"}},
		{"no database", s.DSN("nosuchdb"), []string{"the database does not exist", "createdb"}},
		{"unreachable", fmt.Sprintf("postgres://u:p@127.0.0.1:%d/db", closedPort), []string{"cannot reach the server", "connection refused", "listen_addresses"}},
		{"bad string", "postgres://u:not-the-password@127.0.0.1:notaport/db", []string{"is not a valid PostgreSQL connection string", "xxxxx"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			pool, err := Open(ctx, c.dsn, Options{What: "--database"})
			if err == nil {
				pool.Close()
				t.Fatalf("Open(%s) succeeded", c.dsn)
			}
			msg := err.Error()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q: %s", w, msg)
				}
			}
			for _, secret := range []string{"not-the-password", s.Password} {
				if strings.Contains(msg, secret) {
					t.Errorf("error holds the password: %s", msg)
				}
			}
		})
	}
}

var testSchema = Schema{Name: "test", Migrations: []string{
	`CREATE TABLE t1 (x int)`,
	`ALTER TABLE t1 ADD COLUMN y int; CREATE TABLE t2 (z int)`,
}}

func open(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := Open(context.Background(), dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestMigrate(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	pool := open(t, dsn)
	first := Schema{Name: "test", Migrations: testSchema.Migrations[:1]}
	if from, to, err := first.Migrate(ctx, pool); err != nil || from != 0 || to != 1 {
		t.Fatalf("first migration: %d -> %d, %v", from, to, err)
	}
	if from, to, err := testSchema.Migrate(ctx, pool); err != nil || from != 1 || to != 2 {
		t.Fatalf("upgrade: %d -> %d, %v", from, to, err)
	}
	if _, err := pool.Exec(ctx, "INSERT INTO t1 (x, y) VALUES (1, 2); INSERT INTO t2 VALUES (3)"); err != nil {
		t.Fatalf("the migrated tables: %v", err)
	}
	if from, to, err := testSchema.Migrate(ctx, pool); err != nil || from != 2 || to != 2 {
		t.Fatalf("again: %d -> %d, %v", from, to, err)
	}
	// An older binary refuses a newer database, saying so.
	_, _, err := first.Migrate(ctx, pool)
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), "version 2") || !strings.Contains(err.Error(), "up to 1") {
		t.Fatalf("older schema on a newer database: %v", err)
	}
	// A failing migration leaves nothing half done.
	bad := Schema{Name: "test", Migrations: append(append([]string{}, testSchema.Migrations...), `CREATE TABLE t3 (a int); SELECT nosuchcolumn FROM t1`)}
	if _, _, err := bad.Migrate(ctx, pool); err == nil || !strings.Contains(err.Error(), "from version 2 to 3") {
		t.Fatalf("failing migration: %v", err)
	}
	var t3 bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('t3') IS NOT NULL").Scan(&t3); err != nil || t3 {
		t.Errorf("a failed migration left table t3 (%v)", err)
	}
	if _, to, err := testSchema.Migrate(ctx, pool); err != nil || to != 2 {
		t.Errorf("after a failed migration the version is %d (%v), want 2", to, err)
	}
}

// Processes starting at once on an empty database: one migrates, the
// others wait on the lock and find it done. Without the lock, CREATE
// TABLE races fail with duplicate-key errors on pg_type.
func TestMigrateConcurrent(t *testing.T) {
	ctx := context.Background()
	for round := range 5 {
		dsn := pgtest.NewDatabase(t)
		const n = 6
		pools := make([]*pgxpool.Pool, n)
		for i := range pools {
			pools[i] = open(t, dsn)
		}
		var wg sync.WaitGroup
		errs := make([]error, n)
		migrated := make([]bool, n)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				from, to, err := testSchema.Migrate(ctx, pools[i])
				errs[i], migrated[i] = err, from == 0 && to == 2
			}()
		}
		close(start)
		wg.Wait()
		count := 0
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: process %d: %v", round, i, err)
			}
			if migrated[i] {
				count++
			}
		}
		if count != 1 {
			t.Errorf("round %d: %d processes ran the migrations, want exactly 1", round, count)
		}
	}
}

// A user who may not create tables can use a database already migrated,
// and is told what to grant on an empty one.
func TestMigratePrivileges(t *testing.T) {
	ctx := context.Background()
	s := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t)
	admin := open(t, dsn)
	user := "reader_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if _, err := admin.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD 'pw'; REVOKE CREATE ON SCHEMA public FROM PUBLIC", user)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Exec(context.Background(), "DROP OWNED BY "+user)
	})
	db := dsn[strings.LastIndex(dsn, "/")+1:]
	db = strings.SplitN(db, "?", 2)[0]
	userDSN := fmt.Sprintf("postgres://%s:pw@%s:%d/%s?sslmode=disable", user, s.Host, s.Port, db)
	up := open(t, userDSN)
	_, _, err := testSchema.Migrate(ctx, up)
	err = Explain(err, "--database", userDSN)
	if err == nil || !strings.Contains(err.Error(), "GRANT CREATE ON SCHEMA public") {
		t.Fatalf("migrating without CREATE: %v", err)
	}
	if _, _, err := testSchema.Migrate(ctx, admin); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "GRANT SELECT ON sepal_schema TO "+user); err != nil {
		t.Fatal(err)
	}
	if from, to, err := testSchema.Migrate(ctx, up); err != nil || from != 2 || to != 2 {
		t.Fatalf("a user without CREATE on a migrated database: %d -> %d, %v", from, to, err)
	}
}

// TestExplainOneLine: pgconn's message for a host tried twice (TLS, then
// plaintext) is put on one line, each attempt once, and still wraps the
// error.
func TestExplainOneLine(t *testing.T) {
	inner := errors.New("failed to connect to `user=sepal database=sepal`:\n\t127.0.0.1:1 (127.0.0.1): dial error: refused\n\t127.0.0.1:1 (127.0.0.1): dial error: refused")
	err := Explain(inner, "--database", "postgres://sepal:secret@127.0.0.1:1/sepal")
	want := "--database postgres://sepal:xxxxx@127.0.0.1:1/sepal: failed to connect to `user=sepal database=sepal`: 127.0.0.1:1 (127.0.0.1): dial error: refused"
	if err.Error() != want {
		t.Errorf("got  %q\nwant %q", err, want)
	}
	if !errors.Is(err, inner) {
		t.Error("the explanation does not wrap the error")
	}
}
