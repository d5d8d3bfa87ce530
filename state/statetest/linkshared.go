package statetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// The cases of stores that outlive a LinkState (LinkOptions.Shared).

// linkSnapshot is what a LinkState shows of everything it holds.
type linkSnapshot struct {
	nodes []*flwr129.NodeInfo
	runs  []*flwr129.Run
	stats state.LinkStats
}

func snapshot(t *testing.T, s state.LinkState) linkSnapshot {
	t.Helper()
	return linkSnapshot{nodes: must(s.LinkNodes(bg))(t), runs: must(s.LinkRuns(bg, 0))(t), stats: must(s.LinkStats(bg))(t)}
}

// diff says how b differs from a; a node may be online longer in b (a
// store gives the nodes online when it restarts their interval again).
func (a linkSnapshot) diff(b linkSnapshot) string {
	sameNode := func(x, y *flwr129.NodeInfo) bool {
		if x.GetOnlineUntil() > y.GetOnlineUntil() || (x.OnlineUntil == nil) != (y.OnlineUntil == nil) {
			return false
		}
		x, y = proto.Clone(x).(*flwr129.NodeInfo), proto.Clone(y).(*flwr129.NodeInfo)
		x.OnlineUntil, y.OnlineUntil = nil, nil
		return proto.Equal(x, y)
	}
	if !slices.EqualFunc(a.nodes, b.nodes, sameNode) {
		return fmt.Sprintf("nodes %v, then %v", a.nodes, b.nodes)
	}
	if !slices.EqualFunc(a.runs, b.runs, func(x, y *flwr129.Run) bool { return proto.Equal(x, y) }) {
		return fmt.Sprintf("runs %v, then %v", a.runs, b.runs)
	}
	if fmt.Sprint(a.stats) != fmt.Sprint(b.stats) {
		return fmt.Sprintf("stats %+v, then %+v", a.stats, b.stats)
	}
	return ""
}

