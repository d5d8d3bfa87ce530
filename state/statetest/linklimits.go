package statetest

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// wantLinkLimit fails t unless err is a LinkLimitError of limit.
func wantLinkLimit(t *testing.T, err error, limit, what string) {
	t.Helper()
	wantCode(t, err, codes.ResourceExhausted, what)
	if got, ok := state.IsLinkLimit(err); !ok || got != limit {
		t.Fatalf("%s: %v, want the limit %s", what, err, limit)
	}
}

// registered reports whether a node holds key.
func registered(t *testing.T, s state.LinkState, key string) bool {
	t.Helper()
	_, ok, err := s.NodeOfKey(bg, []byte(key))
	noErr(t, err)
	return ok
}

// testLinkNodeLimits: past MaxUnactivated, the oldest node that
// registered itself and never activated goes; past MaxNodes, a node
// unregistered, then one never activated, then one that registered
// itself and is offline the longest; nodes online or registered through
// the Control API never go, and a new node is refused instead.
func testLinkNodeLimits(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{MaxNodes: 4, MaxUnactivated: 2})
	reg := func(key string, interval float64) error {
		_, err := s.RegisterNode(bg, []byte(key), interval)
		return err
	}
	for _, k := range []string{"a", "b"} {
		noErr(t, reg(k, 30)) // through the Control API
	}
	noErr(t, reg("x1", 0))
	noErr(t, reg("x2", 0))
	noErr(t, reg("x3", 0)) // past 2 never activated: x1 goes
	if registered(t, s, "x1") || !registered(t, s, "x3") {
		t.Fatal("past MaxUnactivated, the oldest node never activated did not make room")
	}
	noErr(t, reg("x4", 0)) // x2 goes
	if registered(t, s, "x2") {
		t.Fatal("x2 kept past MaxUnactivated")
	}
	for _, k := range []string{"x3", "x4"} {
		must(s.ActivateNode(bg, []byte(k), 30))(t)
	}
	b, _ := get2(t)(s.NodeOfKey(bg, []byte("b")))
	noErr(t, s.UnregisterNode(bg, b))
	noErr(t, reg("x5", 0)) // full: the unregistered b goes
	for _, n := range must(s.LinkNodes(bg))(t) {
		if n.Status == state.NodeUnregistered {
			t.Fatal("the unregistered node b was kept while the nodes were full")
		}
	}
	noErr(t, reg("x6", 0)) // full: x5, never activated, goes
	if registered(t, s, "x5") {
		t.Fatal("x5, never activated, kept while the nodes were full")
	}
	must(s.ActivateNode(bg, []byte("x6"), 30))(t)
	// a (Control API) and three nodes online: nothing may go.
	wantLinkLimit(t, reg("x7", 0), state.LimitLinkNodes, "RegisterNode with every node online or registered through the Control API")
	wantLinkLimit(t, reg("c", 30), state.LimitLinkNodes, "a Control API registration with every node online")
	if registered(t, s, "x7") || !registered(t, s, "a") {
		t.Fatal("a refused registration changed the nodes")
	}
	// x3 and x6 beat; x4 goes offline: it makes room.
	e.clock.Advance(30 * time.Second)
	for _, k := range []string{"x3", "x6"} {
		id, _ := get2(t)(s.NodeOfKey(bg, []byte(k)))
		must(s.NodeHeartbeat(bg, id, 30))(t)
	}
	e.clock.Advance(31 * time.Second)
	noErr(t, reg("x7", 0))
	if registered(t, s, "x4") || !registered(t, s, "x7") {
		t.Fatal("the node offline did not make room for x7")
	}
}

