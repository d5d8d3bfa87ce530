// Package state is the contract of a SuperLink's state: State for Flower
// 1.8.0 and LinkState for Flower 1.29.0, implemented in memory (memstate,
// with memlink) and on SQLite and PostgreSQL (sqlstate), all checked by
// one conformance suite (statetest); the rules they share live in
// state/internal.
package state

import (
	"context"
	"time"

	"github.com/sepal-fl/sepal/flwrproto"
)

// State is the SuperLink state shared by the Fleet and Driver services.
// Every method is safe for concurrent use, honours ctx, and is atomic: its
// whole effect is committed before it returns (one transaction per call in
// SQL implementations), so what a client was told happened has happened.
//
// Errors are gRPC status errors: InvalidArgument for a malformed request,
// NotFound for an unknown run, node or task, PermissionDenied for a node
// acting for another, FailedPrecondition for a call out of order,
// Unavailable when the backing store cannot be reached (a 1.8.0 SuperNode
// retries it), and Internal for what should not happen.
//
// Messages passed in (PushTaskIns, PushTaskRes) are owned by the State
// from then on and may be changed (their ids and times are set). Messages
// returned are shared: callers must not change them.
type State interface {
	// CreateNode registers a node (its ping interval, identity and
	// certificate are recorded with it) and returns its new id, random,
	// non-zero. Within n's limits, checked in the same transaction as the
	// insert, so that they hold for every State on one store: when
	// n.MaxNodes nodes are registered (n.MaxPerIdentity with n.Identity),
	// the one of them offline the longest is forgotten to make room, as
	// DeleteNode forgets a node; when all of them are online, CreateNode
	// fails with a *NodeLimitError (ResourceExhausted).
	CreateNode(ctx context.Context, n NewNode) (int64, error)
	// DeleteNode forgets a node (NotFound if unknown). Its undelivered
	// TaskIns stay: PullTaskRes answers them NODE_UNAVAILABLE.
	DeleteNode(ctx context.Context, nodeID int64, identity string) error
	// Ping refreshes a node's liveness for pingInterval seconds; false,
	// without error, for an unknown node, as 1.8.0.
	Ping(ctx context.Context, nodeID int64, pingInterval float64, identity string) (bool, error)
	// PullTaskIns hands at most one undelivered TaskIns to the node,
	// marking it delivered so that it is never handed out to another node,
	// by any State on the same store, nor again to this one, with one
	// exception: a State on a database (sqlstate) hands an unanswered
	// TaskIns again to the same node when the State that delivered it is
	// gone (closed or died), or when its delivery's commit failed with the
	// connection (the node was told the call failed), since the node then
	// never got it. A TaskIns already answered (its NODE_UNAVAILABLE result
	// made up while the node was away) is never handed out. An unknown node
	// gets nothing, as 1.8.0.
	PullTaskIns(ctx context.Context, nodeID int64, identity string) ([]*flwrproto.TaskIns, error)
	// PushTaskRes stores results, all or none, and returns their new ids.
	// A result that repeats a stored one, or comes after PullTaskRes
	// delivered one for its TaskIns, is accepted and discarded.
	PushTaskRes(ctx context.Context, list []*flwrproto.TaskRes, identity string) (map[string]uint32, error)

	// In the Fleet methods above, a non-empty identity that differs from
	// the one the node was created with fails with PermissionDenied: a node
	// id created under one certificate cannot be used by another. An empty
	// identity is never checked. PushTaskRes checks it against the identity
	// of the node the TaskIns was sent to.

	// RevokeNodes forgets, as DeleteNode does, every node created with a
	// client certificate (NewNode.Certificate, not "") for which revoked
	// returns true, logging each, and returns their ids. revoked is called
	// with the State's lock held (or in its transaction): it must be quick
	// and must not call the State.
	RevokeNodes(ctx context.Context, revoked func(certificate string) bool) ([]int64, error)

	// CreateRun creates a run and returns its id, random, non-zero.
	CreateRun(ctx context.Context) (int64, error)
	// GetNodes returns the online nodes in the order they joined; nothing
	// for an unknown run, as 1.8.0.
	GetNodes(ctx context.Context, runID int64) ([]*flwrproto.Node, error)
	// PushTaskIns stores TaskIns, all or none, and returns their new ids.
	PushTaskIns(ctx context.Context, list []*flwrproto.TaskIns) ([]string, error)
	// PullTaskRes returns the results of the given TaskIns, in the order
	// asked. A pair delivered is kept until the run's next PullTaskRes that
	// no longer asks for it (the ServerApp has the result then), and is
	// forgotten then; asked again before that, it is delivered again. For
	// a TaskIns without result whose consumer is offline or deleted it
	// makes up the NODE_UNAVAILABLE result, as 1.8.0.
	PullTaskRes(ctx context.Context, taskIDs []string) ([]*flwrproto.TaskRes, error)

	// Sweep notices nodes that missed their ping (logging their leaving
	// once) and forgets tasks and results past ttl + ExpiryGrace. The
	// SuperLink calls it every few seconds. Safe to run from several
	// processes on one store at once.
	Sweep(ctx context.Context) error

	// Stats, Nodes and Runs observe the state for metrics and the status
	// page: cheap, called on every scrape.
	Stats(ctx context.Context) (Stats, error)
	// Nodes returns every registered node, online or not, in join order.
	Nodes(ctx context.Context) ([]NodeInfo, error)
	// Runs returns up to limit runs (all when limit <= 0), most recent
	// first.
	Runs(ctx context.Context, limit int) ([]RunInfo, error)
	// Check reports whether the backing store is reachable (readiness).
	Check(ctx context.Context) error

	// Close releases the store. Calls after Close fail.
	Close() error
}