// testLinkRestart: a LinkState that crashes (or closes) and one opened
// on the same store after it: nothing is lost, neither nodes, runs, FABs,
// tokens, contexts and logs, nor messages delivered or not, replies and
// objects, large ones included.
func testLinkRestart(t *testing.T, e *linkEnv) {
	a := e.onlineNode(t, "key-a")
	b := must(e.s.RegisterNode(bg, []byte("key-b"), 0))(t)
	c := must(e.s.RegisterNode(bg, []byte("key-c"), 0))(t)
	noErr(t, e.s.UnregisterNode(bg, c))
	runID, tok := e.runningRun(t)
	pending := must(e.s.CreateLinkRun(bg, state.NewRun{FabID: "a/c", FabVersion: "2.0", Fab: testFab("other fab"),
		OverrideConfig: map[string]*flwr129.Scalar{"lr": {Scalar: &flwr129.Scalar_Double{Double: 0.1}}}}))(t)
	stopped := must(e.s.CreateLinkRun(bg, state.NewRun{Fab: testFab("fab")}))(t)
	must(e.s.StopRun(bg, stopped))(t)
	appCtx := &flwr129.Context{RunId: runID, NodeId: state.SuperLinkNodeID, State: &flwr129.RecordDict{},
		RunConfig: map[string]*flwr129.Scalar{"num-server-rounds": {Scalar: &flwr129.Scalar_Sint64{Sint64: 3}}}}
	noErr(t, e.s.SetAppContext(bg, runID, appCtx))
	noErr(t, e.s.PushLogs(bg, runID, "round 1\n"))
	noErr(t, e.s.PushLogs(bg, runID, "round 2\n"))

	// A message delivered and answered, one delivered and not, one not
	// delivered; large objects in each.
	answered := e.arrayIns(runID, a, Chunk(3<<20, 1), Chunk(100, 2))
	delivered := e.arrayIns(runID, a, Chunk(3<<20, 3))
	waiting := e.arrayIns(runID, b, Chunk(3<<20, 4))
	ids, push := e.pushIns(t, e.s, runID, answered, delivered)
	pushAll(t, e.s, runID, state.SuperLinkNodeID, push, answered, delivered)
	if m, _, _ := e.s.PullInstruction(bg, a); m.GetMetadata().GetMessageId() != ids[0] {
		t.Fatalf("PullInstruction = %v", m)
	}
	res := e.arrayReply(answered, a, Chunk(3<<20, 5))
	_, rpush, err := e.s.PushReplies(bg, a, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 2)
	noErr(t, err)
	pushAll(t, e.s, runID, a, rpush, res)
	if m, _, _ := e.s.PullInstruction(bg, a); m.GetMetadata().GetMessageId() != ids[1] {
		t.Fatalf("PullInstruction = %v", m)
	}
	// b is registered, not online: its message is not stored, as Flower.
	if wids, _ := e.pushIns(t, e.s, runID, waiting); wids[0] != "" {
		t.Fatalf("a message to a node never activated got the id %q", wids[0])
	}
	must(e.s.ActivateNode(bg, []byte("key-b"), 30))(t)
	wids, wpush := e.pushIns(t, e.s, runID, waiting)
	pushAll(t, e.s, runID, state.SuperLinkNodeID, wpush, waiting)

	before := snapshot(t, e.s)
	text, latest, _, err := e.s.Logs(bg, runID, 0, 0)
	noErr(t, err)
	e.close(t, e.s, true)
	e.clock.Advance(time.Second)
	s := e.open(t)

	if d := before.diff(snapshot(t, s)); d != "" {
		t.Fatalf("after the restart: %s", d)
	}
	if got, ok := get2(t)(s.RunOfToken(bg, tok)); !ok || got != runID {
		t.Fatalf("RunOfToken after the restart = %d %v", got, ok)
	}
	if ok := must(s.AppHeartbeat(bg, tok))(t); !ok {
		t.Fatal("the app token is not known after the restart")
	}
	if f := must(s.Fab(bg, testFab("other fab").HashStr))(t); string(f.Content) != "other fab" {
		t.Fatalf("Fab after the restart: %v", f)
	}
	if r := must(s.Run(bg, pending))(t); r.OverrideConfig["lr"].GetDouble() != 0.1 || r.FabId != "a/c" {
		t.Fatalf("pending run after the restart: %v", r)
	}
	if got, latest2, _, err := s.Logs(bg, runID, 0, 0); err != nil || got != text || latest2 != latest {
		t.Fatalf("Logs after the restart = %q %v %v, want %q %v", got, latest2, err, text, latest)
	}
	if tail, _, _, _ := s.Logs(bg, runID, latest, 0); tail != "" {
		t.Fatalf("Logs after the latest stamp, after the restart = %q", tail)
	}
	noErr(t, s.PushLogs(bg, runID, "round 3\n"))
	if tail, _, _, _ := s.Logs(bg, runID, latest, 0); tail != "round 3\n" {
		t.Fatalf("Logs of what came after the restart = %q", tail)
	}

	// The waiting message goes to b; a's delivered one (its LinkState is
	// gone) goes again to a; the answered one never.
	if m, tree, _ := s.PullInstruction(bg, b); m.GetMetadata().GetMessageId() != wids[0] || !sameTree(tree, waiting.Tree) {
		t.Fatalf("the undelivered message after the restart: %v", m)
	}
	pullAll(t, s, runID, b, waiting)
	if m := pullAgain(t, s, a); m.GetMetadata().GetMessageId() != ids[1] {
		t.Fatalf("the message delivered by the LinkState gone, unanswered: %v, want it again", m)
	}
	if m, _, _ := s.PullInstruction(bg, a); m != nil {
		t.Fatalf("a third message for a: %v", m)
	}
	pullAll(t, s, runID, a, delivered)
	got, trees, err := s.PullReplies(bg, runID, ids[:1])
	if err != nil || len(got) != 1 || got[0].Metadata.MessageId != res.Message.Metadata.MessageId || !sameTree(trees[0], res.Tree) {
		t.Fatalf("the reply after the restart: %v %v", got, err)
	}
	pullAll(t, s, runID, state.SuperLinkNodeID, res)
	_, _, _, err = s.StartApp(bg, pending)
	wantCode(t, err, codes.FailedPrecondition, "StartApp of a pending run")
	if n := must(s.LinkNodes(bg))(t); n[2].Status != state.NodeUnregistered {
		t.Fatalf("node c after the restart: %v", n[2])
	}
}

// testLinkRestartRedelivers: a message delivered by a LinkState that
// lives is never handed out by another; once that one is gone (a crash),
// its node gets it again from the other, once.
func testLinkRestartRedelivers(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	other := e.open(t)
	ins := e.instruction(runID, node, "w")
	ids, push := e.pushIns(t, e.s, runID, ins)
	pushAll(t, other, runID, state.SuperLinkNodeID, push, ins)
	if m, _, _ := e.s.PullInstruction(bg, node); m.GetMetadata().GetMessageId() != ids[0] {
		t.Fatalf("PullInstruction = %v", m)
	}
	if m, _, _ := other.PullInstruction(bg, node); m != nil {
		t.Fatal("a message delivered by a live LinkState was handed out by another")
	}
	e.close(t, e.s, true)
	if m := pullAgain(t, other, node); m.GetMetadata().GetMessageId() != ids[0] {
		t.Fatalf("after the LinkState that delivered it crashed: %v, want the message again", m)
	}
	if m, _, _ := other.PullInstruction(bg, node); m != nil {
		t.Fatal("the message was handed out a third time")
	}
}

