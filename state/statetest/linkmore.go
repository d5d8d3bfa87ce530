package statetest

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pushIns pushes instructions and returns their ids and the objects to
// push, failing t on error.
func (e *linkEnv) pushIns(t *testing.T, s state.LinkState, runID uint64, ms ...FlowerMessage) ([]string, []string) {
	t.Helper()
	msgs := make([]*flwr129.Message, len(ms))
	trees := make([]*flwr129.ObjectTree, len(ms))
	for i, m := range ms {
		msgs[i], trees[i] = m.Message, m.Tree
	}
	ids, push, err := s.PushInstructions(bg, runID, msgs, trees)
	if err != nil {
		t.Fatalf("PushInstructions: %v", err)
	}
	return ids, push
}

// pushAll pushes the objects of m named in ids through s.
func pushAll(t *testing.T, s state.LinkState, runID, node uint64, ids []string, ms ...FlowerMessage) {
	t.Helper()
	for _, id := range ids {
		var content []byte
		for _, m := range ms {
			if c, ok := m.Objects[id]; ok {
				content = c
			}
		}
		if content == nil {
			t.Fatalf("object %s to push is in none of the messages", id)
		}
		if ok, err := s.PushObject(bg, runID, node, id, content); err != nil || !ok {
			t.Fatalf("PushObject %s: %v %v", id, ok, err)
		}
	}
}

// pullAll pulls every object of m's tree through s as node and checks
// its bytes.
func pullAll(t *testing.T, s state.LinkState, runID, node uint64, m FlowerMessage) {
	t.Helper()
	for id, want := range m.Objects {
		got, found, avail, err := s.PullObject(bg, runID, node, id)
		if err != nil || !found || !avail || !bytes.Equal(got, want) {
			t.Fatalf("PullObject %s: found %v available %v, %d bytes (want %d): %v", id, found, avail, len(got), len(want), err)
		}
	}
}

func (e *linkEnv) arrayIns(runID, dst uint64, chunks ...[]byte) FlowerMessage {
	return NewFlowerArrayMessage(&flwr129.Metadata{RunId: runID, SrcNodeId: state.SuperLinkNodeID, DstNodeId: dst,
		GroupId: "1", Ttl: 3600, MessageType: "train", CreatedAt: e.now()}, chunks...)
}

func (e *linkEnv) arrayReply(ins FlowerMessage, src uint64, chunks ...[]byte) FlowerMessage {
	md := ins.Message.Metadata
	return NewFlowerArrayMessage(&flwr129.Metadata{RunId: md.RunId, SrcNodeId: src, DstNodeId: state.SuperLinkNodeID,
		ReplyToMessageId: md.MessageId, GroupId: md.GroupId, Ttl: 60, MessageType: md.MessageType, CreatedAt: e.now()}, chunks...)
}

// testLinkLargeObjects: an array in chunks of 5 MiB, one chunk twice,
// goes to a node and back byte for byte, and is held once.
func testLinkLargeObjects(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, _ := e.runningRun(t)
	a, b := Chunk(5<<20, 1), Chunk(5<<20, 2)
	ins := e.arrayIns(runID, node, a, b, a, Chunk(100, 3))
	ids, push := e.pushIns(t, e.s, runID, ins)
	if len(push) != len(ins.Objects) {
		t.Fatalf("objects to push %d, want the %d distinct objects", len(push), len(ins.Objects))
	}
	pushAll(t, e.s, runID, state.SuperLinkNodeID, push, ins)
	want := int64(0)
	for _, c := range ins.Objects {
		want += int64(len(c))
	}
	if st := must(e.s.LinkStats(bg))(t); st.Objects != len(ins.Objects) || st.ObjectBytes != want {
		t.Fatalf("stats %+v, want %d objects of %d bytes", st, len(ins.Objects), want)
	}
	m, tree, err := e.s.PullInstruction(bg, node)
	if err != nil || m.GetMetadata().GetMessageId() != ids[0] || !sameTree(tree, ins.Tree) {
		t.Fatalf("PullInstruction = %v %v %v", m, tree, err)
	}
	pullAll(t, e.s, runID, node, ins)
	noErr(t, e.s.ConfirmMessageReceived(bg, runID, node, ids[0]))
	if st := must(e.s.LinkStats(bg))(t); st.Objects != 0 || st.ObjectBytes != 0 {
		t.Fatalf("after the node confirmed the message: %+v", st)
	}

	res := e.arrayReply(ins, node, Chunk(5<<20, 4), Chunk(1<<20, 5))
	rids, rpush, err := e.s.PushReplies(bg, node, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 1)
	if err != nil || len(rpush) != len(res.Objects) {
		t.Fatalf("PushReplies = %v %v %v", rids, rpush, err)
	}
	pushAll(t, e.s, runID, node, rpush, res)
	got, trees, err := e.s.PullReplies(bg, runID, ids)
	if err != nil || len(got) != 1 || got[0].Metadata.MessageId != rids[0] || !sameTree(trees[0], res.Tree) {
		t.Fatalf("PullReplies = %v %v", got, err)
	}
	pullAll(t, e.s, runID, state.SuperLinkNodeID, res)
	r := must(e.s.Run(bg, runID))(t)
	if r.BytesSent != uint64(want) || r.BytesRecv < 6<<20 {
		t.Fatalf("run traffic: sent %d (want %d), received %d", r.BytesSent, want, r.BytesRecv)
	}
}

