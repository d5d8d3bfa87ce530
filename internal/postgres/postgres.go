// Package postgres holds what Sepal's PostgreSQL stores share: telling a
// connection string from a file name, redacting its password for logs,
// connecting with errors that say what is wrong (unreachable server,
// refused credentials, missing database, missing privilege), and
// versioned schemas migrated under a lock so that several SuperLinks
// starting at once on an empty database do not race.
//
// Connection strings are libpq's two forms, as pgx reads them: a URL
// (postgres://user:password@host:5432/db?sslmode=verify-full) or key/value
// pairs (host=db.example.org dbname=sepal user=sepal). A password may also
// come from $PGPASSWORD or a passfile ($PGPASSFILE, else ~/.pgpass), which
// pgx reads; the other PG* variables fill what the string leaves out.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// libpqKeywords are libpq's connection keywords (the PostgreSQL manual,
// "Parameter Key Words").
var libpqKeywords = []string{
	"host", "hostaddr", "port", "dbname", "user", "password", "passfile",
	"require_auth", "channel_binding", "connect_timeout", "client_encoding",
	"options", "application_name", "fallback_application_name",
	"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
	"tcp_user_timeout", "replication", "gssencmode", "sslmode", "requiressl",
	"sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
	"sslrootcert", "sslcrl", "sslcrldir", "sslsni", "sslnegotiation",
	"requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
	"min_protocol_version", "max_protocol_version", "krbsrvname", "gsslib",
	"gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
}

// kvKey matches the start of a libpq key/value string: one of libpq's
// keywords followed by "=", so that a file or folder name is never
// mistaken for one.
var kvKey = regexp.MustCompile(`^\s*(?:` + strings.Join(libpqKeywords, "|") + `)\s*=`)

// IsDSN reports whether s is a PostgreSQL connection string: a
// postgres:// or postgresql:// URL, or a libpq key/value string that
// starts with one of libpq's keywords (host=, dbname=, sslrootcert=, ...).
func IsDSN(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") || kvKey.MatchString(s)
}

// kvPassword matches a password or sslpassword in a key/value string, and
// its value as libpq reads it: quoted ('...', with backslash escapes; an
// unterminated quote runs to the end) or a run of non-spaces in which a
// backslash escapes the next character, a space included.
var kvPassword = regexp.MustCompile(`(?is)(\b(?:ssl)?password\s*=\s*)('(?:\\.|[^'\\])*'?\\?|(?:\\.|[^\s\\])*\\?)`)

const redacted = "xxxxx"

// Redact returns dsn with its passwords, if any, replaced by "xxxxx": the
// form to log or to put in a message. It covers the password of a URL's
// user information, password= and sslpassword= (the client key's
// passphrase) in a URL's query or in key/value pairs, in any letter case.
// It never fails. A URL whose password holds an unescaped '/', '?', '#'
// or '@' is redacted from the first ':' after "://" to the last '@', as
// pgx does: such a string may lose more than its password, never less.
func Redact(dsn string) string {
	rest, ok := strings.CutPrefix(dsn, "postgres://")
	if !ok {
		rest, ok = strings.CutPrefix(dsn, "postgresql://")
	}
	if !ok {
		return kvPassword.ReplaceAllString(dsn, "${1}"+redacted)
	}
	off := len(dsn) - len(rest)
	var masks [][2]int // byte ranges of dsn to replace

	// The user information ends at the last '@' of the authority (up to
	// the first '/', '?' or '#'), unless an '@' follows: then the password
	// may hold an unescaped '/', '?' or '#' (pgx's parser looks for the
	// '@' past a '?' or '#'), and it ends at the last '@' of all.
	authEnd := strings.IndexAny(rest, "/?#")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	at := strings.LastIndexByte(rest[:authEnd], '@')
	if strings.IndexByte(rest[authEnd:], '@') >= 0 {
		at = strings.LastIndexByte(rest, '@')
	}
	if at >= 0 {
		if colon := strings.IndexByte(rest[:at], ':'); colon >= 0 {
			masks = append(masks, [2]int{off + colon + 1, off + at})
		}
	}

	// Query parameters: from the first '?', which may be in a malformed
	// password (then both ranges are masked), split at '&'; a key counts
	// once percent-decoded, as pgx decodes it.
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		i := off + q + 1
		for _, pair := range strings.Split(dsn[i:], "&") {
			key, _, hasValue := strings.Cut(pair, "=")
			if hasValue {
				if k, err := url.PathUnescape(key); err == nil {
					key = k
				}
				key = strings.TrimSpace(key)
				if strings.EqualFold(key, "password") || strings.EqualFold(key, "sslpassword") {
					start := i + strings.IndexByte(pair, '=') + 1
					masks = append(masks, [2]int{start, i + len(pair)})
				}
			}
			i += len(pair) + 1
		}
	}
	if len(masks) == 0 {
		return dsn
	}
	slices.SortFunc(masks, func(a, b [2]int) int { return a[0] - b[0] })
	var b strings.Builder
	pos := 0
	for j := 0; j < len(masks); {
		start, end := masks[j][0], masks[j][1]
		for j++; j < len(masks) && masks[j][0] <= end; j++ {
			end = max(end, masks[j][1])
		}
		b.WriteString(dsn[pos:start])
		b.WriteString(redacted)
		pos = end
	}
	b.WriteString(dsn[pos:])
	return b.String()
}

