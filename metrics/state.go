package metrics

import (
	"context"
	"time"
)

// State is what the metrics and the status page read of the SuperLink
// state: the observation methods of the state contract. Every method must
// be cheap and safe for concurrent use; each is called on every scrape or
// page view with a context that ends after a few seconds.
type State interface {
	Stats(ctx context.Context) (Stats, error)
	// Nodes returns every registered node, online or not.
	Nodes(ctx context.Context) ([]NodeInfo, error)
	// Runs returns up to limit runs, most recent first.
	Runs(ctx context.Context, limit int) ([]RunInfo, error)
	// Check reports whether the backing store is reachable.
	Check(ctx context.Context) error
}

// Stats counts what the state holds.
type Stats struct {
	Nodes, NodesOnline int
	Runs               int
	TaskInsWaiting     int   // pushed, not yet pulled by its node
	TaskInsDelivered   int   // pulled, no result yet
	TaskResWaiting     int   // results stored, not yet pulled by the ServerApp
	Blobs              int   // distinct parameter arrays held
	BlobBytes          int64 // their total size
}

// NodeInfo describes one registered node.
type NodeInfo struct {
	ID           int64
	Identity     string // "" without mutual TLS
	PingInterval float64
	Created      time.Time
	OnlineUntil  time.Time
	Online       bool
}

// RunInfo describes one run.
type RunInfo struct {
	ID            int64
	Created       time.Time
	LastGroup     string // group_id of the latest TaskIns pushed (the round, for FedAvg)
	TaskInsPushed int    // TaskIns pushed in this run so far
	TaskResPulled int    // results delivered to the ServerApp so far
}
