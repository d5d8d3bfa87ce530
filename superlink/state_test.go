package superlink

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

// TestConcurrentPulls: many nodes pull (on their own connections) while the
// driver pushes; every TaskIns reaches its consumer exactly once, and every
// result reaches the driver exactly once. Run with -race.
func TestConcurrentPulls(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	const nodes, perNode = 8, 25
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, nodes)
	for i := range ids {
		r, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.Node.NodeId
	}

	var mu sync.Mutex
	got := map[string]int64{} // TaskIns id -> node that pulled it
	dup := 0
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn := dial(t, f.fleetAddr, f.caFile)
			defer conn.Close()
			c := flwrproto.NewFleetClient(conn)
			// Two pullers per node, as a node restarted in a hurry might do.
			var inner sync.WaitGroup
			var n int
			var nmu sync.Mutex
			for range 2 {
				inner.Add(1)
				go func() {
					defer inner.Done()
					for {
						nmu.Lock()
						done := n >= perNode
						nmu.Unlock()
						if done || ctx.Err() != nil {
							return
						}
						r, err := c.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: id}})
						if err != nil {
							t.Error(err)
							return
						}
						for _, ti := range r.TaskInsList {
							if ti.Task.Consumer.NodeId != id {
								t.Errorf("node %d got a task for node %d", id, ti.Task.Consumer.NodeId)
							}
							mu.Lock()
							if _, seen := got[ti.TaskId]; seen {
								dup++
							}
							got[ti.TaskId] = id
							mu.Unlock()
							nmu.Lock()
							n++
							nmu.Unlock()
							res := taskRes(ti, id, f.now())
							if _, err := c.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}}); err != nil {
								t.Errorf("node %d (%d): %v", id, i, err)
							}
						}
					}
				}()
			}
			inner.Wait()
		}()
	}

	var pushed []string
	model := &flwrproto.ParametersRecord{DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: bytes.Repeat([]byte{7}, 3*internMin)}}}
	for range perNode {
		// One PushTaskIns per node, as the 1.8.0 ServerApp does, the same
		// parameters in each.
		for _, id := range ids {
			ti := taskIns(run.RunId, id, f.now())
			ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"fitins.parameters": model}}
			r, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}})
			if err != nil {
				t.Fatal(err)
			}
			pushed = append(pushed, r.TaskIds...)
		}
	}
	if st := f.sl.state.stats(); st.Blobs != 1 {
		t.Errorf("identical arrays held %d times, want once: %v", st.Blobs, st)
	}
	wg.Wait()
	if dup != 0 || len(got) != nodes*perNode {
		t.Fatalf("delivered %d distinct TaskIns with %d duplicates, want %d and 0", len(got), dup, nodes*perNode)
	}

	results := map[string]bool{}
	for len(results) < len(pushed) && ctx.Err() == nil {
		r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: pushed})
		if err != nil {
			t.Fatal(err)
		}
		for _, tr := range r.TaskResList {
			if results[tr.Task.Ancestry[0]] {
				t.Errorf("result for %s delivered twice", tr.Task.Ancestry[0])
			}
			results[tr.Task.Ancestry[0]] = true
			if got[tr.Task.Ancestry[0]] != tr.Task.Producer.NodeId {
				t.Errorf("result for %s from node %d, which did not pull it", tr.Task.Ancestry[0], tr.Task.Producer.NodeId)
			}
		}
	}
	if st := f.sl.state.stats(); st.TaskIns != 0 || st.TaskRes != 0 || st.Blobs != 0 || st.BlobBytes != 0 {
		t.Errorf("pulled pairs not deleted, or arrays not released: %v", st)
	}
}

