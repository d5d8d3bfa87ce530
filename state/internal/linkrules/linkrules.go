// Package linkrules holds what every implementation of state.LinkState
// decides alike, so that they answer a request word for word the same:
// Flower 1.29.0's object format and ids, object trees, the validation of
// messages, run status transitions, and the replies the SuperLink makes up.
package linkrules

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
	"github.com/sepal-fl/sepal/state"
)

// Object is pushed content, hashed and parsed once (PrepareObject), so
// that a store can do that work before its lock or transaction and use
// the hash as the content's key.
type Object struct {
	ID       string
	Sum      [sha256.Size]byte // the SHA-256 of the content
	children []string
	err      error // of the hash or the parse, in Check's words
}

// PrepareObject hashes and parses content pushed as object id.
func PrepareObject(id string, content []byte) Object {
	o := Object{ID: id, Sum: sha256.Sum256(content)}
	if got := hex.EncodeToString(o.Sum[:]); got != id {
		o.err = status.Errorf(codes.FailedPrecondition, "object %s: its bytes hash to %s: an object's id is the SHA-256 of its bytes", id, got)
		return o
	}
	_, children, err := inflatable.Parse(content)
	if err != nil {
		o.err = status.Errorf(codes.FailedPrecondition, "object %s has an unexpected structure: %v", id, err)
		return o
	}
	o.children = children
	return o
}

// Valid reports whether the content hashes to its id and parses as an
// object (what Check checks besides its children).
func (o Object) Valid() bool { return o.err == nil }

