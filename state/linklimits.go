package state

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// Bounds of a message's object tree, far above what Flower sends (a
// message is a tree of depth 5: Message, RecordDict, ArrayRecord, Array,
// ArrayChunk; a 1 GiB model in 5 MiB chunks is about 200 objects), so
// that a peer cannot make a SuperLink walk or hold an unbounded tree.
const (
	// MaxTreeDepth bounds the depth of a message's object tree.
	MaxTreeDepth = 16
	// MaxTreeObjects bounds the objects one message's tree names,
	// counting an object named twice twice: 16384 chunks of 5 MiB are 80
	// GiB.
	MaxTreeObjects = 1 << 14
	// MaxTreeChildren bounds the children one object names.
	MaxTreeChildren = 1 << 14
)

// TreeObjects counts the objects of a tree, an object named twice twice,
// up to MaxTreeObjects+1: enough to tell a tree past the bound. It holds
// at most MaxTreeObjects+1 objects to visit, however wide the tree.
func TreeObjects(tree *flwr129.ObjectTree) int {
	n := 0
	stack := []*flwr129.ObjectTree{tree}
	for len(stack) > 0 {
		t := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n++
		kids := t.GetChildren()
		if n+len(stack)+len(kids) > MaxTreeObjects {
			return MaxTreeObjects + 1
		}
		stack = append(stack, kids...)
	}
	return n
}

// CheckTreeShape checks the shape of a message's object tree before
// anything looks at its ids: at most MaxTreeDepth deep, MaxTreeObjects
// objects and MaxTreeChildren children per object. It walks the tree
// without recursion and stops at the first bound passed, so that what it
// costs is bounded by the bounds, not by the tree. The error is an
// InvalidArgument status naming the bound.
func CheckTreeShape(tree *flwr129.ObjectTree) error {
	if tree == nil {
		return status.Error(codes.InvalidArgument, "a message has no object tree: send one per message")
	}
	type item struct {
		t     *flwr129.ObjectTree
		depth int
	}
	stack := []item{{tree, 1}}
	count := 0
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		count++
		switch kids := it.t.GetChildren(); {
		case count > MaxTreeObjects:
			return status.Errorf(codes.InvalidArgument, "object tree too large: a message's tree names at most %d objects", MaxTreeObjects)
		case it.depth > MaxTreeDepth:
			return status.Errorf(codes.InvalidArgument, "object tree too deep: a message's tree is at most %d levels deep", MaxTreeDepth)
		case len(kids) > MaxTreeChildren:
			return status.Errorf(codes.InvalidArgument, "object %.80s names %d children: an object names at most %d", it.t.GetObjectId(), len(kids), MaxTreeChildren)
		default:
			if count+len(stack)+len(kids) > MaxTreeObjects {
				return status.Errorf(codes.InvalidArgument, "object tree too large: a message's tree names at most %d objects", MaxTreeObjects)
			}
			for _, k := range kids {
				stack = append(stack, item{k, it.depth + 1})
			}
		}
	}
	return nil
}

// Defaults of LinkLimits.
const (
	// DefaultMaxLinkNodes is the default of LinkLimits.MaxNodes: the
	// default of Flower 1.8.0's node limit (--max-nodes).
	DefaultMaxLinkNodes = 10000
	// DefaultMaxUnactivated is the default of LinkLimits.MaxUnactivated.
	DefaultMaxUnactivated = 1000
	// DefaultMaxPendingPerNode is the default of
	// LinkLimits.MaxPendingPerNode: one tree of MaxTreeObjects.
	DefaultMaxPendingPerNode = MaxTreeObjects
	// DefaultMaxPendingPerRun is the default of
	// LinkLimits.MaxPendingPerRun: four trees of MaxTreeObjects.
	DefaultMaxPendingPerRun = 4 * MaxTreeObjects
	// DefaultMaxPendingBytesPerNode is the default of
	// LinkLimits.MaxPendingBytesPerNode: 1 GiB, twice the largest message
	// of Flower 1.8.0.
	DefaultMaxPendingBytesPerNode = 1 << 30
	// DefaultPushTimeout is the default of LinkLimits.PushTimeout.
	DefaultPushTimeout = 5 * time.Minute
	// DefaultMaxSignatures is the default of LinkLimits.MaxSignatures.
	DefaultMaxSignatures = 1 << 18
	// DefaultMaxActiveRuns is the default of LinkLimits.MaxActiveRuns.
	DefaultMaxActiveRuns = 32
	// DefaultMaxFabBytes is the default of LinkLimits.MaxFabBytes: 100
	// FABs of FabMaxSize.
	DefaultMaxFabBytes = 100 * FabMaxSize
)