// twoRuns starts two running runs in s and an online node of each key;
// beat keeps the runs' ServerApps alive.
func twoRuns(t *testing.T, e *linkEnv, s state.LinkState, keys ...string) (r1, r2 uint64, nodes []uint64, beat func()) {
	t.Helper()
	for _, k := range keys {
		id := must(s.RegisterNode(bg, []byte(k), 0))(t)
		must(s.ActivateNode(bg, []byte(k), 1800))(t)
		nodes = append(nodes, id)
	}
	var tokens []string
	run := func(fab string) uint64 {
		id := must(s.CreateLinkRun(bg, state.NewRun{FabID: "a/b", FabVersion: "1.0", Fab: testFab(fab), Federation: "@none/default"}))(t)
		tokens = append(tokens, must(s.RequestToken(bg, id))(t))
		if _, _, _, err := s.StartApp(bg, id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	r1, r2 = run("fab one"), run("fab two")
	return r1, r2, nodes, func() {
		for _, tok := range tokens {
			if ok := must(s.AppHeartbeat(bg, tok))(t); !ok {
				t.Fatal("AppHeartbeat: the token is gone")
			}
		}
	}
}

// sendIns pushes an instruction of run to dst with its objects, and has
// dst pull it.
func (e *linkEnv) sendIns(t *testing.T, s state.LinkState, run, dst uint64) FlowerMessage {
	t.Helper()
	ins := e.instruction(run, dst, "model")
	_, push := e.pushIns(t, s, run, ins)
	pushAll(t, s, run, state.SuperLinkNodeID, push, ins)
	if m, _, err := s.PullInstruction(bg, dst); err != nil || m.GetMetadata().GetMessageId() != ins.Message.Metadata.MessageId {
		t.Fatalf("PullInstruction of node %d = %v %v", dst, m, err)
	}
	return ins
}

// pushReply pushes a reply of node.
func pushReply(s state.LinkState, node uint64, m FlowerMessage) ([]string, error) {
	_, push, err := s.PushReplies(bg, node, []*flwr129.Message{m.Message}, []*flwr129.ObjectTree{m.Tree}, 0)
	return push, err
}

// testLinkOwedObjects: a node pushes only the objects its own messages
// name, in runs that sent it a message; it pulls only in such runs and
// confirms only its own messages. A refused push stores nothing.
func testLinkOwedObjects(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{})
	r1, r2, ns, _ := twoRuns(t, e, s, "n1", "n2")
	n1, n2 := ns[0], ns[1]
	ins1 := e.sendIns(t, s, r1, n1)
	ins2 := e.sendIns(t, s, r1, n2)
	pullAll(t, s, r1, n1, ins1)
	_, _, _, err := s.PullObject(bg, r2, n1, ins1.Tree.ObjectId)
	wantCode(t, err, codes.PermissionDenied, "PullObject in a run that sent the node nothing")
	wantCode(t, s.ConfirmMessageReceived(bg, r1, n1, ins2.Message.Metadata.MessageId), codes.PermissionDenied, "a node confirming another's message")
	if _, found, _, _ := s.PullObject(bg, r1, n2, ins2.Tree.ObjectId); !found {
		t.Fatal("another node's confirmation removed node 2's message")
	}
	noErr(t, s.ConfirmMessageReceived(bg, r1, n1, ins1.Message.Metadata.MessageId))

	rep := e.reply(ins1, n1, "update")
	push := must(pushReply(s, n1, rep))(t)
	for _, id := range push {
		_, err := s.PushObject(bg, r1, n2, id, rep.Objects[id])
		wantCode(t, err, codes.NotFound, "node 2 pushing an object of node 1's reply")
		_, err = s.PushObject(bg, r2, n1, id, rep.Objects[id])
		wantCode(t, err, codes.PermissionDenied, "node 1 pushing into a run that sent it nothing")
		if _, _, avail, _ := s.PullObject(bg, r1, state.SuperLinkNodeID, id); avail {
			t.Fatalf("object %s stored by a refused push", id)
		}
	}
	pushAll(t, s, r1, n1, push, rep)
	// Pushed already: a node of the run that names it too is answered
	// stored, and nothing changes.
	if ok, err := s.PushObject(bg, r1, n2, push[0], rep.Objects[push[0]]); err != nil || !ok {
		t.Fatalf("PushObject of an object stored already = %v %v", ok, err)
	}
	if got, _, _ := s.PullReplies(bg, r1, []string{ins1.Message.Metadata.MessageId}); len(got) != 1 || got[0].GetError() != nil {
		t.Fatalf("PullReplies = %v, want node 1's reply", got)
	}
}

// testLinkOwedLimits: replies past MaxPendingPerNode and pushes past
// MaxPendingBytesPerNode are refused, storing nothing; replies past
// MaxPendingPerRun take the place of the node that owes the most, if it
// owes more than the replying node would, else they are refused.
func testLinkOwedLimits(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{MaxPendingPerNode: 8, MaxPendingPerRun: 10, MaxPendingBytesPerNode: 1000})
	r1, _, ns, _ := twoRuns(t, e, s, "n1", "n2", "n3")
	ins := make([]FlowerMessage, 3)
	for i, n := range ns {
		ins[i] = e.sendIns(t, s, r1, n)
	}
	arrayReply := func(i int, chunks ...[]byte) FlowerMessage { return e.arrayReply(ins[i], ns[i], chunks...) }
	// 5 chunks and 4 objects above them: 9, past 8 a node.
	before := must(s.LinkStats(bg))(t)
	_, err := pushReply(s, ns[0], arrayReply(0, Chunk(600, 1), Chunk(600, 2), Chunk(600, 3), Chunk(600, 4), Chunk(600, 5)))
	wantLinkLimit(t, err, state.LimitPendingPerNode, "a reply of 9 objects to owe, 8 a node")
	if after := must(s.LinkStats(bg))(t); after.Objects != before.Objects || after.Messages != before.Messages {
		t.Fatalf("a refused reply was stored: %+v, before %+v", after, before)
	}
	// 7 objects for node 1, then 7 more for node 2: past 10 a run.
	r0 := arrayReply(0, Chunk(600, 1), Chunk(600, 2), Chunk(600, 3))
	push := must(pushReply(s, ns[0], r0))(t)
	if len(push) != 7 {
		t.Fatalf("objects to push %d, want 7", len(push))
	}
	_, err = pushReply(s, ns[1], arrayReply(1, Chunk(600, 4), Chunk(600, 5), Chunk(600, 6)))
	wantLinkLimit(t, err, state.LimitPendingPerRun, "a reply owing 7 objects in a run of 10 where another node owes 7")
	// 1000 bytes a node while it owes: the second chunk of 600 is past.
	var chunks []string
	for _, id := range push {
		if strings.HasPrefix(string(r0.Objects[id]), "ArrayChunk ") {
			chunks = append(chunks, id)
		}
	}
	if ok, err := s.PushObject(bg, r1, ns[0], chunks[0], r0.Objects[chunks[0]]); err != nil || !ok {
		t.Fatalf("PushObject of the first chunk = %v %v", ok, err)
	}
	_, err = s.PushObject(bg, r1, ns[0], chunks[1], r0.Objects[chunks[1]])
	wantLinkLimit(t, err, state.LimitPendingBytes, "a push past 1000 bytes while the node owes objects")
	if _, _, avail, _ := s.PullObject(bg, r1, state.SuperLinkNodeID, chunks[1]); avail {
		t.Fatal("a push past the bytes limit was stored")
	}
	// Node 3's small reply fits: 9 owed in the run (node 1's 6 and its 3).
	small := e.reply(ins[2], ns[2], "ok")
	push3 := must(pushReply(s, ns[2], small))(t)
	// Node 2's, of 3: 12 owed; node 1 owes the most (6), more than node 2
	// would (3): its reply is forgotten.
	small2 := e.reply(ins[1], ns[1], "ok too")
	push2 := must(pushReply(s, ns[1], small2))(t)
	_, err = s.PushObject(bg, r1, ns[0], chunks[2], r0.Objects[chunks[2]])
	wantCode(t, err, codes.NotFound, "a push of an object of a reply forgotten to make room")
	pushAll(t, s, r1, ns[2], push3, small)
	pushAll(t, s, r1, ns[1], push2, small2)
	got, _, err := s.PullReplies(bg, r1, []string{ins[1].Message.Metadata.MessageId, ins[2].Message.Metadata.MessageId})
	if err != nil || len(got) != 2 {
		t.Fatalf("PullReplies = %v %v, want the replies of nodes 2 and 3", got, err)
	}
}

