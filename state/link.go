package state

import (
	"context"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// LinkState is the SuperLink state of the Flower 1.29.0 generation (what
// Flower calls its LinkState and ObjectStore): SuperNodes by public key,
// runs with their status and FAB, instruction and reply messages with
// their object trees, content-addressed objects, app tokens and logs. It
// stands beside State (the 1.8.0 generation), so that one store type can
// implement both.
//
// Every method is safe for concurrent use, honours ctx and is atomic: its
// whole effect is committed before it returns (one transaction in a SQL
// implementation), and it assumes nothing held in one process only, so
// that several SuperLinks can share one store. Times come from the
// implementation's clock (Options.Now).
//
// Errors are gRPC status errors, with Flower 1.29.0's code where Flower
// has one: InvalidArgument for a malformed request, NotFound for an
// unknown run, node or object, PermissionDenied for a call on a run that
// is not running (with Flower's message, "Run is finished.") or for a
// node acting for another, FailedPrecondition for bad object content and
// calls out of order, ResourceExhausted (a *LinkLimitError) past a bound
// of Options.Link, Unavailable when the store cannot be reached. A call
// that fails stores nothing.
//
// Messages passed in are owned by the LinkState from then on; messages
// returned are shared and must not be changed.
type LinkState interface {
	// RegisterNode creates a node for a public key (PEM, as the SuperNode
	// sends it) with a heartbeat interval (seconds; 0 for a node that
	// registered itself) and returns its id, random, neither 0 nor 1
	// (SuperLinkNodeID). FailedPrecondition "Public key already in use"
	// when a node holds the key. Within LinkLimits.MaxNodes and
	// MaxUnactivated: a node that does not fit takes the place of one the
	// limits let go, or fails with a LinkLimitError.
	RegisterNode(ctx context.Context, publicKey []byte, heartbeatInterval float64) (uint64, error)
	// ActivateNode turns the registered or offline node of a public key
	// online for HeartbeatPatience heartbeat intervals and returns its
	// id. FailedPrecondition when no node holds the key or it is online.
	ActivateNode(ctx context.Context, publicKey []byte, heartbeatInterval float64) (uint64, error)
	// DeactivateNode turns an online node offline. FailedPrecondition when
	// it is not online or unknown.
	DeactivateNode(ctx context.Context, nodeID uint64) error
	// UnregisterNode unregisters a node: it goes offline for good and its
	// key cannot be used again. NotFound when unknown or already
	// unregistered.
	UnregisterNode(ctx context.Context, nodeID uint64) error
	// NodeHeartbeat keeps a node online for HeartbeatPatience intervals;
	// false, without error, for an unknown or unregistered node.
	NodeHeartbeat(ctx context.Context, nodeID uint64, heartbeatInterval float64) (bool, error)
	// NodeOfKey returns the id of the node that holds a public key and is
	// not unregistered; false when there is none.
	NodeOfKey(ctx context.Context, publicKey []byte) (uint64, bool, error)
	// UseSignature records that a node's signature, made at signedAt and
	// acceptable until until (seconds since the epoch), served a call:
	// tag names the signature (a digest of the key, what it signed and its
	// nonce). A tag recorded before is refused with Unauthenticated (a
	// replay); a signature older than the store can still tell, with
	// Unavailable (a SuperNode signs again and retries). Stores that
	// SuperLinks share refuse each other's tags; a store one process owns
	// keeps them in the process, at most LinkLimits.MaxSignatures, and
	// forgets them when it closes.
	UseSignature(ctx context.Context, tag []byte, signedAt, until float64) error
	// LinkNodes returns every node, in the order they registered, with its
	// status as of now.
	LinkNodes(ctx context.Context) ([]*flwr129.NodeInfo, error)

	// CreateLinkRun stores the FAB (once per content: its hash is its key), a
	// pending run of it and the run's empty ServerApp context, and returns
	// the run's id, random, non-zero. Within LinkLimits.MaxActiveRuns and
	// MaxFabBytes, else a LinkLimitError.
	CreateLinkRun(ctx context.Context, r NewRun) (uint64, error)
	// Run returns one run (NotFound when unknown). Runs whose app token
	// expired are failed first, as in every method that reads a run.
	Run(ctx context.Context, runID uint64) (*flwr129.Run, error)
	// LinkRuns returns the runs of the given statuses (all when none is
	// given), most recently created first, at most limit (all when
	// limit <= 0).
	LinkRuns(ctx context.Context, limit int, statuses ...string) ([]*flwr129.Run, error)
	// Fab returns a stored FAB; NotFound when none has that hash.
	Fab(ctx context.Context, hash string) (*flwr129.Fab, error)
	// UpdateRunStatus moves a run to a new status along Flower's
	// transitions (pending -> starting -> running -> finished, or to
	// finished from any status but with a sub-status other than
	// completed before running). PermissionDenied when the run is
	// finished, FailedPrecondition for another invalid transition. A run
	// that finishes loses its token, its messages and the objects only it
	// used.
	UpdateRunStatus(ctx context.Context, runID uint64, s *flwr129.RunStatus) error
	// StopRun finishes a run as stopped (see UpdateRunStatus) and reports
	// whether it was running before; FailedPrecondition when it is
	// finished already.
	StopRun(ctx context.Context, runID uint64) (bool, error)

	// RequestToken gives a pending run without a token a new token and
	// moves it to starting; "" for any other run (a SuperExec asks for
	// every run it was told of, and another may have been quicker).
	RequestToken(ctx context.Context, runID uint64) (string, error)
	// RunOfToken returns the run whose live token this is; false when
	// there is none.
	RunOfToken(ctx context.Context, token string) (uint64, bool, error)
	// AppHeartbeat keeps a token alive for HeartbeatPatience default
	// intervals; false for an unknown token.
	AppHeartbeat(ctx context.Context, token string) (bool, error)
	// StartApp moves a starting run to running and returns what its
	// ServerApp starts from: its context, the run and its FAB. For a
	// running run it returns them again, changing nothing: its ServerApp
	// asks again when the response was lost (a SuperLink killed while
	// answering). FailedPrecondition when the run cannot start.
	StartApp(ctx context.Context, runID uint64) (*flwr129.Context, *flwr129.Run, *flwr129.Fab, error)
	// SetAppContext replaces a running run's ServerApp context.
	SetAppContext(ctx context.Context, runID uint64, c *flwr129.Context) error
	// PushLogs appends ServerApp output to a run's log, stamped with the
	// time, in entries of at most MaxLogEntry bytes (cut between
	// characters).
	PushLogs(ctx context.Context, runID uint64, text string) error
	// Logs returns the log of a run written after the stamp after
	// (seconds since the epoch), whole entries of at most max bytes in all
	// (at least one entry; all when max <= 0), the stamp of the last one
	// returned (0 when none), and whether the run is finished with
	// nothing after them (no more will come).
	Logs(ctx context.Context, runID uint64, after float64, max int) (text string, latest float64, finished bool, err error)

	// OnlineNodes returns the ids of the nodes online now, for a running
	// run.
	OnlineNodes(ctx context.Context, runID uint64) ([]uint64, error)
	// PushInstructions stores the ServerApp's messages of a running run,
	// each with its object tree, all or none: malformed ones fail the call
	// with InvalidArgument. A message to a node that is unknown or
	// unregistered is not stored and gets the id "", as in Flower. It
	// returns the ids and the objects still to push, which the ServerApp
	// owes (see LinkLimits).
	PushInstructions(ctx context.Context, runID uint64, msgs []*flwr129.Message, trees []*flwr129.ObjectTree) (ids, objectsToPush []string, err error)
	// PullInstruction hands at most one message to the node: one addressed
	// to it, not delivered before, not expired, whose objects are all
	// pushed; it is marked delivered, so that no LinkState on the same
	// store hands it out again, with one exception, as State.PullTaskIns:
	// a store on a database hands a message without reply again to the
	// same node when the LinkState that delivered it is gone (closed or
	// died), or when its delivery's commit failed with the connection. A
	// Flower 1.29.0 SuperNode pulls only when it holds no message, so it
	// did not get that one.
	PullInstruction(ctx context.Context, nodeID uint64) (*flwr129.Message, *flwr129.ObjectTree, error)
	// PushReplies stores a node's replies, each with its object tree, all
	// or none, and returns their ids and the objects still to push, which
	// the node owes: within LinkLimits.MaxPendingPerNode and
	// MaxPendingPerRun, else a LinkLimitError. A reply must answer a
	// message sent to that node, in a running run, whose reply
	// PullReplies has not handed out (NotFound, as for a message
	// forgotten). runtime is the ClientApp's time in seconds, added to the
	// run.
	PushReplies(ctx context.Context, nodeID uint64, msgs []*flwr129.Message, trees []*flwr129.ObjectTree, runtime float64) (ids, objectsToPush []string, err error)
	// PullReplies returns, for the ServerApp of a running run, the replies
	// to the given message ids that have come, or are made up as Flower
	// makes them up (the message is unknown or expired, its node went
	// offline, the reply expired), each with its object tree. A reply
	// handed out releases its instruction's objects and is kept, with its
	// instruction, until the run's next PullReplies that does not ask for
	// it (the ServerApp has it then): asked again before that, it is
	// handed out again, so that a ServerApp whose response was lost (a
	// SuperLink killed while answering) gets it when it retries.
	PullReplies(ctx context.Context, runID uint64, messageIDs []string) ([]*flwr129.Message, []*flwr129.ObjectTree, error)

	// PushObject stores the content of an object of a running run that
	// nodeID owes there (a message it pushed names it): its id must be
	// the SHA-256 of content and content a Flower object whose children
	// are those of the tree. An object stored already is answered true
	// and not stored again. A node with no message in the run gets
	// PermissionDenied, an object it does not owe NotFound, and a push
	// past LinkLimits.MaxPendingBytesPerNode a LinkLimitError; each stores
	// nothing. A node other than SuperLinkNodeID pushes to the Fleet side:
	// its traffic counts for the run. It returns whether the object is
	// stored now.
	PushObject(ctx context.Context, runID, nodeID uint64, id string, content []byte) (bool, error)
	// PullObject returns an object of a running run: found is false when
	// the run has no such object, available false when its content has not
	// been pushed yet. A node other than SuperLinkNodeID with no message
	// in the run gets PermissionDenied.
	PullObject(ctx context.Context, runID, nodeID uint64, id string) (content []byte, found, available bool, err error)
	// ConfirmMessageReceived forgets a message's object and the objects
	// below it that nothing else holds. A node other than SuperLinkNodeID
	// confirms only a message sent to it (else PermissionDenied).
	ConfirmMessageReceived(ctx context.Context, runID, nodeID uint64, messageID string) error

	// LinkStats counts what the store holds, for metrics: cheap.
	LinkStats(ctx context.Context) (LinkStats, error)
}

// NewRun is what CreateLinkRun stores.
type NewRun struct {
	FabID, FabVersion string
	Fab               *flwr129.Fab // Fab.HashStr is the SHA-256 of Content
	OverrideConfig    map[string]*flwr129.Scalar
	Federation        string
	FlwrAID           string
	RunType           string
}

// LinkStats counts what a LinkState holds.
type LinkStats struct {
	Nodes, NodesOnline int
	Runs               map[string]int // by status
	Messages           int            // instructions and replies held
	Objects            int
	ObjectBytes        int64
}

// Flower 1.29.0's constants (py/flwr/common/constant.py).
const (
	// SuperLinkNodeID is the node id of the SuperLink (and the ServerApp)
	// in messages.
	SuperLinkNodeID = 1
	// HeartbeatDefaultInterval is what SuperNodes and ServerApps send.
	HeartbeatDefaultInterval = 30
	// HeartbeatMinInterval and HeartbeatMaxInterval bound a node's
	// heartbeat interval.
	HeartbeatMinInterval = 10
	HeartbeatMaxInterval = 1800
	// HeartbeatPatience is how many intervals a node or app stays alive
	// without a heartbeat.
	HeartbeatPatience = 2
	// MessageTTLTolerance is the float slack in a reply's TTL check.
	MessageTTLTolerance = 0.1
	// MinMessageCreatedAt is the earliest metadata.created_at Flower accepts
	// (2025-02-28).
	MinMessageCreatedAt = 1740700800.0
	// FabMaxSize is the largest FAB StartRun takes: 10 MB.
	FabMaxSize = 10 * 1024 * 1024
	// TokenHexLength is the length of an app token: 128 random bytes, hex.
	TokenHexLength = 256
	// MaxLogEntry is the largest entry of a run's log (PushLogs): 64 KiB.
	MaxLogEntry = 64 << 10
)

// Run statuses and sub-statuses (Flower's Status and SubStatus).
const (
	StatusPending  = "pending"
	StatusStarting = "starting"
	StatusRunning  = "running"
	StatusFinished = "finished"

	SubStatusCompleted = "completed"
	SubStatusFailed    = "failed"
	SubStatusStopped   = "stopped"
)

// Node statuses (Flower's NodeStatus).
const (
	NodeRegistered   = "registered"
	NodeOnline       = "online"
	NodeOffline      = "offline"
	NodeUnregistered = "unregistered"
)
