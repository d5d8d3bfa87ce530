package sqlstate_test

import (
	"context"
	"testing"

	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestConformancePostgres runs the suite on PostgreSQL databases: the
// States over one database are replicas, as several SuperLinks on it.
func TestConformancePostgres(t *testing.T) {
	statetest.Run(t, statetest.Options{Shared: true, NewStore: func(t *testing.T) statetest.Opener {
		dsn := pgtest.NewDatabase(t)
		return func(t *testing.T, c statetest.Config) state.State {
			s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{
				Options: sqlstate.Options{Now: c.Now, Logger: c.Logger},
			})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}})
}