// testLinkPushTimeout: a node that pushes none of the objects it owes for
// PushTimeout loses the messages it owes them for (its reply, as never
// sent; the ServerApp's instruction, as expired), and may push again; a
// push keeps them.
func testLinkPushTimeout(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{PushTimeout: time.Minute})
	r1, _, ns, beat := twoRuns(t, e, s, "n1")
	beat()
	n1 := ns[0]
	ins := e.sendIns(t, s, r1, n1)
	insID := ins.Message.Metadata.MessageId
	reply := func() FlowerMessage { // one that lives through the test
		md := ins.Message.Metadata
		return NewFlowerArrayMessage(&flwr129.Metadata{RunId: md.RunId, SrcNodeId: n1, DstNodeId: state.SuperLinkNodeID,
			ReplyToMessageId: md.MessageId, GroupId: md.GroupId, Ttl: 3000, MessageType: md.MessageType, CreatedAt: e.now()}, Chunk(100, 1), Chunk(100, 2))
	}
	rep := reply()
	push := must(pushReply(s, n1, rep))(t)
	before := must(s.LinkStats(bg))(t)
	for i := range 2 { // a push each 50 s keeps them
		e.clock.Advance(50 * time.Second)
		beat()
		if ok, err := s.PushObject(bg, r1, n1, push[i], rep.Objects[push[i]]); err != nil || !ok {
			t.Fatalf("PushObject %d after %d s = %v %v", i, 50*(i+1), ok, err)
		}
	}
	e.clock.Advance(40 * time.Second)
	beat()
	e.clock.Advance(21 * time.Second)
	if got, _, err := s.PullReplies(bg, r1, []string{insID}); err != nil || len(got) != 0 {
		t.Fatalf("PullReplies = %v %v, want no reply yet: the incomplete reply is forgotten, the node online", got, err)
	}
	if st := must(s.LinkStats(bg))(t); st.Objects >= before.Objects {
		t.Fatalf("objects held %d, %d before: the reply's objects were kept past PushTimeout", st.Objects, before.Objects)
	}
	_, err := s.PushObject(bg, r1, n1, push[2], rep.Objects[push[2]])
	wantCode(t, err, codes.NotFound, "a push of an object of a reply forgotten")
	// The node replies again, in time.
	rep = reply()
	push = must(pushReply(s, n1, rep))(t)
	pushAll(t, s, r1, n1, push, rep)
	if got, _, _ := s.PullReplies(bg, r1, []string{insID}); len(got) != 1 || got[0].GetError() != nil {
		t.Fatalf("PullReplies = %v, want the reply pushed again", got)
	}

	// The ServerApp's instruction whose objects never come.
	e.clock.Advance(time.Second)
	beat()
	lost := e.instruction(r1, n1, "never pushed")
	ids, _ := e.pushIns(t, s, r1, lost)
	e.clock.Advance(40 * time.Second)
	beat()
	e.clock.Advance(21 * time.Second)
	got, _, err := s.PullReplies(bg, r1, ids)
	if err != nil || len(got) != 1 || got[0].GetError().GetCode() != 3 {
		t.Fatalf("PullReplies of an instruction whose objects never came = %v %v, want MESSAGE_UNAVAILABLE", got, err)
	}
}