// pullAgain pulls for node until a message comes, for up to 10 s: a
// database learns that a LinkState died once its connection is gone,
// which may take the server a moment after the crash.
func pullAgain(t *testing.T, s state.LinkState, node uint64) *flwr129.Message {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, _, err := s.PullInstruction(bg, node)
		if err != nil {
			t.Fatal(err)
		}
		if m != nil || time.Now().After(deadline) {
			return m
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLinkRaceDelivery: two LinkStates on one store, as two SuperLinks
// on one database: the nodes' pullers race through both for the same
// messages, each is delivered once.
func testLinkRaceDelivery(t *testing.T, e *linkEnv) {
	linkRace(t, e, []state.LinkState{e.s, e.open(t)})
}

// testLinkObjectsAcross: objects pushed through one LinkState are pulled
// through another, large ones included, and released for both.
func testLinkObjectsAcross(t *testing.T, e *linkEnv) {
	other := e.open(t)
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	ins := e.arrayIns(runID, node, Chunk(5<<20, 1), Chunk(5<<20, 2), Chunk(10, 3))
	ids, push := e.pushIns(t, e.s, runID, ins)
	pushAll(t, e.s, runID, state.SuperLinkNodeID, push, ins)
	if m, tree, _ := other.PullInstruction(bg, node); m.GetMetadata().GetMessageId() != ids[0] || !sameTree(tree, ins.Tree) {
		t.Fatalf("PullInstruction through the other LinkState = %v", m)
	}
	pullAll(t, other, runID, node, ins)
	pullAll(t, e.s, runID, node, ins)
	noErr(t, other.ConfirmMessageReceived(bg, runID, node, ids[0]))
	for id := range ins.Objects {
		if _, found, _, _ := e.s.PullObject(bg, runID, node, id); found {
			t.Fatalf("object %s confirmed through the other LinkState is still held", id)
		}
	}
	if st := must(e.s.LinkStats(bg))(t); st.Objects != 0 || st.ObjectBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// testLinkLogsAcross: logs pushed through two LinkStates, the clock
// standing still, stream from either in order, each line once.
func testLinkLogsAcross(t *testing.T, e *linkEnv) {
	other := e.open(t)
	runID, _ := e.runningRun(t)
	var want string
	latest := 0.0
	for i := range 6 {
		s, r := e.s, other
		if i%2 == 1 {
			s, r = other, e.s
		}
		line := fmt.Sprintf("line %d\n", i)
		noErr(t, s.PushLogs(bg, runID, line))
		want += line
		// A follower on the other LinkState gets exactly the new line.
		text, l, done, err := r.Logs(bg, runID, latest, 0)
		if err != nil || text != line || l <= latest || done {
			t.Fatalf("Logs after %v through the other LinkState = %q %v %v %v, want %q", latest, text, l, done, err, line)
		}
		latest = l
	}
	for _, s := range []state.LinkState{e.s, other} {
		if text, l, _, _ := s.Logs(bg, runID, 0, 0); text != want || l != latest {
			t.Fatalf("Logs = %q (latest %v), want %q (%v)", text, l, want, latest)
		}
	}
	must(other.StopRun(bg, runID))(t)
	if _, _, done, _ := e.s.Logs(bg, runID, latest, 0); !done {
		t.Fatal("a run stopped through one LinkState is not finished for the other")
	}
}

// testLinkTokensAcross: tokens, heartbeats and keys are shared: what one
// LinkState grants, the other knows.
func testLinkTokensAcross(t *testing.T, e *linkEnv) {
	other := e.open(t)
	id := must(e.s.CreateLinkRun(bg, state.NewRun{Fab: testFab("fab")}))(t)
	tok := must(e.s.RequestToken(bg, id))(t)
	if again := must(other.RequestToken(bg, id))(t); again != "" {
		t.Fatal("the other LinkState gave a second token for one run")
	}
	if got, ok := get2(t)(other.RunOfToken(bg, tok)); !ok || got != id {
		t.Fatalf("RunOfToken through the other LinkState = %d %v", got, ok)
	}
	if _, _, _, err := other.StartApp(bg, id); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := e.s.StartApp(bg, id); err != nil { // a ServerApp retrying through another SuperLink
		t.Fatalf("StartApp asked again through the other LinkState: %v", err)
	}
	for range 3 { // 75 s, heartbeats through the other every 25 s
		e.clock.Advance(25 * time.Second)
		if ok := must(other.AppHeartbeat(bg, tok))(t); !ok {
			t.Fatal("heartbeat refused")
		}
	}
	if r := must(e.s.Run(bg, id))(t); r.Status.Status != state.StatusRunning {
		t.Fatalf("run %v: the other LinkState's heartbeats were not seen", r.Status)
	}

	node := must(e.s.RegisterNode(bg, []byte("key"), 0))(t)
	_, err := other.RegisterNode(bg, []byte("key"), 0)
	wantCode(t, err, codes.FailedPrecondition, "RegisterNode of a key the other LinkState registered")
	must(other.ActivateNode(bg, []byte("key"), 30))(t)
	for range 3 {
		e.clock.Advance(50 * time.Second)
		must(e.s.AppHeartbeat(bg, tok))(t)
		if ok := must(other.NodeHeartbeat(bg, node, 30))(t); !ok {
			t.Fatal("node heartbeat refused")
		}
		if ns := must(e.s.OnlineNodes(bg, id))(t); len(ns) != 1 || ns[0] != node {
			t.Fatalf("online nodes %v, want the node the other LinkState keeps online", ns)
		}
	}
}