// TestLiveness follows a node through joining, missing its ping, coming
// back and leaving, on an injected clock.
func TestLiveness(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	online := func(id int64) bool {
		t.Helper()
		r, err := f.driver.GetNodes(ctx, &flwrproto.GetNodesRequest{RunId: run.RunId})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range r.Nodes {
			if n.NodeId == id {
				return true
			}
		}
		return false
	}
	n, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	id := n.Node.NodeId
	if id == 0 || !online(id) {
		t.Fatalf("new node %d not online", id)
	}
	f.clock.Advance(29 * time.Second)
	if !online(id) {
		t.Fatal("node offline before its ping interval ran out")
	}
	f.clock.Advance(2 * time.Second)
	if online(id) {
		t.Fatal("node still online after missing its ping")
	}
	if !strings.Contains(f.logs.String(), "reason=missed_ping") {
		t.Errorf("missed ping not logged:\n%s", f.logs)
	}
	if r, err := f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: n.Node, PingInterval: 10}); err != nil || !r.Success {
		t.Fatalf("Ping: %v %v", r, err)
	}
	if !online(id) || !strings.Contains(f.logs.String(), "node back online") {
		t.Fatal("node not back online after its Ping")
	}
	f.clock.Advance(11 * time.Second) // the new interval counts
	if online(id) {
		t.Fatal("Ping's ping_interval not used")
	}

	// ping_interval 0: offline at once, back after the next Ping.
	z, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if online(z.Node.NodeId) {
		t.Fatal("node with ping_interval 0 online")
	}
	if _, err := f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: z.Node, PingInterval: 5}); err != nil || !online(z.Node.NodeId) {
		t.Fatalf("node with ping_interval 0 not back after Ping: %v", err)
	}

	// A TaskIns for an offline node gets the made-up NODE_UNAVAILABLE
	// result, once; the pair is then gone.
	ti := taskIns(run.RunId, id, f.now())
	pushed, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(100 * time.Millisecond)
	r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: pushed.TaskIds})
	if err != nil || len(r.TaskResList) != 1 {
		t.Fatalf("PullTaskRes for an offline node: %v %v", r, err)
	}
	want := &flwrproto.Task{
		Producer: &flwrproto.Node{NodeId: id}, Consumer: &flwrproto.Node{},
		Ancestry: pushed.TaskIds, TaskType: "train",
		Error: &flwrproto.Error{Code: 3, Reason: nodeUnavailableReason},
	}
	got := proto.Clone(r.TaskResList[0].Task).(*flwrproto.Task)
	if got.Ttl <= 3599 || got.Ttl >= 3600 || got.CreatedAt != f.now() || got.DeliveredAt == "" || got.PushedAt != 0 {
		t.Errorf("made-up result times: %v", got)
	}
	got.Ttl, got.CreatedAt, got.DeliveredAt = 0, 0, ""
	if !proto.Equal(got, want) {
		t.Errorf("made-up result\n got %v\nwant %v", got, want)
	}
	if r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: pushed.TaskIds}); err != nil || len(r.TaskResList) != 0 {
		t.Fatalf("made-up result delivered twice: %v %v", r, err)
	}

	// A deleted node: its undelivered task is answered NODE_UNAVAILABLE
	// (1.8.0 fails with UNKNOWN), and the node is gone.
	ti = taskIns(run.RunId, z.Node.NodeId, f.now())
	pushed, err = f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.fleet.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: z.Node}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(f.logs.String(), "reason=delete_node") {
		t.Errorf("DeleteNode not logged:\n%s", f.logs)
	}
	if r, err := f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: z.Node, PingInterval: 5}); err != nil || r.Success {
		t.Errorf("Ping of a deleted node: %v %v", r, err)
	}
	r, err = f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: pushed.TaskIds})
	if err != nil || len(r.TaskResList) != 1 || r.TaskResList[0].Task.GetError().GetCode() != 3 {
		t.Fatalf("PullTaskRes for a deleted node: %v %v", r, err)
	}
	if st := f.sl.state.stats(); st.TaskIns != 0 || st.Nodes != 1 {
		t.Errorf("state: %v", st)
	}
}

// TestSweepLogsMissedPing: Serve's sweeper notices a node that stopped
// pinging even when nobody asks for the node list.
func TestSweepLogsMissedPing(t *testing.T) {
	f := start(t)
	if _, err := f.fleet.CreateNode(ctxT(t), &flwrproto.CreateNodeRequest{PingInterval: 1}); err != nil {
		t.Fatal(err)
	}
	f.sl.state.sweep()
	if strings.Contains(f.logs.String(), "missed_ping") {
		t.Fatal("logged a missed ping too early")
	}
	f.clock.Advance(2 * time.Second)
	f.sl.state.sweep()
	f.sl.state.sweep()
	if c := strings.Count(f.logs.String(), "missed_ping"); c != 1 {
		t.Fatalf("missed ping logged %d times, want once:\n%s", c, f.logs)
	}
}

// TestDecodeInterns: a large array that the SuperLink already holds is not
// copied again when it arrives; a new one is copied out of the frames (which
// gRPC reuses) into memory of its own.
func TestDecodeInterns(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	held := randomBytes(r, 2*bigBytes)
	in := newInterner()
	in.intern([]preparedBlob{{arr: &flwrproto.Array{Data: held}, hash: hashOf(held)}})
	c := newCodec(in)

	msg := &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{taskIns(1, 2, 1.8e9)}}
	fresh := randomBytes(r, bigBytes+3)
	msg.TaskInsList[0].Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
		"p": {DataKeys: []string{"0", "1"}, DataValues: []*flwrproto.Array{{Data: bytes.Clone(held)}, {Data: fresh}}},
	}}
	wire, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var got flwrproto.PushTaskInsRequest
	if err := c.Unmarshal(splitBuffers(wire, 16<<10), &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, msg) {
		t.Fatal("decoded message differs")
	}
	vals := got.TaskInsList[0].Task.Recordset.Parameters["p"].DataValues
	if &vals[0].Data[0] != &held[0] {
		t.Error("an array the SuperLink holds was copied again")
	}
	clear(wire) // gRPC reuses its frames
	if !bytes.Equal(vals[1].Data, fresh) {
		t.Error("a new array still points into the frames")
	}

	// Malformed input falls back to proto's own error.
	if err := c.Unmarshal(splitBuffers(append(bytes.Repeat([]byte{0x0a, 0xff}, bigBytes), 0xff), 100), &got); err == nil {
		t.Error("malformed message decoded without error")
	}
}