// testLinkRunLimits: CreateLinkRun past MaxActiveRuns is refused; a new
// FAB past MaxFabBytes takes the place of FABs that only finished runs
// use, or is refused.
func testLinkRunLimits(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{MaxActiveRuns: 2, MaxFabBytes: 10})
	create := func(fab string) (uint64, error) {
		return s.CreateLinkRun(bg, state.NewRun{FabID: "a/b", FabVersion: "1.0", Fab: testFab(fab), Federation: "@none/default"})
	}
	r1 := must(create("aaaa"))(t)
	r2 := must(create("bbbb"))(t)
	_, err := create("cccc")
	wantLinkLimit(t, err, state.LimitActiveRuns, "a third run, 2 active")
	must(s.StopRun(bg, r1))(t)
	r3 := must(create("cccc"))(t) // 12 bytes: aaaa (r1 finished) goes
	_, err = s.Fab(bg, testFab("aaaa").HashStr)
	wantCode(t, err, codes.NotFound, "the FAB of a finished run, past MaxFabBytes")
	if _, err := s.Fab(bg, testFab("bbbb").HashStr); err != nil {
		t.Fatalf("the FAB of a pending run: %v", err)
	}
	must(s.StopRun(bg, r3))(t)
	must(s.StopRun(bg, r2))(t)
	r4 := must(create("bbbb"))(t) // held: nothing to add
	_, err = create("12345678901")
	wantLinkLimit(t, err, state.LimitFabBytes, "a FAB of 11 bytes, 10 in all")
	if r := must(s.Run(bg, r4))(t); r.Status.Status != state.StatusPending {
		t.Fatalf("run 4: %v", r.Status)
	}
}