// LinkLimits bound what peers can make a LinkState hold (Options.Link),
// so that nothing a SuperNode or a flwr command does grows it without
// end. Each is kept in the store, so that SuperLinks sharing one store
// apply them together. The zero value of each field is its default;
// Validate refuses a negative one.
//
// Objects a message names are pending from its push until they are
// pushed: the push answers them as objects_to_push, and only the node
// (or the ServerApp) that pushed a message naming an object may push it
// then.
type LinkLimits struct {
	// MaxNodes bounds the nodes held, of any status. A node that does
	// not fit takes the place of, in this order, the node unregistered the
	// longest ago, the node that registered itself the longest ago and
	// never activated, or the node that registered itself and is offline
	// the longest; when there is none (nodes registered through the
	// Control API are never forgotten), RegisterNode fails with
	// ResourceExhausted. Default DefaultMaxLinkNodes (10000).
	MaxNodes int
	// MaxUnactivated bounds the nodes that registered themselves
	// (RegisterNode with heartbeat interval 0) and never activated:
	// beyond it, the one that registered the longest ago is forgotten. A
	// Flower SuperNode activates right after it registers. Default
	// DefaultMaxUnactivated (1000).
	MaxUnactivated int
	// MaxPendingPerNode bounds the objects one node may owe (pending
	// objects of its replies, over every run; an object owed for two
	// messages counts twice): a push of replies past it fails with
	// ResourceExhausted and stores nothing, and so does one whose trees
	// name more objects than the node may still owe, before they are
	// looked at. The ServerApp is not bound by it. An object owed takes
	// about 500 bytes in memory. Default DefaultMaxPendingPerNode (16384).
	MaxPendingPerNode int
	// MaxPendingPerRun bounds the objects the nodes of one run may owe
	// together (the ServerApp's not counted). A push of replies past it
	// takes the place of the incomplete messages of the node of the run
	// that owes the most, when that node owes more than the one pushing
	// would; otherwise it fails with ResourceExhausted and stores nothing.
	// Default DefaultMaxPendingPerRun (65536).
	MaxPendingPerRun int
	// MaxPendingBytesPerNode bounds the bytes one node may push into a
	// run while it still owes objects there (its messages are not
	// complete): a PushObject past it fails with ResourceExhausted. The
	// ServerApp is not bound by it. Default DefaultMaxPendingBytesPerNode
	// (1 GiB).
	MaxPendingBytesPerNode int64
	// PushTimeout is how long a node (or the ServerApp) that owes objects
	// in a run may push none: then the messages it owes them for are
	// forgotten with their objects (a reply as never sent, an instruction
	// as expired). Default DefaultPushTimeout (5m).
	PushTimeout time.Duration
	// MaxSignatures bounds the node signatures a store that keeps them in
	// its process remembers (see UseSignature): past it, the oldest are
	// forgotten and signatures as old are refused with Unavailable, which
	// a SuperNode answers by signing again. Default DefaultMaxSignatures
	// (262144).
	MaxSignatures int
	// MaxActiveRuns bounds the runs not finished (pending, starting or
	// running): CreateLinkRun past it fails with ResourceExhausted.
	// Default DefaultMaxActiveRuns (32).
	MaxActiveRuns int
	// MaxFabBytes bounds the bytes of the FABs held: a new FAB that does
	// not fit takes the place of FABs that only finished runs use, the
	// oldest first; when they are not enough, CreateLinkRun fails with
	// ResourceExhausted. Default DefaultMaxFabBytes (100 x 10 MB).
	MaxFabBytes int64
}

