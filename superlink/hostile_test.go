package superlink

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

func wantCode(t *testing.T, name string, err error, want codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: got %v, want %v", name, err, want)
		return
	}
	if !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: message %q lacks %q", name, status.Convert(err).Message(), msg)
	}
}

// TestHostileRPCs sends malformed and misdirected requests: each gets a
// status code and a message that says what is wrong, nothing is stored, and
// the SuperLink keeps answering.
func TestHostileRPCs(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	a, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	nodeA, nodeB := a.Node.NodeId, b.Node.NodeId
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	now := f.now()
	valid := func() *flwrproto.TaskIns { return taskIns(run.RunId, nodeA, now) }
	with := func(mod func(*flwrproto.TaskIns)) *flwrproto.TaskIns { ti := valid(); mod(ti); return ti }

	pushIns := []struct {
		name string
		list []*flwrproto.TaskIns
		code codes.Code
		msg  string
	}{
		{"empty list", nil, codes.InvalidArgument, "task_ins_list must not be empty"},
		{"empty TaskIns", []*flwrproto.TaskIns{{}}, codes.InvalidArgument, "task is missing"},
		{"task id set", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.TaskId = "x" })}, codes.InvalidArgument, "task_id must be empty"},
		{"no producer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Producer = nil })}, codes.InvalidArgument, "task.producer is missing"},
		{"no consumer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Consumer = nil })}, codes.InvalidArgument, "task.consumer is missing"},
		{"anonymous consumer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Consumer = &flwrproto.Node{Anonymous: true} })}, codes.InvalidArgument, "task.consumer must name a node"},
		{"no recordset", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Recordset = nil })}, codes.InvalidArgument, "exactly one of recordset or error"},
		{"recordset and error", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Error = &flwrproto.Error{} })}, codes.InvalidArgument, "exactly one of recordset or error"},
		{"ttl zero", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = 0 })}, codes.InvalidArgument, "task.ttl must be higher than zero"},
		{"ttl NaN", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = math.NaN() })}, codes.InvalidArgument, "task.ttl"},
		{"created_at too old", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.CreatedAt = 5 })}, codes.InvalidArgument, "task.created_at"},
		{"no task_type", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.TaskType = "" })}, codes.InvalidArgument, "task_type must be set"},
		{"delivered_at set", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.DeliveredAt = "now" })}, codes.InvalidArgument, "delivered_at must be empty"},
		{"ancestry set", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ancestry = []string{"x"} })}, codes.InvalidArgument, "ancestry must be empty"},
		{"unknown run", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.RunId = -7 })}, codes.NotFound, "run -7 does not exist: call CreateRun first"},
		{"unknown consumer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Consumer.NodeId = 42 })}, codes.NotFound, "consumer node 42 does not exist"},
		{"one bad of two", []*flwrproto.TaskIns{valid(), with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = -1 })}, codes.InvalidArgument, "task_ins_list[1]"},
	}
	for _, c := range pushIns {
		_, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: c.list})
		wantCode(t, "PushTaskIns "+c.name, err, c.code, c.msg)
	}
	if st := f.sl.state.stats(); st.TaskIns != 0 {
		t.Fatalf("rejected pushes stored tasks: %v", st)
	}
	f.healthy(t)

	// A task aimed at node A is not handed to node B.
	pushed, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{valid()}})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: nodeB}}); err != nil || len(r.TaskInsList) != 0 {
		t.Fatalf("node B pulled node A's task: %v %v", r, err)
	}
	insID := pushed.TaskIds[0]
	ins := valid()
	ins.TaskId = insID
	resFrom := func(node int64) *flwrproto.TaskRes { return taskRes(ins, node, now) }
	pushRes := func(name string, code codes.Code, msg string, list ...*flwrproto.TaskRes) {
		t.Helper()
		_, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: list})
		wantCode(t, "PushTaskRes "+name, err, code, msg)
	}
	pushRes("before the TaskIns was pulled", codes.FailedPrecondition, "was not pulled yet", resFrom(nodeA))
	if r, err := f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: nodeA}}); err != nil || len(r.TaskInsList) != 1 {
		t.Fatalf("node A did not get its task: %v %v", r, err)
	}
	resWith := func(mod func(*flwrproto.TaskRes)) *flwrproto.TaskRes { r := resFrom(nodeA); mod(r); return r }
	pushRes("empty list", codes.InvalidArgument, "task_res_list must not be empty")
	pushRes("empty TaskRes", codes.InvalidArgument, "task is missing", &flwrproto.TaskRes{})
	pushRes("no producer", codes.InvalidArgument, "task.producer is missing", resWith(func(r *flwrproto.TaskRes) { r.Task.Producer = nil }))
	pushRes("anonymous producer", codes.InvalidArgument, "not anonymous", resWith(func(r *flwrproto.TaskRes) { r.Task.Producer = &flwrproto.Node{Anonymous: true} }))
	pushRes("no consumer", codes.InvalidArgument, "task.consumer is missing", resWith(func(r *flwrproto.TaskRes) { r.Task.Consumer = nil }))
	pushRes("no ancestry", codes.InvalidArgument, "task.ancestry must hold", resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = nil }))
	pushRes("ancestry not a uuid", codes.InvalidArgument, "is not a TaskIns id", resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = []string{"not-a-uuid"} }))
	pushRes("ancestry names no TaskIns", codes.NotFound, "does not exist", resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = []string{"6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1"} }))
	pushRes("from another node", codes.PermissionDenied, "which was sent to node", resFrom(nodeB))
	pushRes("other run", codes.InvalidArgument, "differs from run", resWith(func(r *flwrproto.TaskRes) { r.RunId = -7 }))
	pushRes("twice in one request", codes.FailedPrecondition, "already has a result", resFrom(nodeA), resFrom(nodeA))
	if st := f.sl.state.stats(); st.TaskRes != 0 {
		t.Fatalf("rejected pushes stored results: %v", st)
	}
	if _, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{resFrom(nodeA)}}); err != nil {
		t.Fatal(err)
	}
	// A repeat by its consumer (a retry whose first try was stored) is
	// accepted and discarded: a 1.8.0 SuperNode retries refusals forever.
	if r, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{resWith(func(r *flwrproto.TaskRes) { r.GroupId = "repeat" })}}); err != nil || len(r.Results) != 1 {
		t.Fatalf("PushTaskRes repeated by its node: %v %v", r, err)
	}
	pushRes("answered already, from another node", codes.PermissionDenied, "which was sent to node", resFrom(nodeB))
	if st := f.sl.state.stats(); st.TaskRes != 1 {
		t.Fatalf("a repeated result was stored: %v", st)
	}
	f.healthy(t)

	// The other services.
	_, err = f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: []string{insID, "not-a-uuid"}})
	wantCode(t, "PullTaskRes not a uuid", err, codes.InvalidArgument, `task_ids[1] "not-a-uuid" is not a task id`)
	_, err = f.fleet.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: &flwrproto.Node{NodeId: 42}})
	wantCode(t, "DeleteNode unknown", err, codes.NotFound, "node 42 does not exist")
	_, err = f.fleet.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{})
	wantCode(t, "DeleteNode nil node", err, codes.InvalidArgument, "node is missing")
	_, err = f.fleet.Ping(ctx, &flwrproto.PingRequest{})
	wantCode(t, "Ping nil node", err, codes.InvalidArgument, "node is missing")
	_, err = f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: &flwrproto.Node{NodeId: nodeA}, PingInterval: math.Inf(1)})
	wantCode(t, "Ping infinite interval", err, codes.InvalidArgument, "ping_interval must be a finite number")
	_, err = f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: -1})
	wantCode(t, "CreateNode negative interval", err, codes.InvalidArgument, "ping_interval")
	if r, err := f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: &flwrproto.Node{NodeId: 42}, PingInterval: 30}); err != nil || r.Success {
		t.Errorf("Ping unknown node: %v %v, want success=false as 1.8.0", r, err)
	}
	for _, n := range []*flwrproto.Node{nil, {NodeId: -42}, {Anonymous: true}} {
		if r, err := f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: n}); err != nil || len(r.TaskInsList) != 0 {
			t.Errorf("PullTaskIns %v: %v %v, want empty as 1.8.0", n, r, err)
		}
	}
	if r, err := f.driver.GetNodes(ctx, &flwrproto.GetNodesRequest{RunId: -7}); err != nil || len(r.Nodes) != 0 {
		t.Errorf("GetNodes unknown run: %v %v, want empty", r, err)
	}
	f.healthy(t)

	// The result is still there for the driver after all that.
	r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: []string{insID}})
	if err != nil || len(r.TaskResList) != 1 || r.TaskResList[0].Task.Producer.NodeId != nodeA {
		t.Fatalf("PullTaskRes: %v %v", r, err)
	}
}

// TestTooLargeMessage sends a 600 MiB PushTaskIns: the 512 MiB limit
// rejects it with ResourceExhausted, and the SuperLink keeps serving.
func TestTooLargeMessage(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	run, err := f.driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	n, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	ti := taskIns(run.RunId, n.Node.NodeId, f.now())
	ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
		"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: make([]byte, 600<<20)}}},
	}}
	req := &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}}
	if proto.Size(req) <= MaxMessageSize {
		t.Fatal("test message is not over the limit")
	}
	// Our codec on the client too, so the test holds one 600 MiB slice.
	_, err = f.driver.PushTaskIns(ctx, req, grpc.ForceCodecV2(newCodec(nil)))
	wantCode(t, "600 MiB PushTaskIns", err, codes.ResourceExhausted, "larger than max")
	ti.Task.Recordset = &flwrproto.RecordSet{}
	req = nil
	f.healthy(t)
	if _, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}}); err != nil {
		t.Fatalf("a normal push after the large one: %v", err)
	}
}
