package superlink

import (
	"bytes"
	"sync"
	"testing"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
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