// Options configures Open. Zero values take the defaults.
type Options struct {
	// What names the use in error messages, such as "--database" or
	// "--acme-storage". Default "the database".
	What string
	// MaxConns caps the pool. Default pgxpool's (4, or the number of CPUs
	// if more).
	MaxConns int32
	// ConnectTimeout bounds each connection attempt when the string sets
	// no connect_timeout. Default 10 s.
	ConnectTimeout time.Duration
	// Settings are run-time parameters set on every connection (such as
	// application_name or idle_in_transaction_session_timeout) unless the
	// connection string sets them. Default none.
	Settings map[string]string
}

// Open parses dsn, opens a pool and checks, with one round trip within
// ctx, that the server is reachable, accepts the credentials and has the
// database. The error says which of these failed and what to do, names
// the redacted connection string, and never holds the password.
func Open(ctx context.Context, dsn string, o Options) (*pgxpool.Pool, error) {
	if o.What == "" {
		o.What = "the database"
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgconn's message repeats the string (redacted) before the reason.
		why := err.Error()
		if i := strings.Index(why, "`: "); i >= 0 {
			why = why[i+3:]
		}
		return nil, fmt.Errorf("%s %s is not a valid PostgreSQL connection string (a postgres:// URL or libpq key/value pairs): %s",
			o.What, Redact(dsn), why)
	}
	if o.MaxConns > 0 {
		cfg.MaxConns = o.MaxConns
	}
	for k, v := range o.Settings {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
		if o.ConnectTimeout > 0 {
			cfg.ConnConfig.ConnectTimeout = o.ConnectTimeout
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, Explain(err, o.What, dsn)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, Explain(err, o.What, dsn)
	}
	return pool, nil
}

// Explain turns an error from connecting or querying into one message
// that says what is wrong and what to do, naming what (a flag) and the
// redacted dsn. Errors it does not recognize are wrapped as they are.
// The result wraps err, so errors.As still finds a *pgconn.PgError.
func Explain(err error, what, dsn string) error {
	if err == nil {
		return nil
	}
	err = oneLine{err}
	where := fmt.Sprintf("%s %s", what, Redact(dsn))
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fmt.Errorf("%s: the server refused the credentials: %w; check the user and the password "+
				"(in the connection string, $PGPASSWORD or the passfile) and the server's pg_hba.conf", where, err)
		case "3D000": // invalid_catalog_name
			return fmt.Errorf("%s: the database does not exist: %w; create it (createdb, or CREATE DATABASE) or name another", where, err)
		case "42501": // insufficient_privilege
			return fmt.Errorf("%s: the user lacks a privilege: %w; the user must own the database, or be granted "+
				"CREATE on its schema (PostgreSQL 15 no longer grants it on public to everyone): GRANT CREATE ON SCHEMA public TO the user", where, err)
		case "53300": // too_many_connections
			return fmt.Errorf("%s: the server has no connection slot left: %w; raise max_connections or lower the number of SuperLinks", where, err)
		case "57P03": // cannot_connect_now
			return fmt.Errorf("%s: the server is starting up or shutting down: %w; try again when it is up", where, err)
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	var ne net.Error
	var oe *net.OpError
	var de *net.DNSError
	switch {
	case errors.As(err, &de):
		return fmt.Errorf("%s: the server's host name does not resolve: %w; check the host in the connection string", where, err)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%s: the server did not answer in time: %w; check the host and port, and that a firewall lets the connection through", where, err)
	case errors.As(err, &oe):
		return fmt.Errorf("%s: cannot reach the server: %w; is PostgreSQL running and listening there (listen_addresses, port)?", where, err)
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return fmt.Errorf("%s: cannot connect: %w", where, err)
	}
	return fmt.Errorf("%s: %w", where, err)
}

// oneLine shows an error on one line: pgx's connection errors span several
// (a line per host and attempt, each cause repeated), and a start-up
// refusal must be one line. It unwraps to the error, so errors.As still
// finds the PostgreSQL or network error inside.
type oneLine struct{ err error }

func (e oneLine) Error() string {
	var parts []string
	for _, l := range strings.Split(e.err.Error(), "\n") {
		l = strings.TrimSuffix(strings.TrimSpace(l), ":")
		if l == "" || slices.ContainsFunc(parts, func(p string) bool { return strings.Contains(p, l) }) {
			continue
		}
		parts = append(parts, l)
	}
	return strings.Join(parts, ": ")
}

func (e oneLine) Unwrap() error { return e.err }

// Querier is what Migrate needs: a *pgxpool.Pool or a *pgx.Conn.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// schemaLockID is the key of the transaction-level advisory lock that
// every Sepal migration takes: one key for all of Sepal's schemas, so that
// the shared version table is created under it too. Any fixed number
// works; this one spells "sepal" in ASCII.
const schemaLockID int64 = 0x736570616c

// Schema is a versioned part of the database, such as the ACME storage's
// tables. Version n is reached by running Migrations[:n] in order; the
// version is kept in the table sepal_schema under Name.
type Schema struct {
	// Name identifies the schema in sepal_schema and in messages, such as
	// "ACME storage".
	Name string
	// Migrations[i] brings the schema from version i to i+1; each is run
	// in one transaction with the version update. Never edit one that has
	// shipped: append a new one.
	Migrations []string
}

// Migrate brings the schema to its latest version: in one transaction
// holding Sepal's schema advisory lock, it creates sepal_schema if needed,
// reads the version, refuses a database whose version is newer than the
// code knows (a newer SuperLink migrated it), and runs the migrations
// missing. Processes that start at once on an empty database wait on the
// lock, so one migrates and the others find it done. It returns the
// version found and the one left. A database already at the latest
// version needs no privilege beyond reading sepal_schema.
func (s Schema) Migrate(ctx context.Context, db Querier) (from, to int, err error) {
	latest := len(s.Migrations)
	// Already there? Then no lock and no DDL (and no CREATE privilege).
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		from, _, err = s.version(ctx, tx)
		return err
	}); err != nil {
		return 0, 0, err
	}
	if from == latest {
		return from, from, nil
	} else if from > latest {
		return from, from, s.newer(from)
	}

	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// The lock first: whatever this session learnt of the catalog before
	// it may be stale once another process has migrated.
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", schemaLockID); err != nil {
		return 0, 0, fmt.Errorf("waiting for the schema lock: %w", err)
	}
	v, exists, err := s.version(ctx, tx)
	if err != nil {
		return 0, 0, err
	}
	if !exists {
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS sepal_schema (
			name    text PRIMARY KEY,
			version integer NOT NULL,
			updated timestamptz NOT NULL DEFAULT now())`); err != nil {
			return 0, 0, fmt.Errorf("creating the table sepal_schema: %w", err)
		}
	}
	if v > latest {
		return v, v, s.newer(v)
	}
	for i := v; i < latest; i++ {
		if _, err := tx.Exec(ctx, s.Migrations[i]); err != nil {
			return v, v, fmt.Errorf("%s schema: migrating from version %d to %d: %w", s.Name, i, i+1, err)
		}
	}
	if v < latest {
		if _, err := tx.Exec(ctx, `INSERT INTO sepal_schema (name, version) VALUES ($1, $2)
			ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, updated = now()`, s.Name, latest); err != nil {
			return v, v, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return v, v, err
	}
	return v, latest, nil
}

// version reads the schema's version (0 when it has none yet); tableExists
// is false when sepal_schema does not exist. The table is looked up with
// a query on pg_class, whose snapshot is the statement's, rather than
// to_regclass, whose catalog cache can miss a table that another session
// created while this one waited on the lock.
func (s Schema) version(ctx context.Context, tx pgx.Tx) (v int, tableExists bool, err error) {
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relname = 'sepal_schema' AND n.nspname = current_schema())`).Scan(&tableExists); err != nil || !tableExists {
		return 0, false, err
	}
	err = tx.QueryRow(ctx, "SELECT version FROM sepal_schema WHERE name = $1", s.Name).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, true, nil
	}
	if err != nil {
		return 0, true, fmt.Errorf("reading the %s schema version: %w", s.Name, err)
	}
	return v, true, nil
}

// ErrNewerSchema is returned (wrapped) by Migrate for a database migrated
// by a newer version of Sepal.
var ErrNewerSchema = errors.New("the database was set up by a newer version of Sepal")

func (s Schema) newer(v int) error {
	return fmt.Errorf("%w: its %s schema is version %d, and this SuperLink knows versions up to %d; "+
		"run the newer SuperLink, or give this one another database", ErrNewerSchema, s.Name, v, len(s.Migrations))
}