// Protocol facts every State keeps alike.
const (
	// NodeUnavailableCode and NodeUnavailableReason are the error of the
	// result 1.8.0 makes up for a TaskIns whose consumer is offline.
	NodeUnavailableCode   = 3
	NodeUnavailableReason = "Error: Node Unavailable - The destination node is currently unavailable. It exceeds the time limit specified in its last ping."

	// BlobMin is the smallest Array.data that is stored once by content;
	// smaller arrays cost less than the bookkeeping and stay in their task.
	BlobMin = 4 << 10
)

// Stats counts what a State holds.
type Stats struct {
	Nodes, NodesOnline int
	Runs               int
	TaskInsWaiting     int   // pushed, not yet pulled by its node
	TaskInsDelivered   int   // pulled, no result yet
	TaskResWaiting     int   // results stored, not yet pulled by the ServerApp
	Blobs              int   // distinct parameter arrays held
	BlobBytes          int64 // their total size
}

// NewNode is a node to register (CreateNode), and the limits its
// registration must fit in. The zero value of a limit is no limit.
type NewNode struct {
	// PingInterval is the node's ping_interval in seconds.
	PingInterval float64
	// Identity is the peer's client-certificate identity under mutual TLS
	// (sepal:node:NAME), "" otherwise: a node id created under one
	// identity can only be used under it.
	Identity string
	// Certificate names the client certificate the node is created with
	// (certfmt.CertID: its issuer and serial), "" without mutual TLS:
	// RevokeNodes finds the node by it.
	Certificate string
	// MaxNodes bounds the nodes registered at once, online or offline.
	MaxNodes int
	// MaxPerIdentity bounds the nodes registered at once with Identity
	// (not applied when Identity is "").
	MaxPerIdentity int
}

// NodeInfo describes one registered node.
type NodeInfo struct {
	ID           int64
	Identity     string // "" without mutual TLS
	Certificate  string // NewNode.Certificate
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

// BlobFinder is an optional ability of a State that holds parameter arrays
// in memory: the SuperLink's codec asks it for an array it is decoding, so
// that an array the State already holds is not copied again, and tells it
// the hash of an array it decoded, so that the State need not read it
// again. Both must be safe for concurrent use and must not block on I/O.
type BlobFinder interface {
	// FindBlob returns held content of length n, whose HashBlob is hash,
	// for which eq returns true; nil when none. The returned bytes are
	// never modified.
	FindBlob(hash uint64, n int, eq func([]byte) bool) []byte
	// NoteBlob tells the State that HashBlob(b) is hash, for an array a
	// request about to reach it carries; b never changes afterwards.
	// (BlobHashes implements it.)
	NoteBlob(b []byte, hash uint64)
}
