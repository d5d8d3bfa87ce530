package sqlstate

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/internal/postgres"
)

// PostgresOptions configure OpenPostgres.
type PostgresOptions struct {
	Options
	// What names the database in messages, such as "--database".
	// Default "the state database".
	What string
	// MaxConns caps this State's connections to the server (one more is
	// held for the replica's lock). Default 16.
	MaxConns int32
}

// PostgresSchema is the name of the state's schema in internal/postgres's
// table sepal_schema, beside the ACME storage's.
const PostgresSchema = "SuperLink state"

// replicaLockClass is the first key of the replicas' session advisory
// locks ("Sepl" in ASCII); the second is the replica id. Sepal's schema
// lock is a one-key lock, which PostgreSQL keeps apart from two-key ones.
const replicaLockClass = 0x5365706c

var postgresDialect = &dialect{
	name:       "PostgreSQL",
	migrations: "postgres",
	forUpdate:  " FOR UPDATE",
	skipLocked: " SKIP LOCKED",
	readOnly:   &sql.TxOptions{ReadOnly: true},
	limit: func(n int) string {
		if n <= 0 {
			return "ALL"
		}
		return strconv.Itoa(n)
	},
	classify: classifyPostgres,
	retry:    retryPostgres,
	alive: `EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid = ` + strconv.Itoa(replicaLockClass) + ` AND objsubid = 2 AND objid = CAST(%s AS oid))`,
	lockJoin: func(ctx context.Context, tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, int32(replicaLockClass))
		return err
	},
	check:       `SELECT version FROM sepal_schema WHERE name = '` + PostgresSchema + `'`,
	writeChunks: copyChunks,
	readChunks:  readChunksPG,
}

// OpenPostgres opens the state in the PostgreSQL database dsn (a
// postgres:// URL or libpq key/value pairs; the password may come from
// $PGPASSWORD or a passfile), creating or upgrading its tables under
// Sepal's schema lock (internal/postgres.Schema), so that SuperLinks that
// start at once on an empty database do not race.
//
// Several States, in one process or several, may share the database: they
// are one state (every call is one transaction; a TaskIns goes to exactly
// one node), and each is a replica whose death the others notice at once
// (replicas.go).
//
// Every refusal is one message naming o.What, the connection string
// without its password, and what is wrong: the server unreachable, the
// credentials refused, the database missing, a missing privilege, a
// schema written by a newer Sepal (wrapping postgres.ErrNewerSchema), a
// database that holds other tables of the same names.
func OpenPostgres(ctx context.Context, dsn string, o PostgresOptions) (*State, error) {
	if o.What == "" {
		o.What = "the state database"
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 16
	}
	o.Options = o.Options.WithDefaults()
	ms, err := postgresDialect.loadMigrations()
	if err != nil {
		return nil, err
	}
	pool, err := postgres.Open(ctx, dsn, postgres.Options{What: o.What, MaxConns: o.MaxConns, Settings: map[string]string{
		"application_name": "sepal-superlink",
		// A transaction of the state never waits on its client for long:
		// one that does belongs to a SuperLink that hangs (stopped, not
		// dead), whose row locks would stall the other replicas.
		"idle_in_transaction_session_timeout": "60s",
	}})
	if err != nil {
		return nil, err
	}
	schema := postgres.Schema{Name: PostgresSchema}
	for _, m := range ms {
		schema.Migrations = append(schema.Migrations, m.sql)
	}
	from, to, err := schema.Migrate(ctx, pool)
	if err != nil {
		pool.Close()
		return nil, migrateError(err, o.What, dsn)
	}
	db := stdlib.OpenDBFromPool(pool)
	s := newState(db, postgresDialect, postgres.Redact(dsn), o.Options)
	l := &pgLocker{pool: pool, s: s, stop: make(chan struct{}), done: make(chan struct{})}
	s.locker = l
	s.onClose = func() error { pool.Close(); return nil }
	if err := s.join(ctx, false); err != nil {
		l.close()
		db.Close()
		pool.Close()
		return nil, postgres.Explain(err, o.What, dsn)
	}
	go l.watch()
	if from != to {
		if from == 0 {
			o.Logger.Info("state database created", "database", s.name, "schema_version", to)
		} else {
			o.Logger.Info("state database upgraded", "database", s.name, "schema_version_was", from, "schema_version", to)
		}
	}
	return s, nil
}

// migrateError explains a failed migration.
func migrateError(err error, what, dsn string) error {
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, postgres.ErrNewerSchema):
		return fmt.Errorf("%s %s: %w", what, postgres.Redact(dsn), err)
	case errors.As(err, &pe) && pe.Code == "42P07": // duplicate_table
		return fmt.Errorf("%s %s: the database already holds tables that are not Sepal's (%s): give the SuperLink a database of its own (CREATE DATABASE sepal)",
			what, postgres.Redact(dsn), pe.Message)
	}
	return postgres.Explain(err, what, dsn)
}