// Check checks the prepared content against its id and against the
// children the object's tree gave it; the error is a FailedPrecondition
// status (Flower's code for content that is not what it should be).
func (o Object) Check(treeChildren []string) error {
	if o.err != nil {
		return o.err
	}
	if !sameSet(o.children, treeChildren) {
		return status.Errorf(codes.FailedPrecondition, "object %s names children %v, its message's object tree gave it %v", o.ID, o.children, treeChildren)
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// TreeNode is one node of a checked tree, in post order (children before
// their parents).
type TreeNode struct {
	ID       string
	Children []string
}

// FlattenTree checks a message's object tree (its shape within
// state.CheckTreeShape's bounds, ids well formed, one id never given two
// different sets of children, its root the message's id) and returns its
// nodes in post order, each id once. The error is an InvalidArgument
// status.
func FlattenTree(tree *flwr129.ObjectTree, messageID string) ([]TreeNode, error) {
	if err := state.CheckTreeShape(tree); err != nil {
		return nil, err
	}
	if tree.GetObjectId() != messageID {
		return nil, status.Errorf(codes.InvalidArgument, "the object tree's root %.80q is not the message's id %.80q", tree.GetObjectId(), messageID)
	}
	var out []TreeNode
	seen := map[string][]string{}
	var walk func(t *flwr129.ObjectTree) error
	walk = func(t *flwr129.ObjectTree) error {
		if !inflatable.ValidID(t.GetObjectId()) {
			return status.Errorf(codes.InvalidArgument, "object id %.80q is not a SHA-256 hex digest", t.GetObjectId())
		}
		kids := make([]string, 0, len(t.GetChildren()))
		for _, c := range t.GetChildren() {
			if err := walk(c); err != nil {
				return err
			}
			kids = append(kids, c.GetObjectId())
		}
		if prev, ok := seen[t.GetObjectId()]; ok {
			if !sameSet(prev, kids) {
				return status.Errorf(codes.InvalidArgument, "object %s appears twice in the tree with different children", t.GetObjectId())
			}
			return nil
		}
		seen[t.GetObjectId()] = kids
		out = append(out, TreeNode{ID: t.GetObjectId(), Children: kids})
		return nil
	}
	if err := walk(tree); err != nil {
		return nil, err
	}
	return out, nil
}

// Tree builds the ObjectTree of id from children, the children of each
// object held.
func Tree(id string, children func(string) []string) *flwr129.ObjectTree {
	t := &flwr129.ObjectTree{ObjectId: id}
	for _, c := range children(id) {
		t.Children = append(t.Children, Tree(c, children))
	}
	return t
}

// CheckMessage validates a message as Flower's validate_message does
// (metadata complete, created after 2025-02-28 and not expired, either
// content or error), for an instruction from the ServerApp (reply false:
// from SuperLinkNodeID to a node) or a reply from a node (to
// SuperLinkNodeID). now is seconds since the epoch. The error is an
// InvalidArgument status naming every problem.
func CheckMessage(m *flwr129.Message, reply bool, now float64) error {
	md := m.GetMetadata()
	var errs []string
	if md == nil {
		return status.Error(codes.InvalidArgument, "malformed message: no metadata")
	}
	if !inflatable.ValidID(md.GetMessageId()) {
		errs = append(errs, "`metadata.message_id` is not the message's object id")
	}
	if c := md.GetCreatedAt(); math.IsNaN(c) || c < state.MinMessageCreatedAt {
		errs = append(errs, "`metadata.created_at` must be the unix timestamp in seconds when the message was created")
	}
	if t := md.GetTtl(); !(t > 0) || math.IsInf(t, 0) {
		errs = append(errs, "`metadata.ttl` must be higher than zero")
	} else if md.GetCreatedAt()+t <= now {
		errs = append(errs, "Message TTL has expired")
	}
	if md.GetSrcNodeId() == 0 {
		errs = append(errs, "`metadata.src_node_id` is not set.")
	}
	if md.GetDstNodeId() == 0 {
		errs = append(errs, "`metadata.dst_node_id` is not set.")
	}
	if md.GetMessageType() == "" {
		errs = append(errs, "`metadata.message_type` MUST be set")
	}
	if (m.GetContent() != nil) == (m.GetError() != nil) {
		errs = append(errs, "Either message `content` or `error` MUST be set (but not both)")
	}
	if !reply {
		if md.GetReplyToMessageId() != "" {
			errs = append(errs, "`metadata.reply_to_message_id` MUST not be set.")
		}
		if md.GetSrcNodeId() != state.SuperLinkNodeID {
			errs = append(errs, "`metadata.src_node_id` is not 1 (SuperLink node ID)")
		}
		if md.GetDstNodeId() == state.SuperLinkNodeID {
			errs = append(errs, "`metadata.dst_node_id` is 1 (SuperLink node ID)")
		}
	} else {
		if md.GetReplyToMessageId() == "" {
			errs = append(errs, "`metadata.reply_to_message_id` MUST be set.")
		}
		if md.GetSrcNodeId() == state.SuperLinkNodeID {
			errs = append(errs, "`metadata.src_node_id` is 1 (SuperLink node ID)")
		}
		if md.GetDstNodeId() != state.SuperLinkNodeID {
			errs = append(errs, "`metadata.dst_node_id` is not 1 (SuperLink node ID)")
		}
	}
	if len(errs) > 0 {
		return status.Errorf(codes.InvalidArgument, "malformed message: %s", strings.Join(errs, ", "))
	}
	return nil
}

// Expired reports whether a message's TTL ran out by now (Flower's
// message_ttl_has_expired).
func Expired(md *flwr129.Metadata, now float64) bool {
	return md.GetCreatedAt()+md.GetTtl() < now
}

// CheckTransition returns nil when a run may move from cur to next
// (Flower's is_valid_transition and sub-status rules), else a status
// error: PermissionDenied from a finished run (Flower's "Run is
// finished."), FailedPrecondition otherwise.
func CheckTransition(cur, next *flwr129.RunStatus) error {
	if cur.GetStatus() == state.StatusFinished {
		return status.Error(codes.PermissionDenied, AbortMessage(cur))
	}
	ok := false
	switch {
	case next.GetStatus() == state.StatusFinished:
		switch next.GetSubStatus() {
		case state.SubStatusCompleted:
			ok = cur.GetStatus() == state.StatusRunning
		case state.SubStatusFailed, state.SubStatusStopped:
			ok = true
		}
	case next.GetSubStatus() != "":
	case cur.GetStatus() == state.StatusPending:
		ok = next.GetStatus() == state.StatusStarting
	case cur.GetStatus() == state.StatusStarting:
		ok = next.GetStatus() == state.StatusRunning
	}
	if !ok {
		return status.Errorf(codes.FailedPrecondition, "invalid run status transition from %q to %q (sub-status %q)", cur.GetStatus(), next.GetStatus(), next.GetSubStatus())
	}
	return nil
}

// AbortMessage is Flower's message for a call on a run that is not
// running (check_abort).
func AbortMessage(s *flwr129.RunStatus) string {
	msg := map[string]string{
		state.StatusPending:  "Run is pending.",
		state.StatusStarting: "Run is starting.",
		state.StatusRunning:  "Run is running.",
		state.StatusFinished: "Run is finished.",
	}[s.GetStatus()]
	if s.GetSubStatus() == state.SubStatusStopped {
		msg += " Stopped by user."
	}
	return msg
}

// RequireRunning returns nil for a running run, else PermissionDenied with
// Flower's message.
func RequireRunning(s *flwr129.RunStatus) error {
	if s.GetStatus() == state.StatusRunning {
		return nil
	}
	return status.Error(codes.PermissionDenied, AbortMessage(s))
}

// Error codes of the replies the SuperLink makes up (Flower's ErrorCode).
const (
	ErrMessageUnavailable      = 3
	ErrReplyMessageUnavailable = 4
	ErrNodeUnavailable         = 5
)

// Reasons of the made-up replies, Flower's words.
const (
	ReasonMessageUnavailable = "Error: Message Unavailable - The requested message could not be found in the " +
		"database. It may have expired due to its TTL, been deleted because the " +
		"destination SuperNode was removed from the federation, or never existed."
	ReasonReplyMessageUnavailable = "Error: Reply Message Unavailable - The reply message has expired."
	ReasonNodeUnavailable         = "Error: Node Unavailable — The destination node failed to report a heartbeat " +
		"within 2 × its expected interval."
)

// MadeUpReply returns the error reply the SuperLink makes up for an
// instruction (ins; nil when the instruction is unknown or expired, then
// reply_to names insID) and its object bytes, as Flower deflates a
// Message: its id (metadata.message_id) is the SHA-256 of those bytes.
func MadeUpReply(ins *flwr129.Metadata, insID string, code int64, reason string, now float64) (*flwr129.Message, []byte) {
	md := &flwr129.Metadata{
		SrcNodeId:        state.SuperLinkNodeID,
		DstNodeId:        state.SuperLinkNodeID,
		ReplyToMessageId: insID,
		MessageType:      "system",
		CreatedAt:        now,
	}
	if ins != nil {
		md.RunId = ins.GetRunId()
		md.GroupId = ins.GetGroupId()
		md.MessageType = ins.GetMessageType()
		md.Ttl = max(ins.GetTtl()-(now-ins.GetCreatedAt()), 0)
	}
	m := &flwr129.Message{Metadata: md, Error: &flwr129.Error{Code: code, Reason: reason}}
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err) // a message of plain fields always marshals
	}
	content := inflatable.Encode("Message", nil, body)
	md.MessageId = inflatable.ID(content)
	return m, content
}

