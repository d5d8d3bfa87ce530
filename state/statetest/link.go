package statetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// LinkOpener opens a state.LinkState over one store; the suite closes
// what it opens when it implements io.Closer.
type LinkOpener func(t *testing.T, c Config) state.LinkState

// LinkOptions describe the state.LinkState implementation under test.
type LinkOptions struct {
	// NewStore makes a new, empty store (removed when t ends) and returns
	// how to open LinkStates over it. Required.
	NewStore func(t *testing.T) LinkOpener
	// Shared says that LinkStates opened over one store share what they
	// commit, at the same time (several SuperLinks on one database) and
	// after one was closed (a restart), as Options.Shared. The suite then
	// also checks restarts, and LinkStates racing on one store.
	Shared bool
	// Crash, if set, ends a LinkState of the store as a killed process
	// would (its connections cut, nothing of Close done); the suite uses
	// it where it differs from Close. Default: Close.
	Crash func(state.LinkState)
	// SignaturesShared says that LinkStates open over one store at once
	// refuse each other's signatures (UseSignature): a store that
	// SuperLinks share. Otherwise the suite checks the bound of a store
	// that keeps them in its process.
	SignaturesShared bool
}

// RunLink runs the conformance suite of state.LinkState (the Flower
// 1.29.0 generation) as subtests of t: nodes by key and their liveness,
// runs and their status, tokens, logs, messages with object trees,
// objects checked on push and released with their run, the replies the
// SuperLink makes up, and bad input refused with nothing stored.
func RunLink(t *testing.T, o LinkOptions) {
	if o.NewStore == nil {
		t.Fatal("LinkOptions.NewStore is required")
	}
	tests := []struct {
		name   string
		fn     func(*testing.T, *linkEnv)
		shared bool
	}{
		{"Nodes", testLinkNodes, false},
		{"RunStatus", testLinkRunStatus, false},
		{"BadFab", testLinkBadFab, false},
		{"TokenExpiry", testLinkTokenExpiry, false},
		{"Logs", testLinkLogs, false},
		{"MessageFlow", testLinkMessageFlow, false},
		{"BadObjects", testLinkBadObjects, false},
		{"BadMessages", testLinkBadMessages, false},
		{"MadeUpReplies", testLinkMadeUpReplies, false},
		{"FinishReleasesObjects", testLinkFinishReleases, false},
		{"LargeObjects", testLinkLargeObjects, false},
		{"SharedObjects", testLinkSharedObjects, false},
		{"Expiry", testLinkExpiry, false},
		{"Concurrent", testLinkConcurrent, false},
		{"Restart", testLinkRestart, true},
		{"RestartRedelivers", testLinkRestartRedelivers, true},
		{"RaceDelivery", testLinkRaceDelivery, true},
		{"ObjectsAcrossStores", testLinkObjectsAcross, true},
		{"LogsAcrossStores", testLinkLogsAcross, true},
		{"TokensAcrossStores", testLinkTokensAcross, true},
		{"NodeLimits", testLinkNodeLimits, false},
		{"OwedObjects", testLinkOwedObjects, false},
		{"OwedLimits", testLinkOwedLimits, false},
		{"PushTimeout", testLinkPushTimeout, false},
		{"RunLimits", testLinkRunLimits, false},
		{"LogChunks", testLinkLogChunks, false},
		{"Signatures", testLinkSignatures, false},
	}
	for _, tc := range tests {
		if tc.shared && !o.Shared {
			continue // needs a store that outlives a LinkState
		}
		t.Run(tc.name, func(t *testing.T) {
			e := &linkEnv{clock: &Clock{}, opener: o.NewStore(t), crash: o.Crash, sigsShared: o.SignaturesShared}
			e.clock.Set(time.Unix(1795638840, 0))
			e.s = e.open(t)
			tc.fn(t, e)
		})
	}
}

type linkEnv struct {
	s          state.LinkState
	clock      *Clock
	opener     LinkOpener
	crash      func(state.LinkState)
	sigsShared bool
}

// open opens another LinkState over the subtest's store, closed when t
// ends.
func (e *linkEnv) open(t *testing.T) state.LinkState {
	t.Helper()
	return e.openWith(t, state.LinkLimits{})
}

