package main

// This file is the seam between flower-superlink and the state packages:
// the --database flag and the state it opens.

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/postgres"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memlink"
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

// objectDirMemory is the --object-dir value that keeps objects in memory.
const objectDirMemory = "memory"

// registerObjectDirFlag adds --object-dir to fs.
func registerObjectDirFlag(fs *pflag.FlagSet, p *string) {
	fs.StringVar(p, "object-dir", "", "with the state in memory, where the Flower 1.29 objects of 1 MiB or more that SuperNodes push wait to be pulled: in files of DIR that have no name,"+
		" so that nothing stays after a stop or a crash and the kernel's page cache holds them rather than the SuperLink (default: $TMPDIR, or /tmp; if that is a tmpfs they still take RAM, so prefer a disk such as /var/tmp);"+
		" "+objectDirMemory+" keeps them in the SuperLink's memory. With --database FILE or postgres:// the objects are in the database")
}

// checkObjectDir refuses --object-dir beside a database, which keeps the
// objects itself.
func checkObjectDir(dir, db string, set bool) error {
	switch {
	case set && !inMemory(db):
		return cli.Usagef("--object-dir is for the state in memory: with --database %s the objects are kept in the database; drop --object-dir", postgres.Redact(db))
	case set && dir == "":
		return cli.Usagef("--object-dir is empty: give a directory, such as /var/tmp, or %s", objectDirMemory)
	}
	return nil
}

// objectDir returns the directory --object-dir names for state.Options
// ("" for memory), checked: a directory where a file can be written. When
// the flag was not given and the system's temporary directory cannot take
// files, the objects stay in memory, with a warning.
func objectDir(dir string, log *slog.Logger) (string, error) {
	switch dir {
	case objectDirMemory:
		return "", nil
	case "":
		tmp := os.TempDir()
		if err := memlink.CheckObjectDir(tmp); err != nil {
			log.Warn("large objects kept in memory: the temporary directory cannot take their files; set --object-dir", "dir", tmp, "err", err)
			return "", nil
		}
		return tmp, nil
	}
	if err := memlink.CheckObjectDir(dir); err != nil {
		return "", fmt.Errorf("--object-dir %s: objects cannot be kept there: %w; give a writable directory, or --object-dir %s", dir, err, objectDirMemory)
	}
	return dir, nil
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
// 1.29 generation (state.LinkLimits); objects is --object-dir. lost is called once if the SQLite
// file is deleted or replaced while served (sqlstate.ErrLost): the caller
// stops serving and exits non-zero, so that a supervisor starts the
// SuperLink again on the file now at the path.
func openDatabase(ctx context.Context, db, objects string, link state.LinkLimits, log *slog.Logger, lost func(error)) (state.State, error) {
	if inMemory(db) {
		dir, err := objectDir(objects, log)
		if err != nil {
			return nil, err
		}
		return memstate.New(memstate.Options{Logger: log, Link: link, ObjectDir: dir}), nil
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
