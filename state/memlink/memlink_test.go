package memlink_test

import (
	"testing"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memlink"
	"github.com/sepal-fl/sepal/state/statetest"
)

func TestConformance(t *testing.T) {
	statetest.RunLink(t, statetest.LinkOptions{NewStore: func(t *testing.T) statetest.LinkOpener {
		return func(t *testing.T, c statetest.Config) state.LinkState {
			return memlink.New(state.Options{Now: c.Now, Logger: c.Logger, Link: c.Link})
		}
	}})
}