// CheckPairs checks that a push of messages holds some, each with its
// object tree.
func CheckPairs(msgs []*flwr129.Message, trees []*flwr129.ObjectTree) error {
	if len(msgs) == 0 {
		return status.Error(codes.InvalidArgument, "Malformed PushMessages: `messages_list` must not be empty")
	}
	if len(msgs) != len(trees) {
		return status.Errorf(codes.InvalidArgument, "Malformed PushMessages: %d messages and %d object trees: send one tree per message", len(msgs), len(trees))
	}
	return nil
}

// CheckHeartbeatInterval refuses a node's heartbeat interval out of
// Flower's bounds, in Flower's words (InvalidArgument).
func CheckHeartbeatInterval(interval float64) error {
	if !(interval >= state.HeartbeatMinInterval && interval <= state.HeartbeatMaxInterval) {
		return status.Errorf(codes.InvalidArgument, "Invalid heartbeat interval: %v is out of bounds [%d, %d]", interval, state.HeartbeatMinInterval, state.HeartbeatMaxInterval)
	}
	return nil
}

// RandomID reads a random uint64 from r that is neither 0 nor one of
// exclude: the ids of nodes and runs.
func RandomID(r io.Reader, exclude ...uint64) (uint64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, status.Errorf(codes.Internal, "reading random bytes: %v", err)
		}
		v := binary.LittleEndian.Uint64(b[:])
		if v != 0 && !slices.Contains(exclude, v) {
			return v, nil
		}
	}
}

// RandomToken returns a new app token: state.TokenHexLength hex digits.
func RandomToken(r io.Reader) (string, error) {
	b := make([]byte, state.TokenHexLength/2)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", status.Errorf(codes.Internal, "reading random bytes: %v", err)
	}
	return hex.EncodeToString(b), nil
}

// The account of Flower's open-source build (no account plugin): every
// node and run belongs to it.
const (
	NoopFlwrAID     = "<id:none>"
	NoopAccountName = "none"
)

// MaxLogBytes is how much ServerApp output a run keeps; older output is
// dropped first.
const MaxLogBytes = 16 << 20