func hashOf(b []byte) uint64 {
	return prepareBlobs(&flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"": {DataValues: []*flwrproto.Array{{Data: b}}}}})[0].hash
}

// TestSweepForgetsExpiredTasks: tasks that a ServerApp never pulls (it went
// away) are forgotten, with their results and their arrays, once their ttl
// ran out; younger tasks and their node queue entries stay.
func TestSweepForgetsExpiredTasks(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nr, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 1e6})
	if err != nil {
		t.Fatal(err)
	}
	node := nr.Node.NodeId
	big := bytes.Repeat([]byte{7}, 2*internMin)
	push := func(ttl float64) string {
		ti := taskIns(run.RunId, node, f.now())
		ti.Task.Ttl = ttl
		ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
			"fitins.parameters": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Stype: "numpy.ndarray", Data: big}}},
		}}
		r, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}})
		if err != nil {
			t.Fatal(err)
		}
		return r.TaskIds[0]
	}
	// One answered but never pulled, one never delivered, one long-lived.
	push(60)
	pr, err := f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: nr.Node})
	if err != nil || len(pr.TaskInsList) != 1 {
		t.Fatalf("pull: %v %v", pr, err)
	}
	if _, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{taskRes(pr.TaskInsList[0], node, f.now())}}); err != nil {
		t.Fatal(err)
	}
	push(60)
	keep := push(7200)
	if st := f.sl.state.stats(); st.TaskIns != 3 || st.TaskRes != 1 || st.Blobs != 1 {
		t.Fatalf("before: %v", st)
	}

	f.clock.Advance(60*time.Second + expiryGrace - time.Second)
	f.sl.state.sweep()
	if st := f.sl.state.stats(); st.TaskIns != 3 {
		t.Fatalf("forgotten before ttl + grace: %v", st)
	}
	f.clock.Advance(2 * time.Second)
	f.sl.state.sweep()
	if st := f.sl.state.stats(); st.TaskIns != 1 || st.TaskRes != 0 || st.Blobs != 1 {
		t.Fatalf("after ttl + grace: %v, want only the long-lived task", st)
	}
	pr, err = f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: nr.Node})
	if err != nil || len(pr.TaskInsList) != 1 || pr.TaskInsList[0].TaskId != keep {
		t.Fatalf("pull after sweep: %v %v, want %s", pr, err, keep)
	}
	f.clock.Advance(2 * time.Hour)
	f.sl.state.sweep()
	if st := f.sl.state.stats(); st.TaskIns != 0 || st.Blobs != 0 || st.BlobBytes != 0 {
		t.Fatalf("at the end: %v", st)
	}
}

// TestLateResultAccepted: a node cut off while training is reported
// NODE_UNAVAILABLE to the ServerApp; when it comes back, its result is
// accepted (OK) and discarded, as 1.8.0 accepts it, instead of a refusal
// that a 1.8.0 SuperNode would retry forever. Other nodes still get
// NotFound for that TaskIns, and the memory is freed.
func TestLateResultAccepted(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nr, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	other, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 1e6})
	if err != nil {
		t.Fatal(err)
	}
	node := nr.Node.NodeId
	pushed, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{taskIns(run.RunId, node, f.now())}})
	if err != nil {
		t.Fatal(err)
	}
	pr, err := f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: nr.Node})
	if err != nil || len(pr.TaskInsList) != 1 {
		t.Fatalf("pull: %v %v", pr, err)
	}
	f.clock.Advance(31 * time.Second) // the node missed its ping
	got, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: pushed.TaskIds})
	if err != nil || len(got.TaskResList) != 1 || got.TaskResList[0].Task.Error.GetCode() != nodeUnavailableCode {
		t.Fatalf("PullTaskRes: %v %v, want NODE_UNAVAILABLE", got, err)
	}

	if _, err := f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: nr.Node, PingInterval: 30}); err != nil {
		t.Fatal(err)
	}
	res := taskRes(pr.TaskInsList[0], node, f.now())
	r, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}})
	if err != nil || len(r.Results) != 1 || r.Reconnect.GetReconnect() != reconnectSeconds {
		t.Fatalf("late PushTaskRes: %v %v, want OK", r, err)
	}
	wrong := taskRes(pr.TaskInsList[0], other.Node.NodeId, f.now())
	_, err = f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{wrong}})
	wantCode(t, "late PushTaskRes from another node", err, codes.NotFound, "does not exist")
	if st := f.sl.state.stats(); st.TaskIns != 0 || st.TaskRes != 0 {
		t.Fatalf("state after a late result: %v", st)
	}
	got, err = f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: pushed.TaskIds})
	if err != nil || len(got.TaskResList) != 0 {
		t.Fatalf("PullTaskRes again: %v %v, want nothing", got, err)
	}
	f.clock.Advance(2 * time.Hour)
	f.sl.state.sweep()
	if n := len(f.sl.state.gone); n != 0 {
		t.Fatalf("%d delivered TaskIns still remembered after their ttl", n)
	}
}
