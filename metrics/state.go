package metrics

import (
	"context"

	"github.com/sepal-fl/sepal/state"
)

// State is what the metrics and the status page read of the SuperLink
// state: the observation methods of state.State, which satisfies it. Each
// is called on every scrape or page view with a context that ends after a
// few seconds.
type State interface {
	Stats(ctx context.Context) (state.Stats, error)
	// Nodes returns every registered node, online or not.
	Nodes(ctx context.Context) ([]state.NodeInfo, error)
	// Runs returns up to limit runs, most recent first.
	Runs(ctx context.Context, limit int) ([]state.RunInfo, error)
	// Check reports whether the backing store is reachable.
	Check(ctx context.Context) error
}

var _ State = state.State(nil)