// openWith opens another LinkState over the subtest's store with the
// bounds lim, closed when t ends.
func (e *linkEnv) openWith(t *testing.T, lim state.LinkLimits) state.LinkState {
	t.Helper()
	s := e.opener(t, Config{Now: e.clock.Now, Logger: slog.New(slog.DiscardHandler), Link: lim})
	if s == nil {
		t.Fatal("the LinkOpener returned no LinkState")
	}
	if c, ok := s.(io.Closer); ok {
		t.Cleanup(func() { c.Close() })
	}
	return s
}

// close closes s (a restart), or crashes it when crash is set and the
// store knows how.
func (e *linkEnv) close(t *testing.T, s state.LinkState, crash bool) {
	t.Helper()
	if crash && e.crash != nil {
		e.crash(s)
		return
	}
	if c, ok := s.(io.Closer); ok {
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
}

var bg = context.Background()

func (e *linkEnv) now() float64 { return float64(e.clock.Now().UnixNano()) / 1e9 }

func wantCode(t *testing.T, err error, c codes.Code, what string) {
	t.Helper()
	if status.Code(err) != c {
		t.Fatalf("%s: got %v, want %v", what, err, c)
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// onlineNode registers and activates a node.
func (e *linkEnv) onlineNode(t *testing.T, key string) uint64 {
	t.Helper()
	id := must(e.s.RegisterNode(bg, []byte(key), 0))(t)
	if got := must(e.s.ActivateNode(bg, []byte(key), 30))(t); got != id {
		t.Fatalf("ActivateNode = %d, RegisterNode gave %d", got, id)
	}
	return id
}

func testFab(content string) *flwr129.Fab {
	return &flwr129.Fab{HashStr: Hex256([]byte(content)), Content: []byte(content)}
}

// runningRun creates a run and takes it to running, as a SuperExec and
// its ServerApp do.
func (e *linkEnv) runningRun(t *testing.T) (uint64, string) {
	t.Helper()
	id := must(e.s.CreateLinkRun(bg, state.NewRun{FabID: "a/b", FabVersion: "1.0", Fab: testFab("fab"), Federation: "@none/default"}))(t)
	tok := must(e.s.RequestToken(bg, id))(t)
	if len(tok) != state.TokenHexLength {
		t.Fatalf("token %q: want %d hex digits", tok, state.TokenHexLength)
	}
	if _, _, _, err := e.s.StartApp(bg, id); err != nil {
		t.Fatal(err)
	}
	return id, tok
}

func (e *linkEnv) instruction(runID, dst uint64, payload string) FlowerMessage {
	return NewFlowerMessage(&flwr129.Metadata{RunId: runID, SrcNodeId: state.SuperLinkNodeID, DstNodeId: dst,
		GroupId: "1", Ttl: 3600, MessageType: "train", CreatedAt: e.now()}, []byte(payload))
}

func (e *linkEnv) reply(ins FlowerMessage, src uint64, payload string) FlowerMessage {
	md := ins.Message.Metadata
	return NewFlowerMessage(&flwr129.Metadata{RunId: md.RunId, SrcNodeId: src, DstNodeId: state.SuperLinkNodeID,
		ReplyToMessageId: md.MessageId, GroupId: md.GroupId, Ttl: 60, MessageType: md.MessageType, CreatedAt: e.now()}, []byte(payload))
}

func (e *linkEnv) pushObjects(t *testing.T, runID, node uint64, m FlowerMessage, ids []string) {
	t.Helper()
	for _, id := range ids {
		if ok := must(e.s.PushObject(bg, runID, node, id, m.Objects[id]))(t); !ok {
			t.Fatalf("PushObject %s: not stored", id)
		}
	}
}

func testLinkNodes(t *testing.T, e *linkEnv) {
	id := must(e.s.RegisterNode(bg, []byte("key-a"), 0))(t)
	if id == 0 || id == state.SuperLinkNodeID {
		t.Fatalf("node id %d", id)
	}
	_, err := e.s.RegisterNode(bg, []byte("key-a"), 0)
	wantCode(t, err, codes.FailedPrecondition, "RegisterNode of a key in use")
	if got, ok := get2(t)(e.s.NodeOfKey(bg, []byte("key-a"))); !ok || got != id {
		t.Fatalf("NodeOfKey = %d, %v", got, ok)
	}
	_, err = e.s.ActivateNode(bg, []byte("key-a"), 5)
	wantCode(t, err, codes.InvalidArgument, "ActivateNode with a heartbeat interval of 5 s")
	_, err = e.s.ActivateNode(bg, []byte("key-b"), 30)
	wantCode(t, err, codes.FailedPrecondition, "ActivateNode of an unknown key")
	must(e.s.ActivateNode(bg, []byte("key-a"), 30))(t)
	_, err = e.s.ActivateNode(bg, []byte("key-a"), 30)
	wantCode(t, err, codes.FailedPrecondition, "ActivateNode of an online node")

	nodeStatus := func() string {
		ns := must(e.s.LinkNodes(bg))(t)
		if len(ns) != 1 || ns[0].NodeId != id {
			t.Fatalf("Nodes = %v", ns)
		}
		return ns[0].Status
	}
	e.clock.Advance(59 * time.Second)
	if s := nodeStatus(); s != state.NodeOnline {
		t.Fatalf("59 s after activation with 30 s heartbeats: %s, want online", s)
	}
	if ok := must(e.s.NodeHeartbeat(bg, id, 30))(t); !ok {
		t.Fatal("heartbeat refused")
	}
	e.clock.Advance(61 * time.Second)
	if s := nodeStatus(); s != state.NodeOffline {
		t.Fatalf("61 s after a heartbeat of 30 s: %s, want offline (patience 2)", s)
	}
	if ok := must(e.s.NodeHeartbeat(bg, id, 30))(t); !ok || nodeStatus() != state.NodeOnline {
		t.Fatal("a heartbeat does not bring an offline node back")
	}
	noErr(t, e.s.DeactivateNode(bg, id))
	wantCode(t, e.s.DeactivateNode(bg, id), codes.FailedPrecondition, "DeactivateNode of an offline node")
	noErr(t, e.s.UnregisterNode(bg, id))
	wantCode(t, e.s.UnregisterNode(bg, id), codes.NotFound, "UnregisterNode twice")
	if _, ok := get2(t)(e.s.NodeOfKey(bg, []byte("key-a"))); ok {
		t.Fatal("NodeOfKey finds an unregistered node")
	}
	if ok := must(e.s.NodeHeartbeat(bg, id, 30))(t); ok {
		t.Fatal("heartbeat of an unregistered node succeeds")
	}
	if s := nodeStatus(); s != state.NodeUnregistered {
		t.Fatalf("status %s, want unregistered", s)
	}
	_, err = e.s.RegisterNode(bg, []byte("key-a"), 0)
	wantCode(t, err, codes.FailedPrecondition, "RegisterNode of an unregistered node's key")
}

func get2(t *testing.T) func(uint64, bool, error) (uint64, bool) {
	return func(v uint64, ok bool, err error) (uint64, bool) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v, ok
	}
}

func testLinkRunStatus(t *testing.T, e *linkEnv) {
	id := must(e.s.CreateLinkRun(bg, state.NewRun{FabID: "a/b", FabVersion: "1.0", Fab: testFab("fab")}))(t)
	r := must(e.s.Run(bg, id))(t)
	if r.Status.Status != state.StatusPending || r.FabHash != testFab("fab").HashStr || r.PendingAt == "" {
		t.Fatalf("new run %v", r)
	}
	if rs := must(e.s.LinkRuns(bg, 0, state.StatusPending))(t); len(rs) != 1 || rs[0].RunId != id {
		t.Fatalf("pending runs %v", rs)
	}
	if f := must(e.s.Fab(bg, r.FabHash))(t); string(f.Content) != "fab" {
		t.Fatalf("Fab %v", f)
	}
	_, err := e.s.Run(bg, id+1)
	wantCode(t, err, codes.NotFound, "Run of an unknown id")
	err = e.s.UpdateRunStatus(bg, id, &flwr129.RunStatus{Status: state.StatusRunning})
	wantCode(t, err, codes.FailedPrecondition, "pending -> running")
	_, _, _, err = e.s.StartApp(bg, id)
	wantCode(t, err, codes.FailedPrecondition, "StartApp of a pending run")
	tok := must(e.s.RequestToken(bg, id))(t)
	if again := must(e.s.RequestToken(bg, id))(t); again != "" {
		t.Fatal("a second token for one run")
	}
	if got, ok := get2(t)(e.s.RunOfToken(bg, tok)); !ok || got != id {
		t.Fatalf("RunOfToken = %d %v", got, ok)
	}
	if _, ok := get2(t)(e.s.RunOfToken(bg, strings.Repeat("0", 256))); ok {
		t.Fatal("an unknown token names a run")
	}
	c, run, fab, err := e.s.StartApp(bg, id)
	if err != nil || c.RunId != id || c.NodeId != state.SuperLinkNodeID || run.Status.Status != state.StatusRunning || string(fab.Content) != "fab" {
		t.Fatalf("StartApp = %v %v %v %v", c, run, fab, err)
	}
	// Again, as a ServerApp whose response was lost (its SuperLink killed)
	// asks again: the same inputs, the run untouched.
	e.clock.Advance(time.Second)
	c2, run2, fab2, err := e.s.StartApp(bg, id)
	if err != nil || !proto.Equal(c2, c) || !proto.Equal(run2, run) || string(fab2.Content) != "fab" {
		t.Fatalf("StartApp of a running run = %v %v %v %v, want what the first call gave: %v %v", c2, run2, fab2, err, c, run)
	}
	err = e.s.UpdateRunStatus(bg, id, &flwr129.RunStatus{Status: state.StatusFinished})
	wantCode(t, err, codes.FailedPrecondition, "finished without a sub-status")
	noErr(t, e.s.UpdateRunStatus(bg, id, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusCompleted}))
	if _, ok := get2(t)(e.s.RunOfToken(bg, tok)); ok {
		t.Fatal("a finished run keeps its token")
	}
	err = e.s.UpdateRunStatus(bg, id, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusFailed})
	wantCode(t, err, codes.PermissionDenied, "update of a finished run")
	_, err = e.s.StopRun(bg, id)
	wantCode(t, err, codes.FailedPrecondition, "StopRun of a finished run")
	_, _, _, err = e.s.StartApp(bg, id)
	wantCode(t, err, codes.FailedPrecondition, "StartApp of a finished run")

	id2 := must(e.s.CreateLinkRun(bg, state.NewRun{Fab: testFab("fab")}))(t)
	if ok := must(e.s.StopRun(bg, id2))(t); !ok {
		t.Fatal("StopRun of a pending run")
	}
	if r := must(e.s.Run(bg, id2))(t); r.Status.SubStatus != state.SubStatusStopped || r.FinishedAt == "" {
		t.Fatalf("stopped run %v", r)
	}
	if rs := must(e.s.LinkRuns(bg, 1))(t); len(rs) != 1 || rs[0].RunId != id2 {
		t.Fatalf("LinkRuns(limit 1) = %v, want the newest", rs)
	}
}

