package superlink

import (
	"cmp"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/golden"
)

// idMap translates ids between the golden run and ours, both ways.
type idMap struct {
	nodes map[int64]int64 // golden -> ours, and inverse below
	runs  map[int64]int64
	tasks map[string]string
	rnode map[int64]int64
	rrun  map[int64]int64
	rtask map[string]string
}

func newIDMap() *idMap {
	return &idMap{nodes: map[int64]int64{}, runs: map[int64]int64{}, tasks: map[string]string{},
		rnode: map[int64]int64{}, rrun: map[int64]int64{}, rtask: map[string]string{}}
}

func (m *idMap) node(golden, ours int64) { m.nodes[golden] = ours; m.rnode[ours] = golden }
func (m *idMap) run(golden, ours int64)  { m.runs[golden] = ours; m.rrun[ours] = golden }
func (m *idMap) task(golden, ours string) {
	m.tasks[golden] = ours
	m.rtask[ours] = golden
}

// rewrite replaces every node id, run id and task id in msg using the
// given maps; ids not in a map stay (the golden run's unknown ids on
// purpose, such as 42 and -7).
func rewrite(msg protoreflect.Message, nodes, runs map[int64]int64, tasks map[string]string) {
	tr := func(s string) string {
		if v, ok := tasks[s]; ok {
			return v
		}
		return s
	}
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch name := fd.Name(); {
		case name == "node_id":
			if n, ok := nodes[v.Int()]; ok {
				msg.Set(fd, protoreflect.ValueOfInt64(n))
			}
		case name == "run_id":
			if n, ok := runs[v.Int()]; ok {
				msg.Set(fd, protoreflect.ValueOfInt64(n))
			}
		case name == "task_id":
			msg.Set(fd, protoreflect.ValueOfString(tr(v.String())))
		case name == "ancestry" || name == "task_ids":
			l := v.List()
			for i := range l.Len() {
				l.Set(i, protoreflect.ValueOfString(tr(l.Get(i).String())))
			}
		case name == "results" && fd.IsMap():
			old := v.Map()
			type kv struct {
				k string
				v protoreflect.Value
			}
			var all []kv
			old.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				all = append(all, kv{k.String(), v})
				return true
			})
			for _, e := range all {
				old.Clear(protoreflect.ValueOfString(e.k).MapKey())
			}
			for _, e := range all {
				old.Set(protoreflect.ValueOfString(tr(e.k)).MapKey(), e.v)
			}
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := range l.Len() {
				rewrite(l.Get(i).Message(), nodes, runs, tasks)
			}
		case fd.IsMap():
		case fd.Message() != nil:
			rewrite(v.Message(), nodes, runs, tasks)
		}
		return true
	})
}

