package superlink

import (
	"math"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/superlink/internal/codec"
)

// TestHostileRPCs sends malformed and misdirected requests over gRPC: each
// gets its status code and a message that says what is wrong (the state's
// answers travel unchanged; statetest checks every one of them on every
// state), what the services check themselves too, nothing is stored, and
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

	for _, c := range []struct {
		name string
		list []*flwrproto.TaskIns
		code codes.Code
		msg  string
	}{
		{"empty list", nil, codes.InvalidArgument, "task_ins_list must not be empty"},
		{"ttl NaN", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = math.NaN() })}, codes.InvalidArgument, "task.ttl"},
		{"unknown run", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.RunId = -7 })}, codes.NotFound, "run -7 does not exist: call CreateRun first"},
	} {
		_, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: c.list})
		wantCode(t, "PushTaskIns "+c.name, err, c.code, c.msg)
	}
	if st := f.stats(t); st.TaskInsWaiting != 0 {
		t.Fatalf("rejected pushes stored tasks: %+v", st)
	}
	f.healthy(t)

	pushed, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{valid()}})
	if err != nil {
		t.Fatal(err)
	}
	ins := valid()
	ins.TaskId = pushed.TaskIds[0]
	pushRes := func(name string, code codes.Code, msg string, list ...*flwrproto.TaskRes) {
		t.Helper()
		_, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: list})
		wantCode(t, "PushTaskRes "+name, err, code, msg)
	}
	pushRes("before the TaskIns was pulled", codes.FailedPrecondition, "was not pulled yet", taskRes(ins, nodeA, now))
	if r, err := f.fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: nodeA}}); err != nil || len(r.TaskInsList) != 1 {
		t.Fatalf("node A did not get its task: %v %v", r, err)
	}
	pushRes("empty TaskRes", codes.InvalidArgument, "task is missing", &flwrproto.TaskRes{})
	pushRes("from another node", codes.PermissionDenied, "which was sent to node", taskRes(ins, nodeB, now))
	if st := f.stats(t); st.TaskResWaiting != 0 {
		t.Fatalf("rejected pushes stored results: %+v", st)
	}
	f.healthy(t)

	// What the services check before the state.
	_, err = f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: []string{ins.TaskId, "not-a-uuid"}})
	wantCode(t, "PullTaskRes not a uuid", err, codes.InvalidArgument, `task_ids[1] "not-a-uuid" is not a task id`)
	_, err = f.fleet.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: &flwrproto.Node{NodeId: 42}})
	wantCode(t, "DeleteNode unknown", err, codes.NotFound, "node 42 does not exist")
	_, err = f.fleet.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{})
	wantCode(t, "DeleteNode nil node", err, codes.InvalidArgument, "node is missing")
	if _, err := f.fleet.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: &flwrproto.Node{Anonymous: true}}); err != nil {
		t.Errorf("DeleteNode anonymous: %v, want OK as 1.8.0", err)
	}
	_, err = f.fleet.Ping(ctx, &flwrproto.PingRequest{})
	wantCode(t, "Ping nil node", err, codes.InvalidArgument, "node is missing")
	_, err = f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: &flwrproto.Node{NodeId: nodeA}, PingInterval: math.Inf(1)})
	wantCode(t, "Ping infinite interval", err, codes.InvalidArgument, "ping_interval must be a finite number")
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

	// The task is still there for node A after all that.
	if _, err := f.fleet.PushTaskRes(ctx, &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{taskRes(ins, nodeA, now)}}); err != nil {
		t.Fatal(err)
	}
	r, err := f.driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: []string{ins.TaskId}})
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
	_, err = f.driver.PushTaskIns(ctx, req, grpc.ForceCodecV2(codec.New(codec.Options{})))
	wantCode(t, "600 MiB PushTaskIns", err, codes.ResourceExhausted, "PushTaskIns takes at most 512 MiB")
	ti.Task.Recordset = &flwrproto.RecordSet{}
	req = nil
	f.healthy(t)
	if _, err := f.driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}}); err != nil {
		t.Fatalf("a normal push after the large one: %v", err)
	}
}
