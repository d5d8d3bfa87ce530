package statetest

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
)

// testConcurrent: nodes pull (two pullers each, as a node restarted in a
// hurry might do) and answer while the driver pushes; every TaskIns reaches
// its consumer exactly once and every result the driver exactly once. Run
// it with -race.
func testConcurrent(t *testing.T, e *env) {
	concurrentRound(t, e, []state.State{e.s})
}

// testConcurrentShared is testConcurrent with two States on one store, as
// two SuperLink processes on one database: every call alternates between
// them, and the pullers of one node race through both.
func testConcurrentShared(t *testing.T, e *env) {
	concurrentRound(t, e, []state.State{e.s, e.open(t)})
}

func concurrentRound(t *testing.T, e *env, states []state.State) {
	ctx := ctxOf(t)
	const nodes, perNode = 6, 10
	pick := func(i int) state.State { return states[i%len(states)] }
	run := e.run(t, pick(1))
	ids := make([]int64, nodes)
	for i := range ids {
		ids[i] = e.node(t, pick(i), 3600)
	}

	var mu sync.Mutex
	got := map[string]int64{} // TaskIns id -> node that pulled it
	dup := 0
	var wg sync.WaitGroup
	for i, id := range ids {
		var n int // TaskIns this node got, under mu
		for k := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, other := pick(i+k), pick(i+k+1)
				for {
					mu.Lock()
					done := n >= perNode
					mu.Unlock()
					if done || ctx.Err() != nil {
						return
					}
					list, err := s.PullTaskIns(ctx, id, "")
					if err != nil {
						t.Error(err)
						return
					}
					if len(list) == 0 {
						time.Sleep(time.Millisecond)
						continue
					}
					for _, ti := range list {
						if ti.Task.Consumer.NodeId != id {
							t.Errorf("node %d got a task for node %d", id, ti.Task.Consumer.NodeId)
						}
						mu.Lock()
						if _, seen := got[ti.TaskId]; seen {
							dup++
						}
						got[ti.TaskId] = id
						n++
						mu.Unlock()
						if _, err := other.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ti, id, e.now())}, ""); err != nil {
							t.Errorf("node %d: %v", id, err)
						}
					}
				}
			}()
		}
	}

	model := &flwrproto.ParametersRecord{DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: blobBytes(7, 3*state.BlobMin)}}}
	var pushed []string
	for r := range perNode {
		// One PushTaskIns per node, as the 1.8.0 ServerApp does, the same
		// parameters in each.
		for i, id := range ids {
			ti := TaskIns(run, id, e.now())
			ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"fitins.parameters": proto.Clone(model).(*flwrproto.ParametersRecord)}}
			list, err := pick(r+i).PushTaskIns(ctx, []*flwrproto.TaskIns{ti})
			if err != nil {
				t.Fatal(err)
			}
			pushed = append(pushed, list...)
		}
	}
	if st := e.stats(t, pick(0)); st.Blobs != 1 {
		t.Errorf("identical arrays held %d times, want once: %+v", st.Blobs, st)
	}
	wg.Wait()
	if dup != 0 || len(got) != nodes*perNode {
		t.Fatalf("delivered %d distinct TaskIns with %d duplicates, want %d and 0", len(got), dup, nodes*perNode)
	}

	results := map[string]bool{}
	for i := 0; len(results) < len(pushed) && ctx.Err() == nil; i++ {
		var want []string // as a ServerApp does: what it still waits for
		for _, id := range pushed {
			if !results[id] {
				want = append(want, id)
			}
		}
		list, err := pick(i).PullTaskRes(ctx, want)
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range list {
			p := tr.Task.Ancestry[0]
			if results[p] {
				t.Errorf("result for %s delivered twice", p)
			}
			results[p] = true
			if got[p] != tr.Task.Producer.NodeId {
				t.Errorf("result for %s from node %d, which did not pull it", p, tr.Task.Producer.NodeId)
			}
		}
	}
	if len(results) != len(pushed) {
		t.Fatalf("%d results delivered of the %d TaskIns pushed before the test's deadline (%v)", len(results), len(pushed), ctx.Err())
	}
	for _, s := range states {
		if st := e.stats(t, s); st.TaskInsWaiting+st.TaskInsDelivered+st.TaskResWaiting != 0 || st.Blobs != 0 || st.BlobBytes != 0 {
			t.Errorf("pulled pairs not deleted, or arrays not released: %+v", st)
		}
	}
}

