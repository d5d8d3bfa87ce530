package sqlstate_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestConformance runs the suite on SQLite files.
func TestConformance(t *testing.T) {
	statetest.Run(t, statetest.Options{Shared: true, NewStore: func(t *testing.T) statetest.Opener {
		path := filepath.Join(t.TempDir(), "state.db")
		return func(t *testing.T, c statetest.Config) state.State { return openShared(t, path, c) }
	}})
}

// openShared opens a State on the SQLite file path with the suite's
// clock and logger, Shared: several may be open on it.
func openShared(t *testing.T, path string, c statetest.Config) *sqlstate.State {
	s, err := sqlstate.OpenSQLite(context.Background(), path, sqlstate.SQLiteOptions{
		Options: sqlstate.Options{Now: c.Now, Logger: c.Logger, Link: c.Link},
		Shared:  true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// openPostgres opens a State on the PostgreSQL database dsn with the
// suite's clock and logger.
func openPostgres(t *testing.T, dsn string, c statetest.Config) *sqlstate.State {
	s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{
		Options: sqlstate.Options{Now: c.Now, Logger: c.Logger, Link: c.Link},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