// pgLocker holds a replica's session advisory lock on a connection of its
// own, taken out of the pool, and takes it again when that connection is
// lost (the server restarted, a network cut) once the server answers.
type pgLocker struct {
	pool *pgxpool.Pool
	s    *State

	mu   sync.Mutex
	conn *pgx.Conn // nil while lost
	id   int64     // the lock held (or to take again), 0 for none

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// lockPing is how often the lock's connection is checked.
const lockPing = 2 * time.Second

// lock takes the lock of replica id, after releasing the one held.
func (l *pgLocker) lock(ctx context.Context, id int64) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		if err := l.connectLocked(ctx); err != nil {
			return false, err
		}
	}
	if l.id != 0 {
		if _, err := l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, int32(replicaLockClass), int32(l.id)); err != nil {
			return false, err
		}
		l.id = 0
	}
	ok, err := l.tryLocked(ctx, id)
	if ok {
		l.id = id
	}
	return ok, err
}

func (l *pgLocker) tryLocked(ctx context.Context, id int64) (bool, error) {
	var ok bool
	err := l.conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, int32(replicaLockClass), int32(id)).Scan(&ok)
	return ok, err
}

// connectLocked takes a connection out of the pool for the lock, and has
// the server probe it, so that a replica cut off from the server loses its
// lock within about 25 s rather than the kernel's two hours.
func (l *pgLocker) connectLocked(ctx context.Context) error {
	c, err := l.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn := c.Hijack()
	if _, err := conn.Exec(ctx, `SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3`); err != nil {
		conn.Close(context.Background())
		return err
	}
	l.conn = conn
	return nil
}

// watch checks the lock's connection every lockPing until close, and
// takes the lock again on a new connection when it was lost.
func (l *pgLocker) watch() {
	defer close(l.done)
	t := time.NewTicker(lockPing)
	defer t.Stop()
	lost := false
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), lockPing*2)
		l.mu.Lock()
		id := l.id
		var err error
		if l.conn != nil {
			if err = l.conn.Ping(ctx); err != nil {
				l.conn.Close(context.Background())
				l.conn = nil
			}
		} else {
			err = l.connectLocked(ctx)
			if err == nil {
				var ok bool
				if ok, err = l.tryLocked(ctx, id); err == nil && !ok {
					err = errors.New("another SuperLink holds this one's replica lock")
				}
				if err != nil && l.conn != nil {
					l.conn.Close(context.Background())
					l.conn = nil
				}
			}
		}
		l.mu.Unlock()
		switch {
		case err != nil && !lost:
			lost = true
			l.s.log.Warn("lost the database connection that shows the other SuperLinks this one is running; "+
				"until it is back, they may hand the tasks it delivered, not yet answered, to their nodes again", "database", l.s.name, "error", err)
		case err == nil && lost && l.conn != nil:
			lost = false
			if err := l.s.rejoin(ctx, id); err != nil {
				l.s.log.Warn("could not record this SuperLink in the database again; retrying", "database", l.s.name, "error", err)
				lost = true
				l.mu.Lock()
				if l.conn != nil {
					l.conn.Close(context.Background())
					l.conn = nil
				}
				l.mu.Unlock()
			} else {
				l.s.log.Info("database connection back: this SuperLink is shown running again", "database", l.s.name, "replica", id)
			}
		}
		cancel()
	}
}

// close stops the watch and ends the lock's connection (the server frees
// the lock).
func (l *pgLocker) close() {
	l.stopOnce.Do(func() {
		close(l.stop)
		select {
		case <-l.done:
		case <-time.After(lockPing * 3):
		}
		l.mu.Lock()
		if l.conn != nil {
			l.conn.Close(context.Background())
			l.conn = nil
		}
		l.mu.Unlock()
	})
}

// retryPostgres: a transaction rolled back as a whole by the server
// (serialization_failure, deadlock_detected) runs again up to maxAttempts
// times; one whose connection broke before its commit, once more (on a
// new connection: the pool drops the broken one).
func retryPostgres(err error, committing bool) (int, bool) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01") {
		return maxAttempts, true
	}
	if !committing && connectionLost(err) {
		return 1, true
	}
	return 0, false
}

// connectionLost reports whether err means the connection to the server
// broke or could not be made.
func connectionLost(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	return pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.As(err, &ne) || errors.As(err, &ce) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, driver.ErrBadConn) ||
		strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}

// classifyPostgres maps a PostgreSQL error met while serving.
func classifyPostgres(err error) (codes.Code, string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "53100": // disk_full
			return codes.Unavailable, "the database server's disk is full: free some space there; nothing committed before is lost, and the call can be retried"
		case strings.HasPrefix(pe.Code, "53"): // insufficient resources
			return codes.Unavailable, "the database server is short of a resource (memory, connections); retry"
		case strings.HasPrefix(pe.Code, "08"), pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03":
			return codes.Unavailable, "the database server is unreachable or restarting; the call can be retried once it is back"
		case pe.Code == "40001", pe.Code == "40P01":
			return codes.Unavailable, "the call kept conflicting with others on the database; retry"
		case pe.Code == "25006": // read_only_sql_transaction
			return codes.Unavailable, "the database is read-only (a standby?): give the SuperLink the primary"
		case pe.Code == "42501":
			return codes.Unavailable, "the database user lacks a privilege on the state's tables: grant it back (the user should own them)"
		}
		return codes.Internal, ""
	}
	if connectionLost(err) {
		return codes.Unavailable, "cannot reach the database server; the call can be retried once it is back"
	}
	return codes.Internal, ""
}