// testSharedStore: two States on one store are one state: a node created
// through one pings through the other, a task pushed through one is pulled
// through the other, once, and its result comes back through either.
func testSharedStore(t *testing.T, e *env) {
	ctx := ctxOf(t)
	s1, s2 := e.s, e.open(t)
	node := must(s1.CreateNode(ctx, state.NewNode{PingInterval: 30, Identity: "node-a"}))(t)
	if ok, err := s2.Ping(ctx, node, 30, "node-a"); err != nil || !ok {
		t.Fatalf("Ping through the other State: %v %v", ok, err)
	}
	if _, err := s2.Ping(ctx, node, 30, "node-b"); err == nil {
		t.Error("the other State did not check the node's identity")
	}
	run := e.run(t, s2)
	if !e.online(t, s1, run, node) {
		t.Fatal("node not listed through the State that did not create the run")
	}
	ti := TaskIns(run, node, e.now())
	ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: blobBytes(3, 5*state.BlobMin)}}}}}
	want := proto.Clone(ti.Task.Recordset).(*flwrproto.RecordSet)
	ins := e.push(t, s1, ti)
	got := e.pullOne(t, s2, node)
	if got.TaskId != ins.TaskId || !proto.Equal(got.Task.Recordset, want) {
		t.Fatal("TaskIns pulled through the other State differs")
	}
	e.pullNone(t, s1, node)
	e.answer(t, s1, got, node)
	if st1, st2 := e.stats(t, s1), e.stats(t, s2); st1 != st2 || st1.TaskResWaiting != 1 || st1.Blobs != 1 {
		t.Errorf("the States see different counts:\n%+v\n%+v", st1, st2)
	}
	res := must(s2.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	if len(res) != 1 || res[0].Task.Producer.NodeId != node {
		t.Fatalf("result through the other State: %v", res)
	}
	// A ServerApp that lost the response asks again through the other.
	if again := must(s1.PullTaskRes(ctx, []string{ins.TaskId}))(t); len(again) != 1 || again[0].TaskId != res[0].TaskId {
		t.Fatalf("result asked for again through the other State: %v", again)
	}
	// The "already answered" memory is shared too.
	if _, err := s2.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(got, node, e.now())}, ""); err != nil {
		t.Errorf("late result through the other State: %v", err)
	}
	if err := s2.DeleteNode(ctx, node, ""); err != nil {
		t.Fatal(err)
	}
	if ok, err := s1.Ping(ctx, node, 30, ""); err != nil || ok {
		t.Errorf("Ping of a node deleted through the other State: %v %v", ok, err)
	}
	if st := e.stats(t, s1); st.Blobs != 0 || st.Nodes != 0 || st.Runs != 1 {
		t.Errorf("at the end: %+v", st)
	}
}