func testLinkBadFab(t *testing.T, e *linkEnv) {
	f := testFab("fab")
	f.Content = []byte("other")
	_, err := e.s.CreateLinkRun(bg, state.NewRun{Fab: f})
	wantCode(t, err, codes.InvalidArgument, "CreateLinkRun with a FAB whose hash differs")
	if _, err := e.s.Fab(bg, f.HashStr); status.Code(err) != codes.NotFound {
		t.Fatalf("the FAB was stored: %v", err)
	}
	if rs := must(e.s.LinkRuns(bg, 0))(t); len(rs) != 0 {
		t.Fatalf("a run was stored: %v", rs)
	}
}

func testLinkTokenExpiry(t *testing.T, e *linkEnv) {
	id, tok := e.runningRun(t)
	e.clock.Advance(25 * time.Second)
	if ok := must(e.s.AppHeartbeat(bg, tok))(t); !ok {
		t.Fatal("heartbeat refused")
	}
	e.clock.Advance(59 * time.Second) // patience 2 x 30 s after the heartbeat
	if r := must(e.s.Run(bg, id))(t); r.Status.Status != state.StatusRunning {
		t.Fatalf("run %v before its token expired", r.Status)
	}
	e.clock.Advance(2 * time.Second)
	r := must(e.s.Run(bg, id))(t)
	if r.Status.Status != state.StatusFinished || r.Status.SubStatus != state.SubStatusFailed || r.Status.Details != "No heartbeat received from the run." {
		t.Fatalf("run %v after its ServerApp went silent", r.Status)
	}
	if ok := must(e.s.AppHeartbeat(bg, tok))(t); ok {
		t.Fatal("an expired token takes heartbeats")
	}
}

