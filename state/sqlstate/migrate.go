package sqlstate

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

//go:embed migrations
var migrationFiles embed.FS

// ErrNewerSchema means the database was written by a newer Sepal, whose
// schema this one does not know.
var ErrNewerSchema = errors.New("the database was written by a newer Sepal")

// ErrForeign means the database holds tables, but not a Sepal state.
var ErrForeign = errors.New("the database holds something other than a Sepal SuperLink state")

type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the dialect's numbered migrations in order. Their
// files are named NNNN_what.sql.
func (d *dialect) loadMigrations() ([]migration, error) {
	dir := path.Join("migrations", d.migrations)
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration %s: want NNNN_name.sql", e.Name())
		}
		b, err := fs.ReadFile(migrationFiles, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %d", m.name, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the schema version this Sepal writes in SQLite.
func SchemaVersion() int { return schemaVersion(sqliteDialect) }

// PostgresSchemaVersion is the schema version this Sepal writes in
// PostgreSQL (its row of internal/postgres's table sepal_schema).
func PostgresSchemaVersion() int { return schemaVersion(postgresDialect) }

func schemaVersion(d *dialect) int {
	ms, err := d.loadMigrations()
	if err != nil {
		panic(err)
	}
	return len(ms)
}

// migrate brings a SQLite schema up to the newest version in one
// transaction (PostgreSQL's go through internal/postgres.Schema):
// it creates it in an empty database, applies the migrations a database
// of an older version lacks, and refuses a database of a newer version
// (ErrNewerSchema) or one that holds other tables (ErrForeign). tables
// lists the database's tables, for the foreign check.
func migrate(ctx context.Context, db *sql.DB, d *dialect, tables func(context.Context, *sql.Tx) ([]string, error)) (from, to int, err error) {
	ms, err := d.loadMigrations()
	if err != nil {
		return 0, 0, err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback()
	names, err := tables(ctx, tx)
	if err != nil {
		return 0, 0, err
	}
	current := 0
	switch {
	case slices.Contains(names, "schema_migrations"):
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
			return 0, 0, err
		}
	case len(names) > 0:
		slices.Sort(names)
		if len(names) > 5 {
			names = append(names[:5], "...")
		}
		return 0, 0, fmt.Errorf("%w (its tables: %s)", ErrForeign, strings.Join(names, ", "))
	default:
		if _, err := tx.ExecContext(ctx, `CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`); err != nil {
			return 0, 0, err
		}
	}
	if current > len(ms) {
		return current, current, fmt.Errorf("%w (schema version %d; this one knows up to %d)", ErrNewerSchema, current, len(ms))
	}
	for _, m := range ms[current:] {
		if _, err := tx.ExecContext(ctx, m.sql); err != nil {
			return current, current, fmt.Errorf("migration %s: %w", m.name, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`, m.version, m.name, nowMicro()); err != nil {
			return current, current, err
		}
	}
	if err := tx.Commit(); err != nil {
		return current, current, err
	}
	return current, len(ms), nil
}