// sameTree reports whether two object trees are equal, children in
// order.
func sameTree(a, b *flwr129.ObjectTree) bool {
	if a.GetObjectId() != b.GetObjectId() || len(a.GetChildren()) != len(b.GetChildren()) {
		return false
	}
	for i := range a.GetChildren() {
		if !sameTree(a.Children[i], b.Children[i]) {
			return false
		}
	}
	return true
}

// testLinkSharedObjects: the same array sent to two nodes is stored once,
// pushed once, and stays for one node when the other confirms it; sent
// again in the next round, nothing of it is to push.
func testLinkSharedObjects(t *testing.T, e *linkEnv) {
	n1, n2 := e.onlineNode(t, "key-1"), e.onlineNode(t, "key-2")
	runID, _ := e.runningRun(t)
	model := Chunk(200<<10, 9)
	m1, m2 := e.arrayIns(runID, n1, model), e.arrayIns(runID, n2, model)
	ids, push := e.pushIns(t, e.s, runID, m1, m2)
	// Two messages of 5 objects each; only the Message roots differ.
	if len(push) != 6 {
		t.Fatalf("objects to push %d, want 6: the shared ones once", len(push))
	}
	pushAll(t, e.s, runID, state.SuperLinkNodeID, push, m1, m2)
	if st := must(e.s.LinkStats(bg))(t); st.Objects != 6 {
		t.Fatalf("objects held %d, want 6", st.Objects)
	}
	if m, _, _ := e.s.PullInstruction(bg, n1); m.GetMetadata().GetMessageId() != ids[0] {
		t.Fatalf("node 1 pulled %v", m)
	}
	pullAll(t, e.s, runID, n1, m1)
	noErr(t, e.s.ConfirmMessageReceived(bg, runID, n1, ids[0]))
	if st := must(e.s.LinkStats(bg))(t); st.Objects != 5 {
		t.Fatalf("after node 1 confirmed: %d objects held, want node 2's 5", st.Objects)
	}
	if m, _, _ := e.s.PullInstruction(bg, n2); m.GetMetadata().GetMessageId() != ids[1] {
		t.Fatalf("node 2 pulled %v", m)
	}
	pullAll(t, e.s, runID, n2, m2)
	// Round 2 pushes the same model while node 2 still holds it.
	e.clock.Advance(time.Second)
	m3 := e.arrayIns(runID, n1, model)
	_, push = e.pushIns(t, e.s, runID, m3)
	if len(push) != 1 || push[0] != m3.Message.Metadata.MessageId {
		t.Fatalf("round 2 with a model held: objects to push %v, want only the new message", push)
	}
	noErr(t, e.s.ConfirmMessageReceived(bg, runID, n2, ids[1]))
	pushAll(t, e.s, runID, state.SuperLinkNodeID, push, m3)
	if m, _, _ := e.s.PullInstruction(bg, n1); m.GetMetadata().GetMessageId() != m3.Message.Metadata.MessageId {
		t.Fatalf("round 2: node 1 pulled %v", m)
	}
	pullAll(t, e.s, runID, n1, m3)
}

// testLinkExpiry: a message whose TTL ran out is never delivered, and is
// answered MESSAGE_UNAVAILABLE; its objects go with it.
func testLinkExpiry(t *testing.T, e *linkEnv) {
	node := e.onlineNode(t, "key")
	runID, tok := e.runningRun(t)
	ins := NewFlowerMessage(&flwr129.Metadata{RunId: runID, SrcNodeId: state.SuperLinkNodeID, DstNodeId: node,
		GroupId: "1", Ttl: 40, MessageType: "train", CreatedAt: e.now()}, []byte("w"))
	ids, push := e.pushIns(t, e.s, runID, ins)
	pushAll(t, e.s, runID, state.SuperLinkNodeID, push, ins)
	e.clock.Advance(25 * time.Second)
	must(e.s.AppHeartbeat(bg, tok))(t)
	must(e.s.NodeHeartbeat(bg, node, 30))(t)
	e.clock.Advance(16 * time.Second)
	if m, _, err := e.s.PullInstruction(bg, node); m != nil || err != nil {
		t.Fatalf("an expired message was delivered: %v %v", m, err)
	}
	got, _, err := e.s.PullReplies(bg, runID, ids)
	if err != nil || len(got) != 1 || got[0].GetError().GetCode() != 3 {
		t.Fatalf("PullReplies of an expired message = %v %v, want MESSAGE_UNAVAILABLE", got, err)
	}
	if st := must(e.s.LinkStats(bg))(t); st.Messages != 0 || st.Objects != 1 {
		t.Fatalf("after expiry: %+v, want no message and the made-up reply's object only", st)
	}
	for id := range ins.Objects {
		if _, found, _, _ := e.s.PullObject(bg, runID, node, id); found {
			t.Fatalf("object %s of an expired message is held", id)
		}
	}
}