func testLinkLogs(t *testing.T, e *linkEnv) {
	id, _ := e.runningRun(t)
	noErr(t, e.s.PushLogs(bg, id, "one\n"))
	e.clock.Advance(time.Second)
	noErr(t, e.s.PushLogs(bg, id, "two\n"))
	text, latest, done, err := e.s.Logs(bg, id, 0, 0)
	if err != nil || text != "one\ntwo\n" || done || latest < e.now()-0.001 {
		t.Fatalf("Logs = %q %v %v %v", text, latest, done, err)
	}
	text, _, _, _ = e.s.Logs(bg, id, latest, 0)
	if text != "" {
		t.Fatalf("Logs after the latest stamp = %q", text)
	}
	noErr(t, e.s.PushLogs(bg, id, "three\n"))
	if text, _, _, _ = e.s.Logs(bg, id, latest, 0); text != "three\n" {
		t.Fatalf("Logs after %v = %q", latest, text)
	}
	must(e.s.StopRun(bg, id))(t)
	if _, _, done, _ := e.s.Logs(bg, id, 0, 0); !done {
		t.Fatal("Logs of a stopped run: not finished")
	}
	wantCode(t, e.s.PushLogs(bg, id+1, "x"), codes.NotFound, "PushLogs of an unknown run")
}

