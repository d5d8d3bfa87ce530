package superlink

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
)

// TestConcurrentPulls: many nodes pull (on their own connections) while the
// driver pushes; every TaskIns reaches its consumer exactly once, and every
// result reaches the driver exactly once, through gRPC and the codec. Run
// with -race. (The semantics of the state are checked by statetest, on
// every implementation.)
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
	model := &flwrproto.ParametersRecord{DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: bytes.Repeat([]byte{7}, 3*state.BlobMin)}}}
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
	if st := f.stats(t); st.Blobs != 1 {
		t.Errorf("identical arrays held %d times, want once: %+v", st.Blobs, st)
	}
	wg.Wait()
	if dup != 0 || len(got) != nodes*perNode {
		t.Fatalf("delivered %d distinct TaskIns with %d duplicates, want %d and 0", len(got), dup, nodes*perNode)
	}

	results := map[string]bool{}
	for len(results) < len(pushed) && ctx.Err() == nil {
		var want []string // as a ServerApp does: what it still waits for
		for _, id := range pushed {
			if !results[id] {
				want = append(want, id)
			}
		}
		r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: want})
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
	if st := f.stats(t); st.TaskInsWaiting+st.TaskInsDelivered+st.TaskResWaiting != 0 || st.Blobs != 0 || st.BlobBytes != 0 {
		t.Errorf("pulled pairs not deleted, or arrays not released: %+v", st)
	}
}

// TestDecodeInterns: a large array that the state already holds is not
// copied again when it arrives; a new one is copied out of the frames (which
// gRPC reuses) into memory of its own.
func TestDecodeInterns(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	held := randomBytes(r, 2*bigBytes)
	st := memstate.New(memstate.Options{})
	ctx := ctxT(t)
	node, err := st.CreateNode(ctx, state.NewNode{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	run, err := st.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hold := taskIns(run, node, 1.8e9)
	hold.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataValues: []*flwrproto.Array{{Data: held}}}}}
	if _, err := st.PushTaskIns(ctx, []*flwrproto.TaskIns{hold}); err != nil {
		t.Fatal(err)
	}
	c := newCodec(st)

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
