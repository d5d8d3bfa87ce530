package main

// This file is the seam between flower-superlink and the state packages:
// the --database flag and the state it opens.

import (
	"context"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/postgres"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

// Flower 1.8.0's two names for a state kept in memory (its own in-memory
// state and SQLite's in-memory database): both mean the in-memory state
// here, lost when the SuperLink stops.
const (
	inMemoryDatabase = ":flwr-in-memory-state:"
	sqliteInMemory   = ":memory:"
)

// registerDatabaseFlag adds --database to fs.
func registerDatabaseFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "database", inMemoryDatabase, "where the state is kept: "+inMemoryDatabase+" or "+sqliteInMemory+
		" in memory (lost when the SuperLink stops); a SQLite file, such as state.db, created 0600 if missing, that keeps nodes, runs, tasks and results across restarts and crashes;"+
		" or a PostgreSQL connection string (postgres://USER@HOST/DB or host=HOST dbname=DB; password from PGPASSWORD or PGPASSFILE) that several SuperLinks share, any of them serving any node")
}

// inMemory reports whether --database asks for the in-memory state.
func inMemory(db string) bool { return db == inMemoryDatabase || db == sqliteInMemory }

// checkDatabase refuses a --database value that cannot name a state, before
// anything else is checked.
func checkDatabase(db string) error {
	if db == "" {
		return cli.Usagef("--database is empty: give a file, such as state.db, a postgres:// URL, or %s", inMemoryDatabase)
	}
	return nil
}

// openDatabase opens the state --database names: the state in memory,
// the PostgreSQL database, or the SQLite file. This is the start-up check of the database: its errors name the
// flag, the file or the connection string (without its password), and the
// fix; the caller closes the state after serving. link bounds its Flower
// 1.29 generation (state.LinkLimits). lost is called once if the SQLite
// file is deleted or replaced while served (sqlstate.ErrLost): the caller
// stops serving and exits non-zero, so that a supervisor starts the
// SuperLink again on the file now at the path.
func openDatabase(ctx context.Context, db string, link state.LinkLimits, log *slog.Logger, lost func(error)) (state.State, error) {
	if inMemory(db) {
		return memstate.New(memstate.Options{Logger: log, Link: link}), nil
	}
	if postgres.IsDSN(db) {
		ctx, cancel := context.WithTimeout(ctx, postgresCheckTimeout)
		defer cancel()
		s, err := sqlstate.OpenPostgres(ctx, db, sqlstate.PostgresOptions{Options: sqlstate.Options{Logger: log, Link: link}, What: "--database"})
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := sqlstate.OpenSQLite(ctx, db, sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: log, Link: link}, OnLost: lost})
	if err != nil {
		return nil, err
	}
	return s, nil
}