func testLinkMessageFlow(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	if ns := must(e.s.OnlineNodes(bg, runID))(t); len(ns) != 1 || ns[0] != node {
		t.Fatalf("OnlineNodes = %v", ns)
	}
	ins := e.instruction(runID, node, "weights")
	ids, push, err := e.s.PushInstructions(bg, runID, []*flwr129.Message{ins.Message}, []*flwr129.ObjectTree{ins.Tree})
	if err != nil || len(ids) != 1 || ids[0] != ins.Message.Metadata.MessageId || len(push) != 3 {
		t.Fatalf("PushInstructions = %v %v %v", ids, push, err)
	}
	if m, _, _ := e.s.PullInstruction(bg, node); m != nil {
		t.Fatal("a message whose objects are not all pushed was delivered")
	}
	e.pushObjects(t, runID, state.SuperLinkNodeID, ins, push)
	m, tree, err := e.s.PullInstruction(bg, node)
	if err != nil || m.GetMetadata().GetMessageId() != ins.Message.Metadata.MessageId || len(tree.GetChildren()) != 1 {
		t.Fatalf("PullInstruction = %v %v %v", m, tree, err)
	}
	if again, _, _ := e.s.PullInstruction(bg, node); again != nil {
		t.Fatal("a message was delivered twice")
	}
	for id, want := range ins.Objects {
		got, found, avail, err := e.s.PullObject(bg, runID, node, id)
		if err != nil || !found || !avail || string(got) != string(want) {
			t.Fatalf("PullObject %s = %v %v %v", id, found, avail, err)
		}
	}
	noErr(t, e.s.ConfirmMessageReceived(bg, runID, node, ins.Message.Metadata.MessageId))

	// A reply; the ServerApp sees nothing until its objects are in.
	res := e.reply(ins, node, "update")
	_, _, err = e.s.PushReplies(bg, node+1, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 0)
	wantCode(t, err, codes.PermissionDenied, "a reply pushed by another node")
	rids, rpush, err := e.s.PushReplies(bg, node, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 1.5)
	if err != nil || rids[0] != res.Message.Metadata.MessageId || len(rpush) != 3 {
		t.Fatalf("PushReplies = %v %v %v", rids, rpush, err)
	}
	if got, _, _ := e.s.PullReplies(bg, runID, ids); len(got) != 0 {
		t.Fatalf("a reply without its objects was returned: %v", got)
	}
	e.pushObjects(t, runID, node, res, rpush)
	got, trees, err := e.s.PullReplies(bg, runID, ids)
	if err != nil || len(got) != 1 || got[0].Metadata.MessageId != res.Message.Metadata.MessageId || trees[0].ObjectId != res.Message.Metadata.MessageId {
		t.Fatalf("PullReplies = %v %v %v", got, trees, err)
	}
	r := must(e.s.Run(bg, runID))(t)
	if r.ClientappRuntime != 1.5 || r.BytesRecv == 0 || r.BytesSent == 0 {
		t.Fatalf("run traffic %v", r)
	}
	// Asked again (the response was lost): the same reply.
	again, _, _ := e.s.PullReplies(bg, runID, ids)
	if len(again) != 1 || again[0].Metadata.MessageId != res.Message.Metadata.MessageId {
		t.Fatalf("PullReplies asked again = %v, want the reply again", again)
	}
	_, _, err = e.s.PushReplies(bg, node, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 0)
	wantCode(t, err, codes.NotFound, "a reply to a message whose reply was handed out")
	// Not asked for by the next PullReplies: forgotten.
	if got, _, err := e.s.PullReplies(bg, runID, nil); err != nil || len(got) != 0 {
		t.Fatalf("PullReplies of nothing = %v %v", got, err)
	}
	again, _, _ = e.s.PullReplies(bg, runID, ids)
	if len(again) != 1 || again[0].GetError().GetCode() != 3 {
		t.Fatalf("PullReplies once forgotten = %v, want MESSAGE_UNAVAILABLE", again)
	}
	noErr(t, e.s.ConfirmMessageReceived(bg, runID, state.SuperLinkNodeID, res.Message.Metadata.MessageId))
	for id := range res.Objects {
		if _, found, _, _ := e.s.PullObject(bg, runID, state.SuperLinkNodeID, id); found {
			t.Fatalf("object %s kept after its message was confirmed", id)
		}
	}
}