// testLinkConcurrent: nodes pull (two pullers each) while the ServerApp
// pushes; every message goes to its node exactly once. Run it with -race.
func testLinkConcurrent(t *testing.T, e *linkEnv) {
	linkRace(t, e, []state.LinkState{e.s})
}

// linkRace pushes messages for several nodes through stores, while two
// pullers a node race for them through the stores, and the nodes answer:
// each message is delivered once, each reply reaches the ServerApp.
func linkRace(t *testing.T, e *linkEnv, stores []state.LinkState) {
	const nodes, perNode = 4, 6
	pick := func(i int) state.LinkState { return stores[i%len(stores)] }
	runID, _ := e.runningRun(t)
	ids := make([]uint64, nodes)
	for i := range ids {
		key := fmt.Sprintf("race-%d", i)
		ids[i] = must(pick(i).RegisterNode(bg, []byte(key), 0))(t)
		must(pick(i+1).ActivateNode(bg, []byte(key), 1800))(t)
	}
	var mu sync.Mutex
	got := map[string]uint64{}
	dup := 0
	var wg sync.WaitGroup
	errs := make(chan error, 2*nodes)
	for i, id := range ids {
		var n int
		for k := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := pick(i + k)
				deadline := time.Now().Add(time.Minute)
				for time.Now().Before(deadline) {
					mu.Lock()
					done := n >= perNode
					mu.Unlock()
					if done {
						return
					}
					// A poll every 10 ms, and busy answers retried as a
					// SuperNode retries them: the test is about delivery,
					// and a tighter loop starved the pushes under -race.
					m, _, err := s.PullInstruction(bg, id)
					if status.Code(err) == codes.Unavailable {
						err, m = nil, nil
					}
					if err != nil {
						errs <- err
						return
					}
					if m == nil {
						time.Sleep(10 * time.Millisecond)
						continue
					}
					mu.Lock()
					if _, seen := got[m.Metadata.MessageId]; seen {
						dup++
					}
					got[m.Metadata.MessageId] = id
					n++
					mu.Unlock()
					if m.Metadata.DstNodeId != id {
						errs <- fmt.Errorf("node %d got a message for node %d", id, m.Metadata.DstNodeId)
						return
					}
					other := pick(i + k + 1)
					res := e.reply(FlowerMessage{Message: m}, id, "update of "+m.Metadata.MessageId)
					_, push, err := other.PushReplies(bg, id, []*flwr129.Message{res.Message}, []*flwr129.ObjectTree{res.Tree}, 0)
					if err != nil {
						errs <- fmt.Errorf("node %d: PushReplies: %v", id, err)
						return
					}
					for _, oid := range push {
						if _, err := s.PushObject(bg, runID, id, oid, res.Objects[oid]); err != nil {
							errs <- fmt.Errorf("node %d: PushObject: %v", id, err)
							return
						}
					}
				}
				errs <- fmt.Errorf("node %d: its messages did not come within a minute", id)
			}()
		}
	}
	var pushed []string
	for r := range perNode {
		for i, id := range ids {
			m := NewFlowerMessage(&flwr129.Metadata{RunId: runID, SrcNodeId: state.SuperLinkNodeID, DstNodeId: id,
				GroupId: fmt.Sprint(r), Ttl: 3600, MessageType: "train", CreatedAt: e.now()}, []byte(fmt.Sprintf("round %d node %d", r, i)))
			s := pick(r + i)
			mids, push := e.pushIns(t, s, runID, m)
			pushAll(t, pick(r+i+1), runID, state.SuperLinkNodeID, push, m)
			pushed = append(pushed, mids...)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if dup != 0 || len(got) != len(pushed) {
		t.Fatalf("delivered %d distinct messages with %d duplicates, want %d and 0", len(got), dup, len(pushed))
	}
	// The ServerApp pulls the replies, asking each time for those it
	// still waits for, through the stores in turn.
	replies := map[string]bool{}
	for i := 0; len(replies) < len(pushed); i++ {
		if i > 100 {
			t.Fatalf("%d of %d replies after 100 pulls", len(replies), len(pushed))
		}
		var want []string
		for _, id := range pushed {
			if !replies[id] {
				want = append(want, id)
			}
		}
		got, _, err := pick(i).PullReplies(bg, runID, want)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range got {
			if r.Error != nil || replies[r.Metadata.ReplyToMessageId] {
				t.Fatalf("reply %v: an error, or a second reply to one message", r)
			}
			replies[r.Metadata.ReplyToMessageId] = true
		}
	}
	if got, _, err := e.s.PullReplies(bg, runID, nil); err != nil || len(got) != 0 {
		t.Fatalf("PullReplies of nothing: %v %v", got, err)
	}
	if st := must(e.s.LinkStats(bg))(t); st.Messages != 0 {
		t.Fatalf("stats %+v once the ServerApp has every reply: no message should be held", st)
	}
}
