package superlink

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

// TestGoldenReplaySQLite is the golden replay over a SQLite file, as
// flower-superlink --database FILE keeps its state.
func TestGoldenReplaySQLite(t *testing.T) {
	replayGolden(t, func(t testing.TB, now func() time.Time, log *slog.Logger) state.State {
		s, err := sqlstate.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "state.db"), sqlstate.SQLiteOptions{Options: sqlstate.Options{Now: now, Logger: log}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestGoldenReplayPostgres is the golden replay over PostgreSQL, as
// flower-superlink --database postgres://... keeps its state.
func TestGoldenReplayPostgres(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	replayGolden(t, func(t testing.TB, now func() time.Time, log *slog.Logger) state.State {
		s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{Options: sqlstate.Options{Now: now, Logger: log}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
