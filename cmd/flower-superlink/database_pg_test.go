package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// pgExec runs statements on the database dsn.
func pgExec(t *testing.T, dsn string, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	for _, s := range stmts {
		if _, err := c.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// TestDatabasePostgresRefusals: each --database postgres://... the
// SuperLink cannot use stops it before it listens, with one message that
// names the flag, the connection string without its password, what is
// wrong and the fix; the password is in no message.
func TestDatabasePostgresRefusals(t *testing.T) {
	srv := pgtest.Shared(t)
	withDB := func(dsn, db string) string {
		u, _ := url.Parse(dsn)
		u.Path = "/" + db
		return u.String()
	}
	check := func(t *testing.T, dsn string, want ...string) {
		t.Helper()
		want = append(want, "--database")
		err := runRefusedErr(t, dsn, want...)
		if u, perr := url.Parse(dsn); perr == nil {
			if pw, ok := u.User.Password(); ok && strings.Contains(err.Error(), pw) {
				t.Errorf("the message holds the password: %v", err)
			}
		}
		t.Logf("%v", err)
	}
	t.Run("unreachable", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there now
		check(t, fmt.Sprintf("postgres://sepal:secret@%s/sepal?sslmode=disable", addr), "postgres://sepal:xxxxx@"+addr, "cannot reach the server", "is PostgreSQL running")
	})
	t.Run("wrong password", func(t *testing.T) {
		dsn := fmt.Sprintf("postgres://%s:not-the-password@%s:%d/postgres?sslmode=disable", srv.User, srv.Host, srv.Port)
		check(t, dsn, "the server refused the credentials", "PGPASSWORD")
	})
	t.Run("missing database", func(t *testing.T) {
		check(t, withDB(srv.DSN("postgres"), "no_such_db"), "the database does not exist", "CREATE DATABASE")
	})
	t.Run("newer schema", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{Options: quiet.Options})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		pgExec(t, dsn, `UPDATE sepal_schema SET version = 99 WHERE name = 'SuperLink state'`)
		check(t, dsn, "set up by a newer version of Sepal", "SuperLink state schema is version 99", "run the newer SuperLink")
	})
	t.Run("not Sepal's tables", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		pgExec(t, dsn, `CREATE TABLE nodes (name text)`)
		check(t, dsn, "already holds tables that are not Sepal's", "give the SuperLink a database of its own")
	})
	t.Run("no privilege", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		pgExec(t, dsn, `CREATE ROLE weak LOGIN PASSWORD 'weakpw'`, `REVOKE CREATE ON SCHEMA public FROM PUBLIC`)
		t.Cleanup(func() { pgExec(t, srv.DSN("postgres"), `DROP ROLE IF EXISTS weak`) })
		u, _ := url.Parse(dsn)
		u.User = url.UserPassword("weak", "weakpw")
		check(t, u.String(), "lacks a privilege", "GRANT CREATE ON SCHEMA public")
	})
}

// serveOnce runs the SuperLink with --database dsn until it serves, then
// stops it, and returns what it wrote to stdout and stderr.
func serveOnce(t *testing.T, dsn string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stdout, stderr := &testkit.SyncBuffer{}, &testkit.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--insecure", "--database", dsn,
			"--driver-api-address", "127.0.0.1:0", "--grpc-rere-fleet-api-address", "127.0.0.1:0"}, stdout, stderr)
	}()
	for !strings.Contains(stderr.String(), "msg=serving") {
		select {
		case err := <-done:
			t.Fatalf("ended before serving: %v\n%s", err, stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return stdout.String() + stderr.String()
}

// TestDatabasePostgresPassword: a key/value connection string without a
// password, the password in $PGPASSWORD: the SuperLink serves, and says
// where its state is without the password.
func TestDatabasePostgresPassword(t *testing.T) {
	srv := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t)
	u, _ := url.Parse(dsn)
	kv := srv.KeyValueDSN(strings.TrimPrefix(u.Path, "/"))
	t.Setenv("PGPASSWORD", srv.Password)
	if out := serveOnce(t, kv); !strings.Contains(out, "state database created") || strings.Contains(out, srv.Password) {
		t.Errorf("log:\n%s", out)
	}
}

// TestDatabasePostgresURLPassword: a URL connection string holding a
// password with '#', '/', '?' and '@' (percent-encoded as libpq requires,
// or with '#' and '?' raw, which pgx reads as libpq does): the SuperLink
// serves, and neither the password nor its encoded form is in its output.
func TestDatabasePostgresURLPassword(t *testing.T) {
	srv := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t)
	u, _ := url.Parse(dsn)
	db := strings.TrimPrefix(u.Path, "/")
	role := "pw_" + db
	const pw = "Pw#se/cr?et@Zq"
	pgExec(t, srv.DSN("postgres"),
		fmt.Sprintf(`CREATE ROLE %s LOGIN PASSWORD '%s'`, role, pw),
		fmt.Sprintf(`ALTER DATABASE %s OWNER TO %s`, db, role))
	t.Cleanup(func() {
		pgExec(t, srv.DSN("postgres"), "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)", "DROP ROLE IF EXISTS "+role)
	})
	t.Setenv("PGPASSWORD", "")
	t.Setenv("PGPASSFILE", "/nonexistent")
	host := fmt.Sprintf("%s:%d", srv.Host, srv.Port)
	encoded := url.UserPassword(role, pw).String() // role:Pw%23se%2Fcr%3Fet%40Zq
	for _, c := range []struct{ name, dsn string }{
		{"encoded", "postgres://" + encoded + "@" + host + "/" + db + "?sslmode=disable"},
		{"raw hash and question mark", "postgres://" + role + ":" + strings.NewReplacer("/", "%2F", "@", "%40").Replace(pw) +
			"@" + host + "/" + db + "?sslmode=disable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := serveOnce(t, c.dsn)
			if want := `database="postgres://` + role + ":xxxxx@" + host + "/" + db + `?sslmode=disable"`; !strings.Contains(out, want) {
				t.Errorf("the log does not say where the state is:\n%s", out)
			}
			userinfo, _, _ := strings.Cut(strings.TrimPrefix(c.dsn, "postgres://"), "@"+host)
			secret := strings.TrimPrefix(userinfo, role+":") // the password as written in the DSN
			for _, s := range []string{pw, secret, url.QueryEscape(pw), url.PathEscape(pw), "se/cr", "se%2Fcr", "cr?et", "cr%3Fet"} {
				if strings.Contains(out, s) {
					t.Errorf("the output holds the password (%q):\n%s", s, out)
				}
			}
		})
	}
}