func testLinkBadObjects(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	other, _ := e.runningRun(t)
	ins := e.instruction(runID, node, "weights")
	_, push, err := e.s.PushInstructions(bg, runID, []*flwr129.Message{ins.Message}, []*flwr129.ObjectTree{ins.Tree})
	if err != nil {
		t.Fatal(err)
	}
	id := push[0]
	bad := append([]byte(nil), ins.Objects[id]...)
	bad[len(bad)-1] ^= 1
	_, err = e.s.PushObject(bg, runID, 1, id, bad)
	wantCode(t, err, codes.FailedPrecondition, "an object whose bytes do not hash to its id")
	_, err = e.s.PushObject(bg, other, 1, id, ins.Objects[id])
	wantCode(t, err, codes.NotFound, "an object of another run")
	notTree, content := FlowerObject("ArrayChunk", nil, []byte("stray"))
	_, err = e.s.PushObject(bg, runID, 1, notTree, content)
	wantCode(t, err, codes.NotFound, "an object no tree names")
	junkID, junk := FlowerObject("Pickle", nil, []byte("x"))
	_, err = e.s.PushObject(bg, runID, 1, junkID, junk)
	wantCode(t, err, codes.NotFound, "an object of an unknown type no tree names")
	// The message's own object, with children other than its tree's.
	msgID := ins.Message.Metadata.MessageId
	_, liar := FlowerObject("Message", nil, []byte("x"))
	_, err = e.s.PushObject(bg, runID, 1, msgID, liar)
	wantCode(t, err, codes.FailedPrecondition, "bytes of another object under the message's id")
	for _, id := range push {
		if _, found, avail, _ := e.s.PullObject(bg, runID, 1, id); !found || avail {
			t.Fatalf("object %s after refused pushes: found %v available %v", id, found, avail)
		}
	}
	if _, found, _, _ := e.s.PullObject(bg, other, 1, id); found {
		t.Fatal("an object of one run is found in another")
	}
}