// testRestart: what a State committed is there for the State opened after
// it was closed: nodes, runs, TaskIns not delivered, TaskIns delivered but
// not answered (whose answer is then accepted and reaches the driver),
// results not pulled, and the "already answered" memory.
func testRestart(t *testing.T, e *env) {
	ctx := ctxOf(t)
	s := e.s
	run := e.run(t, s)
	a := must(s.CreateNode(ctx, state.NewNode{PingInterval: 3600, Identity: "node-a"}))(t)
	b := e.node(t, s, 3600)
	big := blobBytes(11, 4*state.BlobMin)
	withModel := func(ti *flwrproto.TaskIns) *flwrproto.TaskIns {
		ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: bytes.Clone(big)}}}}}
		return ti
	}
	delivered := e.push(t, s, withModel(TaskIns(run, a, e.now())))
	waiting := withModel(TaskIns(run, a, e.now()))
	want := proto.Clone(waiting).(*flwrproto.TaskIns)
	e.push(t, s, waiting)
	want.TaskId, want.Task.PushedAt = waiting.TaskId, waiting.Task.PushedAt
	answered := e.push(t, s, TaskIns(run, b, e.now()))
	gone := e.push(t, s, TaskIns(run, b, e.now()))
	sent := e.push(t, s, TaskIns(run, b, e.now()))
	pa := e.pullOne(t, s, a)
	if pa.TaskId != delivered.TaskId {
		t.Fatal("not delivered in push order")
	}
	pAnswered, pGone, pSent := e.pullOne(t, s, b), e.pullOne(t, s, b), e.pullOne(t, s, b)
	res := e.answer(t, s, pAnswered, b)
	e.answer(t, s, pGone, b)
	sentRes := e.answer(t, s, pSent, b)
	if r := must(s.PullTaskRes(ctx, []string{gone.TaskId}))(t); len(r) != 1 {
		t.Fatal("result not delivered")
	}
	// sent's result is delivered, and gone's forgotten (not asked again).
	if r := must(s.PullTaskRes(ctx, []string{sent.TaskId}))(t); len(r) != 1 {
		t.Fatal("result not delivered")
	}
	before := e.stats(t, s)
	nodesBefore := must(s.Nodes(ctx))(t)
	runsBefore := must(s.Runs(ctx, 0))(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	e.clock.Advance(10 * time.Second)
	s = e.open(t)
	if after := e.stats(t, s); after != before {
		t.Errorf("stats after the restart:\n got %+v\nwant %+v", after, before)
	}
	// OnlineUntil may move: the restart grace.
	key := func(ns []state.NodeInfo) string {
		var b bytes.Buffer
		for _, n := range ns {
			fmt.Fprintf(&b, "%d %q %v %v;", n.ID, n.Identity, n.PingInterval, n.Created.UnixMicro())
		}
		return b.String()
	}
	if n := must(s.Nodes(ctx))(t); key(n) != key(nodesBefore) {
		t.Errorf("nodes after the restart:\n got %+v\nwant %+v", n, nodesBefore)
	}
	if r := must(s.Runs(ctx, 0))(t); fmt.Sprint(r) != fmt.Sprint(runsBefore) {
		t.Errorf("runs after the restart:\n got %+v\nwant %+v", r, runsBefore)
	}
	if !e.online(t, s, run, a) || !e.online(t, s, run, b) {
		t.Fatal("nodes not online after the restart")
	}
	// The TaskIns delivered before the restart and not answered: its node
	// asks again, so it did not get it (the SuperLink died while sending
	// it); it gets it again, then the next one.
	if again := e.pullOne(t, s, a); again.TaskId != delivered.TaskId || !proto.Equal(again.Task.Recordset, want.Task.Recordset) {
		t.Errorf("TaskIns delivered before the restart and asked again: got %s, want %s with its arrays", again.TaskId, delivered.TaskId)
	}
	got := proto.Clone(e.pullOne(t, s, a)).(*flwrproto.TaskIns)
	got.Task.DeliveredAt = ""
	if !proto.Equal(got, want) {
		t.Errorf("TaskIns %s pulled after the restart differs from the one pushed", got.TaskId)
	}
	e.pullNone(t, s, a)
	if _, err := s.PullTaskIns(ctx, a, "node-b"); err == nil {
		t.Error("the node's identity was lost in the restart")
	}
	e.answer(t, s, pa, a) // delivered before, answered after
	// A repeat of a result stored before, of one delivered before, and of
	// one delivered and forgotten before: accepted, not stored.
	for _, p := range []*flwrproto.TaskIns{pAnswered, pSent, pGone} {
		must(s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(p, b, e.now())}, ""))(t)
	}
	// The result delivered just before the restart, asked again: the
	// ServerApp did not get it.
	out := must(s.PullTaskRes(ctx, []string{delivered.TaskId, answered.TaskId, sent.TaskId, gone.TaskId}))(t)
	if len(out) != 3 || out[0].Task.Ancestry[0] != delivered.TaskId || out[1].TaskId != res.TaskId || out[2].TaskId != sentRes.TaskId {
		t.Fatalf("results after the restart: %v", out)
	}
	if st := e.stats(t, s); st.TaskInsDelivered != 1 || st.TaskResWaiting != 0 || st.TaskInsWaiting != 0 || st.Blobs != 1 {
		t.Errorf("at the end: %+v", st)
	}
}

// testRestartGrace: a node whose ping fell due while no State was open is
// not offline the moment one opens again: it gets its ping interval from
// then. A node already offline before stays offline.
func testRestartGrace(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	on := e.node(t, e.s, 30)
	off := e.node(t, e.s, 5)
	e.clock.Advance(10 * time.Second)
	if e.online(t, e.s, run, off) || !e.online(t, e.s, run, on) {
		t.Fatal("liveness before the restart")
	}
	if err := e.s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Close(); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(100 * time.Second) // down far longer than the ping interval
	s := e.open(t)
	if !e.online(t, s, run, on) {
		t.Fatal("a node whose ping fell due while the SuperLink was down is offline at once")
	}
	if e.online(t, s, run, off) {
		t.Error("a node offline before the restart came back online without a ping")
	}
	e.clock.Advance(29 * time.Second)
	if !e.online(t, s, run, on) {
		t.Fatal("the grace is shorter than the node's ping interval")
	}
	e.clock.Advance(2 * time.Second)
	if e.online(t, s, run, on) {
		t.Fatal("the node is online past its grace without a ping")
	}
	if ok, err := s.Ping(context.Background(), on, 30, ""); err != nil || !ok || !e.online(t, s, run, on) {
		t.Fatalf("Ping after the grace: %v %v", ok, err)
	}
}