var isoMicro = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$`)

// clearTimes checks that each task's server-set times are present exactly
// where golden has them and well formed, then clears them in both.
func clearTimes(t *testing.T, seq int, got, want proto.Message) {
	t.Helper()
	gt, wt := tasksOf(got), tasksOf(want)
	if len(gt) != len(wt) {
		return // the comparison reports it
	}
	for i := range gt {
		g, w := gt[i], wt[i]
		if g == nil || w == nil {
			continue
		}
		if (g.PushedAt != 0) != (w.PushedAt != 0) {
			t.Errorf("seq %d: task %d pushed_at %v, golden %v", seq, i, g.PushedAt, w.PushedAt)
		}
		if (g.DeliveredAt != "") != (w.DeliveredAt != "") || g.DeliveredAt != "" && !isoMicro.MatchString(g.DeliveredAt) {
			t.Errorf("seq %d: task %d delivered_at %q, golden %q", seq, i, g.DeliveredAt, w.DeliveredAt)
		}
		g.PushedAt, w.PushedAt, g.DeliveredAt, w.DeliveredAt = 0, 0, "", ""
		if w.Error != nil { // made up by the SuperLink: created now, ttl = what remains
			if g.CreatedAt <= 0 || g.Ttl <= 0 || g.Ttl > 3600 {
				t.Errorf("seq %d: made-up result created_at %v ttl %v", seq, g.CreatedAt, g.Ttl)
			}
			g.CreatedAt, w.CreatedAt, g.Ttl, w.Ttl = 0, 0, 0, 0
		}
	}
}

func tasksOf(m proto.Message) []*flwrproto.Task {
	var out []*flwrproto.Task
	switch m := m.(type) {
	case *flwrproto.PullTaskInsResponse:
		for _, x := range m.TaskInsList {
			out = append(out, x.GetTask())
		}
	case *flwrproto.PullTaskResResponse:
		for _, x := range m.TaskResList {
			out = append(out, x.GetTask())
		}
	}
	return out
}

// edgeCodes are our answers where 1.8.0 answered UNKNOWN or accepted a
// request it should not have.
var edgeCodes = map[string]codes.Code{
	"deletenode-unknown-node": codes.NotFound,
	"pushtaskres-empty-list":  codes.InvalidArgument,
	"pushtaskins-unknown-run": codes.NotFound,
	"pushtaskins-empty-list":  codes.InvalidArgument,
	"pushtaskins-ttl-zero":    codes.InvalidArgument,
	"pulltaskres-not-a-uuid":  codes.InvalidArgument,
}

// TestGoldenReplay feeds every request of the captured Flower 1.8.0 run
// (startup, the 2-round FedAvg, shutdown, and the edge-case probe) in seq
// order through our SuperLink over gRPC and TLS, with the clock set to the
// capture's, and compares each response with the one 1.8.0 sent, ids
// translated and server times checked for shape.
func TestGoldenReplay(t *testing.T) { replayGolden(t, nil) }

// replayGolden is TestGoldenReplay on the state newState makes (nil: in
// memory), so that every implementation replays the golden run.
func replayGolden(t *testing.T, newState newStateFunc) {
	entries := golden.Index(t)
	f := startWith(t, newState)
	ids := newIDMap()

	// The capture's clock: pushed_at of the first TaskIns minus the time of
	// its push gives the unix time at which the SuperLink started.
	var base float64
	for _, e := range entries {
		if e.Seq == 12 {
			r := golden.Decode(t, e.Resp, e.RespType).(*flwrproto.PullTaskInsResponse)
			base = r.TaskInsList[0].Task.PushedAt - entries[8].T
		}
	}
	if base == 0 {
		t.Fatal("golden seq 12 holds no delivered TaskIns")
	}

	compared := 0
	for _, e := range entries {
		f.clock.Set(time.UnixMicro(int64((base + e.T) * 1e6)))
		req := golden.Decode(t, e.Req, e.ReqType)
		rewrite(req.ProtoReflect(), ids.nodes, ids.runs, ids.tasks)
		respType := strings.TrimSuffix(e.ReqType, "Request") + "Response"
		got, err := golden.New(respType)
		if err != nil {
			t.Fatal(err)
		}
		conn := f.fleetConn
		if e.PeerKind == "driver" {
			conn = f.driverConn
		}
		err = conn.Invoke(ctxT(t), e.Method, req, got, grpc.WaitForReady(true))

		if want, ok := edgeCodes[e.Label]; ok {
			if status.Code(err) != want {
				t.Errorf("seq %d %s (%s): got %v, want %v", e.Seq, e.Method, e.Label, err, want)
			} else {
				t.Logf("seq %d %s: 1.8.0 %s %q; ours %v", e.Seq, e.Label, e.Status, e.Details, err)
			}
			compared++
			continue
		}
		if e.Resp == "" {
			t.Fatalf("seq %d: golden failed with %s but no code is expected of us", e.Seq, e.Status)
		}
		if err != nil {
			t.Fatalf("seq %d %s: %v", e.Seq, e.Method, err)
		}
		want := golden.Decode(t, e.Resp, e.RespType)

		// Learn the ids ours assigned.
		switch g := got.(type) {
		case *flwrproto.CreateNodeResponse:
			ids.node(want.(*flwrproto.CreateNodeResponse).GetNode().GetNodeId(), g.GetNode().GetNodeId())
		case *flwrproto.CreateRunResponse:
			ids.run(want.(*flwrproto.CreateRunResponse).RunId, g.RunId)
		case *flwrproto.PushTaskInsResponse:
			w := want.(*flwrproto.PushTaskInsResponse)
			if len(w.TaskIds) == len(g.TaskIds) {
				for i := range g.TaskIds {
					ids.task(w.TaskIds[i], g.TaskIds[i])
				}
			}
		case *flwrproto.PushTaskResResponse:
			w := want.(*flwrproto.PushTaskResResponse)
			if len(w.Results) == 1 && len(g.Results) == 1 {
				for wk := range w.Results {
					for gk := range g.Results {
						ids.task(wk, gk)
					}
				}
			}
		case *flwrproto.PullTaskResResponse:
			w := want.(*flwrproto.PullTaskResResponse)
			for i := range min(len(w.TaskResList), len(g.TaskResList)) {
				if _, known := ids.rtask[g.TaskResList[i].TaskId]; !known {
					ids.task(w.TaskResList[i].TaskId, g.TaskResList[i].TaskId) // made up by the SuperLink
				}
			}
		}
		rewrite(got.ProtoReflect(), ids.rnode, ids.rrun, ids.rtask)
		clearTimes(t, e.Seq, got, want)
		if g, ok := got.(*flwrproto.GetNodesResponse); ok { // 1.8.0 returns a Python set
			byID := func(a, b *flwrproto.Node) int { return cmp.Compare(a.NodeId, b.NodeId) }
			slices.SortFunc(g.Nodes, byID)
			slices.SortFunc(want.(*flwrproto.GetNodesResponse).Nodes, byID)
		}
		if !proto.Equal(want, got) {
			t.Errorf("seq %d %s %s: response differs from Flower 1.8.0\ngolden: %s\nours:   %s", e.Seq, e.Phase, e.Method, prototext.Format(want), prototext.Format(got))
		}
		compared++
	}
	if compared != 115 {
		t.Errorf("compared %d RPCs, want 115", compared)
	}
	if st := f.stats(t); st.TaskInsWaiting+st.TaskInsDelivered+st.TaskResWaiting != 0 || st.Blobs != 0 {
		t.Errorf("state after the run still holds tasks: %+v", st)
	}
	for _, want := range []string{"node joined", "reason=delete_node", "reason=missed_ping"} {
		if !strings.Contains(f.logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, f.logs.String())
		}
	}
}