func testLinkBadMessages(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	pending := must(e.s.CreateLinkRun(bg, state.NewRun{Fab: testFab("fab")}))(t)
	push := func(run uint64, m FlowerMessage) error {
		_, _, err := e.s.PushInstructions(bg, run, []*flwr129.Message{m.Message}, []*flwr129.ObjectTree{m.Tree})
		return err
	}
	good := e.instruction(runID, node, "w")
	wantCode(t, push(pending, good), codes.PermissionDenied, "messages of a pending run")
	expired := e.instruction(runID, node, "w")
	expired.Message.Metadata.CreatedAt -= 7200
	wantCode(t, push(runID, expired), codes.InvalidArgument, "an expired message")
	wrongRun := e.instruction(runID+1, node, "w")
	wantCode(t, push(runID, wrongRun), codes.InvalidArgument, "a message of another run")
	badRoot := e.instruction(runID, node, "w")
	badRoot.Tree.ObjectId = strings.Repeat("a", 64)
	wantCode(t, push(runID, badRoot), codes.InvalidArgument, "a tree whose root is not the message")
	_, _, err := e.s.PushInstructions(bg, runID, []*flwr129.Message{good.Message}, nil)
	wantCode(t, err, codes.InvalidArgument, "a message without a tree")
	st := must(e.s.LinkStats(bg))(t)
	if st.Messages != 0 || st.Objects != 0 {
		t.Fatalf("refused pushes stored %d messages and %d objects", st.Messages, st.Objects)
	}
	// To an unknown node: Flower's answer, the id "", nothing stored.
	ids, objs, err := e.s.PushInstructions(bg, runID, []*flwr129.Message{e.instruction(runID, 12345, "w").Message}, []*flwr129.ObjectTree{e.instruction(runID, 12345, "w").Tree})
	if err != nil || len(ids) != 1 || ids[0] != "" || len(objs) != 0 {
		t.Fatalf("a message to an unknown node: %v %v %v", ids, objs, err)
	}
	// A reply to a message that does not exist.
	res := e.reply(good, node, "u")
	_, _, err = e.s.PushReplies(bg, node, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 0)
	wantCode(t, err, codes.NotFound, "a reply to an unknown message")
}

func testLinkMadeUpReplies(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, tok := e.runningRun(t)
	ins := e.instruction(runID, node, "w")
	ids, push, err := e.s.PushInstructions(bg, runID, []*flwr129.Message{ins.Message}, []*flwr129.ObjectTree{ins.Tree})
	if err != nil {
		t.Fatal(err)
	}
	e.pushObjects(t, runID, 1, ins, push)
	unknown := strings.Repeat("b", 64)
	got, trees, err := e.s.PullReplies(bg, runID, []string{unknown, ids[0]})
	if err != nil || len(got) != 1 || got[0].Error.GetCode() != 3 || got[0].Metadata.ReplyToMessageId != unknown {
		t.Fatalf("PullReplies of an unknown id = %v %v", got, err)
	}
	content, found, avail, err := e.s.PullObject(bg, runID, 1, trees[0].ObjectId)
	if err != nil || !found || !avail {
		t.Fatalf("the made-up reply's object: %v %v %v", found, avail, err)
	}
	if h := sha256.Sum256(content); hex.EncodeToString(h[:]) != got[0].Metadata.MessageId {
		t.Fatal("the made-up reply's id is not the SHA-256 of its object")
	}
	// The node misses its heartbeats; the ServerApp sends its own.
	for range 2 {
		must(e.s.AppHeartbeat(bg, tok))(t)
		e.clock.Advance(31 * time.Second)
	}
	got, _, err = e.s.PullReplies(bg, runID, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Error.GetCode() != 5 || got[0].Metadata.ReplyToMessageId != ids[0] || got[0].Metadata.RunId != runID {
		t.Fatalf("PullReplies for an offline node = %v", got)
	}
}

func testLinkFinishReleases(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	ins := e.instruction(runID, node, "w")
	_, push, err := e.s.PushInstructions(bg, runID, []*flwr129.Message{ins.Message}, []*flwr129.ObjectTree{ins.Tree})
	if err != nil {
		t.Fatal(err)
	}
	e.pushObjects(t, runID, 1, ins, push)
	if st := must(e.s.LinkStats(bg))(t); st.Objects != 3 || st.ObjectBytes == 0 || st.Messages != 1 {
		t.Fatalf("stats %+v", st)
	}
	noErr(t, e.s.UpdateRunStatus(bg, runID, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusCompleted}))
	if st := must(e.s.LinkStats(bg))(t); st.Objects != 0 || st.Messages != 0 {
		t.Fatalf("after the run finished: %+v", st)
	}
	_, _, _, err = e.s.PullObject(bg, runID, 1, push[0])
	wantCode(t, err, codes.PermissionDenied, "PullObject of a finished run")
}