// HeartbeatFailed is the details of a run whose ServerApp stopped sending
// heartbeats (its token expired), Flower's words.
const HeartbeatFailed = "No heartbeat received from the run."

// ISOTime formats t as Python's datetime.isoformat of an aware UTC time,
// as Flower writes its times: 2026-04-01T12:00:00.123456+00:00.
func ISOTime(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05+00:00")
	}
	return t.Format("2006-01-02T15:04:05.000000+00:00")
}

// Seconds is t as seconds since the epoch, as Python's timestamp().
func Seconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// ISOSeconds is ISOTime of sec seconds since the epoch.
func ISOSeconds(sec float64) string { return ISOTime(time.Unix(0, int64(sec*1e9))) }

// LogStampStep is the least step between the stamps of a run's log
// entries: far more than the 1 µs a reader (flwr log) adds to the last
// stamp it saw before it asks for what follows, and than a stamp's
// rounding (a float64 of about 1.8e9 seconds is exact to 0.24 µs).
const LogStampStep = 1e-5

// SplitLog cuts ServerApp output into log entries of at most
// state.MaxLogEntry bytes, between characters.
func SplitLog(text string) []string {
	var out []string
	for len(text) > state.MaxLogEntry {
		n := state.MaxLogEntry
		for n > 0 && !utf8.RuneStart(text[n]) {
			n--
		}
		if n == 0 {
			n = state.MaxLogEntry
		}
		out = append(out, text[:n])
		text = text[n:]
	}
	return append(out, text)
}

// CheckOwed refuses, with a state.LinkLimitError, replies of node that
// add n objects to owe when it owes nodeOwed objects: past
// LinkLimits.MaxPendingPerNode. The ServerApp (state.SuperLinkNodeID) is
// not bound.
func CheckOwed(node uint64, n, nodeOwed int, l state.LinkLimits) error {
	if node == state.SuperLinkNodeID || nodeOwed+n <= l.MaxPendingPerNode {
		return nil
	}
	return &state.LinkLimitError{Limit: state.LimitPendingPerNode, Max: int64(l.MaxPendingPerNode),
		Msg: fmt.Sprintf("PushMessages: node %d owes %d objects it has not pushed, and these messages name %d more; push the objects of its messages first", node, nodeOwed, n)}
}

// TreesObjects counts the objects of trees, as state.TreeObjects, for
// CheckOwed's check before they are looked at.
func TreesObjects(trees []*flwr129.ObjectTree) int {
	n := 0
	for _, t := range trees {
		n += state.TreeObjects(t)
	}
	return n
}

// RunOwedError is the refusal of replies of node that would take what
// the nodes of run owe past LinkLimits.MaxPendingPerRun, when no node of
// the run owes more than node would (see MakeRunRoom).
func RunOwedError(node, run uint64, n, runOwed int, l state.LinkLimits) error {
	return &state.LinkLimitError{Limit: state.LimitPendingPerRun, Max: int64(l.MaxPendingPerRun),
		Msg: fmt.Sprintf("PushMessages: the nodes of run %d owe %d objects they have not pushed, and the messages of node %d name %d more; retry once they are pushed", run, runOwed, node, n)}
}

// PendingBytesError is the refusal of a push that takes what node pushed
// into run while it owes objects there past LinkLimits.
func PendingBytesError(node, run uint64, pushed, n int64, l state.LinkLimits) error {
	return &state.LinkLimitError{Limit: state.LimitPendingBytes, Max: l.MaxPendingBytesPerNode,
		Msg: fmt.Sprintf("PushObject: node %d pushed %d bytes into run %d while its messages there are not complete, and this object is %d more", node, pushed, run, n)}
}

// NotInRun is the refusal of a node's object call in a run that sent it
// no message.
func NotInRun(node, run uint64) error {
	return status.Errorf(codes.PermissionDenied, "node %d has no message in run %d: a node pushes, pulls and confirms the objects of its own messages only", node, run)
}

// NotOwed is the refusal of a push of an object the pusher does not owe.
func NotOwed(id string, node, run uint64) error {
	return status.Errorf(codes.NotFound, "object %.80s is not one that node %d owes in run %d: push the message that names it first, then its objects", id, node, run)
}

// NotAddressed is the refusal of a node's confirmation of a message not
// sent to it.
func NotAddressed(msg string, node, run uint64) error {
	return status.Errorf(codes.PermissionDenied, "message %.80s is not one run %d sent to node %d: a node confirms its own messages only", msg, run, node)
}