// testLinkLogChunks: PushLogs cuts output into entries of at most
// MaxLogEntry between characters, and Logs returns whole entries within
// its max, finished only with the last.
func testLinkLogChunks(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{})
	run := must(s.CreateLinkRun(bg, state.NewRun{FabID: "a/b", FabVersion: "1.0", Fab: testFab("logs"), Federation: "@none/default"}))(t)
	text := strings.Repeat("round é ✓\n", 20000) // 240 kB, runes of 1 to 3 bytes
	noErr(t, s.PushLogs(bg, run, text))
	must(s.StopRun(bg, run))(t)
	var got strings.Builder
	after, calls := 0.0, 0
	for {
		part, latest, done, err := s.Logs(bg, run, after, 100<<10)
		noErr(t, err)
		calls++
		if len(part) > 100<<10 || !utf8.ValidString(part) {
			t.Fatalf("Logs returned %d bytes (max 100 KiB), valid UTF-8 %v", len(part), utf8.ValidString(part))
		}
		got.WriteString(part)
		if done {
			break
		}
		if part == "" || calls > 10 {
			t.Fatalf("Logs after %v: %d bytes, not finished", after, len(part))
		}
		after = latest
	}
	if got.String() != text || calls < 3 {
		t.Fatalf("the log read in %d calls is %d bytes, want %d in 3 or more", calls, got.Len(), len(text))
	}
	if one, _, done, _ := s.Logs(bg, run, 0, 1); len(one) == 0 || len(one) > state.MaxLogEntry || done {
		t.Fatalf("Logs of at most 1 byte: %d bytes, finished %v; want one entry of at most %d", len(one), done, state.MaxLogEntry)
	}
}

// testLinkSignatures: a signature's tag is taken once; in a store that
// keeps them in its process, past MaxSignatures the oldest go and
// signatures as old are refused with Unavailable; in stores SuperLinks
// share, a tag used through one is refused through another.
func testLinkSignatures(t *testing.T, e *linkEnv) {
	s := e.openWith(t, state.LinkLimits{MaxSignatures: 3})
	now := e.now()
	tag := func(i int) []byte { return []byte(strings.Repeat(string(rune('a'+i)), 32)) }
	noErr(t, s.UseSignature(bg, tag(0), now, now+300))
	wantCode(t, s.UseSignature(bg, tag(0), now, now+300), codes.Unauthenticated, "a signature used twice")
	if e.sigsShared {
		other := e.open(t)
		wantCode(t, other.UseSignature(bg, tag(0), now, now+300), codes.Unauthenticated, "a signature used twice, through another LinkState")
		noErr(t, other.UseSignature(bg, tag(1), now, now+300))
		wantCode(t, s.UseSignature(bg, tag(1), now, now+300), codes.Unauthenticated, "a signature used through another LinkState")
		return
	}
	for i := 1; i <= 3; i++ {
		noErr(t, s.UseSignature(bg, tag(i), now+float64(i), now+300+float64(i)))
	}
	// Four held, three the bound: the oldest (tag 0) is forgotten, and
	// what expires as early is too old to tell.
	wantCode(t, s.UseSignature(bg, tag(0), now, now+300), codes.Unavailable, "a forgotten signature used again")
	wantCode(t, s.UseSignature(bg, tag(5), now, now+300), codes.Unavailable, "a new signature as old as the ones forgotten")
	noErr(t, s.UseSignature(bg, tag(6), now+10, now+310))
	e.clock.Advance(400 * time.Second) // all expired: a new one is taken
	later := e.now()
	noErr(t, s.UseSignature(bg, tag(7), later, later+300))
}
