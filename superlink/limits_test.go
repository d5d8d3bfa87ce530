package superlink

import (
	"bytes"
	"context"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/superlink/internal/codec"
)

// pushResults runs one round in which each node answers a TaskIns with a
// result carrying data (the same slice for every node), all nodes at once
// when together is set, else one after another; it then pulls every
// result through the Driver API, one at a time, and checks that each
// arrived whole.
func pushResults(t *testing.T, f *fixture, nodes int, data []byte, together bool) {
	t.Helper()
	// Gigabytes over TLS on a shared machine (and under -race): minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// One connection per node, as separate SuperNodes have.
	clients := make([]flwrproto.FleetClient, nodes)
	ids := make([]int64, nodes)
	insIDs := make([]string, nodes)
	for i := range clients {
		conn := dial(t, f.fleetAddr, f.caFile)
		t.Cleanup(func() { conn.Close() })
		clients[i] = flwrproto.NewFleetClient(conn)
		r, err := clients[i].CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 600})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = r.Node.NodeId
		p, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{taskIns(run.RunId, ids[i], f.now())}})
		if err != nil {
			t.Fatal(err)
		}
		insIDs[i] = p.TaskIds[0]
	}
	want := crc32.ChecksumIEEE(data)
	push := func(i int) error {
		r, err := clients[i].PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: ids[i]}})
		if err != nil || len(r.TaskInsList) != 1 {
			return fmt.Errorf("node %d: PullTaskIns: %v %v", i, r, err)
		}
		res := taskRes(r.TaskInsList[0], ids[i], f.now())
		res.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
			"fitres.parameters": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Dtype: "<f4", Stype: "numpy.ndarray", Data: data}}},
		}}
		// Our codec on the client too: it sends the array from where it
		// is instead of copying it into a buffer per push.
		_, err = clients[i].PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}}, grpc.ForceCodecV2(codec.New(codec.Options{})))
		if err != nil {
			return fmt.Errorf("node %d: PushTaskRes: %w", i, err)
		}
		return nil
	}
	if together {
		errs := make(chan error, nodes)
		for i := range nodes {
			go func() { errs <- push(i) }()
		}
		for range nodes {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	} else {
		for i := range nodes {
			if err := push(i); err != nil {
				t.Fatal(err)
			}
			// The budget is free before the answer leaves, so the
			// node's next request finds it free.
			if n := f.sl.LimitStats().InflightBytes; n != 0 {
				t.Fatalf("node %d has its answer, but %d bytes are still counted in flight", i, n)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for i, id := range insIDs {
		r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: []string{id}}, grpc.ForceCodecV2(codec.New(codec.Options{})))
		if err != nil || len(r.TaskResList) != 1 {
			t.Fatalf("result of node %d: %v", i, err)
		}
		got := r.TaskResList[0].Task.Recordset.Parameters["fitres.parameters"].DataValues[0].Data
		if len(got) != len(data) || crc32.ChecksumIEEE(got) != want {
			t.Fatalf("result of node %d: %d bytes, want %d (checksums differ: %v)", i, len(got), len(data), crc32.ChecksumIEEE(got) != want)
		}
	}
}

// pattern returns n bytes that are not all alike, so that a result mixed
// up or cut would show.
func pattern(n int) []byte {
	b := bytes.Repeat([]byte("sepal limits "), n/13+1)[:n]
	for i := 0; i < n; i += 4096 {
		b[i] = byte(i >> 12)
	}
	return b
}

// Under the default budget (1 GiB), legitimate results of 512 MiB, the
// most a message may carry, go through one after another, whole.
func TestLegitimate512MiBPushes(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 1 GiB: skipped under -short (CI runs it)")
	}
	f := startLimited(t, Limits{})
	data := pattern(MaxMessageSize - 4096) // room for the rest of the message
	pushResults(t, f, 2, data, false)
	if st := f.sl.LimitStats(); st.Refused[RefusedBusy]+st.Refused[RefusedTooLarge] != 0 || st.InflightBytes != 0 {
		t.Fatalf("stats after the pushes: %+v", st)
	}
}

// Under the default budget, 16 nodes pushing 32 MiB results at once all
// succeed at the first try.
func Test16Nodes32MiBAtOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 512 MiB at once: skipped under -short (the full suite runs it)")
	}
	f := startLimited(t, Limits{})
	pushResults(t, f, 16, pattern(32<<20), true)
	if st := f.sl.LimitStats(); st.Refused[RefusedBusy]+st.Refused[RefusedTooLarge] != 0 || st.InflightBytes != 0 {
		t.Fatalf("stats after the pushes: %+v", st)
	}
}
