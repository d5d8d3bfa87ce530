package memstate_test

import (
	"testing"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

func TestConformance(t *testing.T) {
	statetest.Run(t, statetest.Options{NewStore: func(*testing.T) statetest.Opener {
		return func(_ *testing.T, c statetest.Config) state.State {
			return memstate.New(memstate.Options{Now: c.Now, Logger: c.Logger})
		}
	}})
}