// WithDefaults returns l with the defaults of its zero fields.
func (l LinkLimits) WithDefaults() LinkLimits {
	l.MaxNodes = cmp.Or(l.MaxNodes, DefaultMaxLinkNodes)
	l.MaxUnactivated = cmp.Or(l.MaxUnactivated, DefaultMaxUnactivated)
	l.MaxPendingPerNode = cmp.Or(l.MaxPendingPerNode, DefaultMaxPendingPerNode)
	l.MaxPendingPerRun = cmp.Or(l.MaxPendingPerRun, DefaultMaxPendingPerRun)
	l.MaxSignatures = cmp.Or(l.MaxSignatures, DefaultMaxSignatures)
	l.MaxActiveRuns = cmp.Or(l.MaxActiveRuns, DefaultMaxActiveRuns)
	l.MaxPendingBytesPerNode = cmp.Or(l.MaxPendingBytesPerNode, DefaultMaxPendingBytesPerNode)
	l.PushTimeout = cmp.Or(l.PushTimeout, DefaultPushTimeout)
	l.MaxFabBytes = cmp.Or(l.MaxFabBytes, DefaultMaxFabBytes)
	return l
}

// Validate returns an error naming the first field that is negative.
func (l LinkLimits) Validate() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxNodes", int64(l.MaxNodes)}, {"MaxUnactivated", int64(l.MaxUnactivated)},
		{"MaxPendingPerNode", int64(l.MaxPendingPerNode)}, {"MaxPendingPerRun", int64(l.MaxPendingPerRun)},
		{"MaxPendingBytesPerNode", l.MaxPendingBytesPerNode}, {"PushTimeout", int64(l.PushTimeout)},
		{"MaxSignatures", int64(l.MaxSignatures)}, {"MaxActiveRuns", int64(l.MaxActiveRuns)}, {"MaxFabBytes", l.MaxFabBytes},
	} {
		if f.v < 0 {
			return fmt.Errorf("LinkLimits.%s is negative (%d)", f.name, f.v)
		}
	}
	return nil
}

// LinkLimitError is the refusal of a call that does not fit a LinkLimits
// bound: a gRPC status error, ResourceExhausted, whose message names the
// bound and what to do.
type LinkLimitError struct {
	// Limit names the bound: one of the Limit* constants.
	Limit string
	// Max is the bound's value.
	Max int64
	// Msg says what did not fit and what to do.
	Msg string
}

// The bounds a LinkLimitError names.
const (
	LimitLinkNodes      = "max_nodes"
	LimitPendingPerNode = "max_pending_objects_per_node"
	LimitPendingPerRun  = "max_pending_objects_per_run"
	LimitPendingBytes   = "max_pending_bytes_per_node"
	LimitActiveRuns     = "max_active_runs"
	LimitFabBytes       = "max_fab_bytes"
)

func (e *LinkLimitError) Error() string {
	return fmt.Sprintf("%s (the SuperLink's limit %s is %d)", e.Msg, e.Limit, e.Max)
}

// GRPCStatus makes the error a gRPC status error.
func (e *LinkLimitError) GRPCStatus() *status.Status {
	return status.New(codes.ResourceExhausted, e.Error())
}

// IsLinkLimit reports whether err is a LinkLimitError, and which.
func IsLinkLimit(err error) (string, bool) {
	var le *LinkLimitError
	if errors.As(err, &le) {
		return le.Limit, true
	}
	return "", false
}
