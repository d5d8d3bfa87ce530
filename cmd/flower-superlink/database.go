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
		" in memory (lost when the SuperLink stops), or a SQLite file, such as state.db, created 0600 if missing, that keeps nodes, runs, tasks and results across restarts and crashes")
}

// inMemory reports whether --database asks for the in-memory state.
func inMemory(db string) bool { return db == inMemoryDatabase || db == sqliteInMemory }

// checkDatabase refuses a --database value that cannot name a state, before
// anything else is checked.
func checkDatabase(db string) error {
	switch {
	case db == "":
		return cli.Usagef("--database is empty: give a file, such as state.db, or %s", inMemoryDatabase)
	case postgres.IsDSN(db):
		return cli.Usagef("--database %s: PostgreSQL is not supported yet; give a SQLite file, such as state.db", postgres.Redact(db))
	}
	return nil
}

// openDatabase opens the state --database names: nil for the in-memory
// state (the SuperLink's default), or the SQLite file. The file's errors
// name it and the fix; the caller closes the state after serving.
func openDatabase(ctx context.Context, db string, log *slog.Logger) (state.State, error) {
	if inMemory(db) {
		return nil, nil
	}
	s, err := sqlstate.OpenSQLite(ctx, db, sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: log}})
	if err != nil {
		return nil, err
	}
	return s, nil
}
