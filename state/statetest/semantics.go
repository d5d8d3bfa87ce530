package statetest

import (
	"bytes"
	"context"
	"math"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/rules"
)

var isoMicro = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$`)

// testIDs: node and run ids are random, non-zero and distinct; task ids
// are UUID4s set in the pushed messages, with pushed_at from the clock.
func testIDs(t *testing.T, e *env) {
	ctx := ctxOf(t)
	seen := map[int64]bool{}
	for range 20 {
		id := e.node(t, e.s, 30)
		r := e.run(t, e.s)
		if id == 0 || r == 0 || seen[id] || seen[r] {
			t.Fatalf("node %d run %d: zero or repeated", id, r)
		}
		seen[id], seen[r] = true, true
	}
	run, node := e.run(t, e.s), e.node(t, e.s, 30)
	list := []*flwrproto.TaskIns{TaskIns(run, node, e.now()), TaskIns(run, node, e.now())}
	ids := must(e.s.PushTaskIns(ctx, list))(t)
	if len(ids) != 2 || ids[0] == ids[1] {
		t.Fatalf("PushTaskIns ids %v", ids)
	}
	for i, id := range ids {
		u, err := uuid.Parse(id)
		if err != nil || u.Version() != 4 || list[i].TaskId != id {
			t.Errorf("task id %q (version %v, err %v), message has %q", id, u.Version(), err, list[i].TaskId)
		}
		if list[i].Task.PushedAt != e.now() {
			t.Errorf("pushed_at %v, want the clock's %v", list[i].Task.PushedAt, e.now())
		}
	}
}

// testLiveness follows a node through joining, missing its ping, coming
// back and leaving, on the suite's clock.
func testLiveness(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	id := e.node(t, e.s, 30)
	if !e.online(t, e.s, run, id) {
		t.Fatalf("new node %d not online", id)
	}
	e.clock.Advance(29 * time.Second)
	if !e.online(t, e.s, run, id) {
		t.Fatal("node offline before its ping interval ran out")
	}
	e.clock.Advance(2 * time.Second)
	if e.online(t, e.s, run, id) {
		t.Fatal("node still online after missing its ping")
	}
	e.wantLog(t, "node joined", "reason=missed_ping")
	if ok, err := e.s.Ping(ctx, id, 10, ""); err != nil || !ok {
		t.Fatalf("Ping: %v %v", ok, err)
	}
	if !e.online(t, e.s, run, id) {
		t.Fatal("node not back online after its Ping")
	}
	e.wantLog(t, "node back online")
	e.clock.Advance(11 * time.Second) // the new interval counts
	if e.online(t, e.s, run, id) {
		t.Fatal("Ping's ping_interval not used")
	}

	// ping_interval 0: offline at once, back after the next Ping.
	z := e.node(t, e.s, 0)
	if e.online(t, e.s, run, z) {
		t.Fatal("node with ping_interval 0 online")
	}
	if ok, err := e.s.Ping(ctx, z, 5, ""); err != nil || !ok || !e.online(t, e.s, run, z) {
		t.Fatalf("node with ping_interval 0 not back after Ping: %v %v", ok, err)
	}
	// A huge interval is capped, not an overflow into the past.
	big := e.node(t, e.s, 1e300)
	e.clock.Advance(365 * 24 * time.Hour)
	if !e.online(t, e.s, run, big) {
		t.Fatal("node with ping_interval 1e300 offline after a year")
	}

	// GetNodes lists online nodes in the order they joined.
	a, b := e.node(t, e.s, 30), e.node(t, e.s, 30)
	var got []int64
	for _, n := range must(e.s.GetNodes(ctx, run))(t) {
		got = append(got, n.NodeId)
	}
	if want := []int64{big, a, b}; !slices.Equal(got, want) {
		t.Errorf("GetNodes %v, want %v (join order, online only)", got, want)
	}

	// DeleteNode: gone for Ping and GetNodes.
	if err := e.s.DeleteNode(ctx, a, ""); err != nil {
		t.Fatal(err)
	}
	e.wantLog(t, "reason=delete_node")
	if ok, err := e.s.Ping(ctx, a, 5, ""); err != nil || ok {
		t.Errorf("Ping of a deleted node: %v %v, want false", ok, err)
	}
	if e.online(t, e.s, run, a) {
		t.Error("deleted node listed by GetNodes")
	}
	WantCode(t, "DeleteNode twice", e.s.DeleteNode(ctx, a, ""), codes.NotFound, "does not exist")
}

// testNodeUnavailable: a TaskIns for an offline node gets the made-up
// NODE_UNAVAILABLE result, field for field as 1.8.0, once; so does one for
// a deleted node (1.8.0 fails with UNKNOWN there).
func testNodeUnavailable(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	id := e.node(t, e.s, 30)
	e.clock.Advance(31 * time.Second)
	ins := e.push(t, e.s, TaskIns(run, id, e.now()))
	e.clock.Advance(100 * time.Millisecond)
	r := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	if len(r) != 1 {
		t.Fatalf("PullTaskRes for an offline node: %v", r)
	}
	want := &flwrproto.Task{
		Producer: &flwrproto.Node{NodeId: id}, Consumer: &flwrproto.Node{},
		Ancestry: []string{ins.TaskId}, TaskType: "train",
		Error: &flwrproto.Error{Code: state.NodeUnavailableCode, Reason: state.NodeUnavailableReason},
	}
	got := proto.Clone(r[0].Task).(*flwrproto.Task)
	if got.Ttl <= 3599 || got.Ttl >= 3600 || got.CreatedAt != e.now() || !isoMicro.MatchString(got.DeliveredAt) || got.PushedAt != 0 {
		t.Errorf("made-up result times: %v", got)
	}
	if _, err := uuid.Parse(r[0].TaskId); err != nil || r[0].RunId != run || r[0].GroupId != ins.GroupId {
		t.Errorf("made-up result: id %q run %d group %q", r[0].TaskId, r[0].RunId, r[0].GroupId)
	}
	got.Ttl, got.CreatedAt, got.DeliveredAt = 0, 0, ""
	if !proto.Equal(got, want) {
		t.Errorf("made-up result\n got %v\nwant %v", got, want)
	}
	// Asked again (the response was lost): the same result again.
	if again := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t); len(again) != 1 || again[0].TaskId != r[0].TaskId {
		t.Fatalf("made-up result asked for again: %v, want the same one", again)
	}
	// The node comes back and asks for work: the TaskIns is answered (made
	// up), so it gets nothing, at once (a State that looped on it or
	// dereferenced its released message would hang or panic here).
	if ok, err := e.s.Ping(ctx, id, 30, ""); err != nil || !ok {
		t.Fatalf("Ping of the node back: %v %v", ok, err)
	}
	quick, cancel := context.WithTimeout(ctx, 5*time.Second)
	back, err := e.s.PullTaskIns(quick, id, "")
	cancel()
	if err != nil || len(back) != 0 {
		t.Fatalf("PullTaskIns of the node back after its task was answered NODE_UNAVAILABLE: %v %v, want nothing", back, err)
	}
	if back := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t); len(back) != 1 || back[0].TaskId != r[0].TaskId {
		t.Fatalf("made-up result asked for after the node came back: %v, want the same one", back)
	}
	first := ins

	// A deleted node: its undelivered task is answered NODE_UNAVAILABLE.
	z := e.node(t, e.s, 30)
	ins = e.push(t, e.s, TaskIns(run, z, e.now()))
	if err := e.s.DeleteNode(ctx, z, ""); err != nil {
		t.Fatal(err)
	}
	e.wantLog(t, "undelivered_tasks=1")
	r = must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	if len(r) != 1 || r[0].Task.GetError().GetCode() != state.NodeUnavailableCode {
		t.Fatalf("PullTaskRes for a deleted node: %v", r)
	}
	// That PullTaskRes did not ask for the first result: the ServerApp has
	// it, and it is forgotten.
	if r := must(e.s.PullTaskRes(ctx, []string{first.TaskId}))(t); len(r) != 0 {
		t.Fatalf("made-up result delivered after the run moved on: %v", r)
	}
	if st := e.stats(t, e.s); st.TaskInsWaiting+st.TaskInsDelivered+st.TaskResWaiting != 0 || st.Nodes != 1 {
		t.Errorf("after the deleted node's tasks were resolved, stats %+v, want no tasks held and 1 node", st)
	}
}

// testPushTaskInsInvalid: each malformed or misdirected PushTaskIns gets
// its code and a message that says what is wrong, and nothing is stored.
func testPushTaskInsInvalid(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	node := e.node(t, e.s, 30)
	now := e.now()
	valid := func() *flwrproto.TaskIns { return TaskIns(run, node, now) }
	with := func(mod func(*flwrproto.TaskIns)) *flwrproto.TaskIns { ti := valid(); mod(ti); return ti }
	cases := []struct {
		name string
		list []*flwrproto.TaskIns
		code codes.Code
		msg  string
	}{
		{"empty list", nil, codes.InvalidArgument, "task_ins_list must not be empty"},
		{"nil TaskIns", []*flwrproto.TaskIns{nil}, codes.InvalidArgument, "TaskIns is missing"},
		{"empty TaskIns", []*flwrproto.TaskIns{{}}, codes.InvalidArgument, "task is missing"},
		{"task id set", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.TaskId = "x" })}, codes.InvalidArgument, "task_id must be empty"},
		{"no producer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Producer = nil })}, codes.InvalidArgument, "task.producer is missing"},
		{"producer a node", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Producer = &flwrproto.Node{NodeId: 5} })}, codes.InvalidArgument, "task.producer must be {node_id: 0, anonymous: true}"},
		{"no consumer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Consumer = nil })}, codes.InvalidArgument, "task.consumer is missing"},
		{"anonymous consumer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Consumer = &flwrproto.Node{Anonymous: true} })}, codes.InvalidArgument, "task.consumer must name a node"},
		{"no recordset", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Recordset = nil })}, codes.InvalidArgument, "exactly one of recordset or error"},
		{"recordset and error", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Error = &flwrproto.Error{} })}, codes.InvalidArgument, "exactly one of recordset or error"},
		{"ttl zero", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = 0 })}, codes.InvalidArgument, "task.ttl must be higher than zero"},
		{"ttl NaN", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = math.NaN() })}, codes.InvalidArgument, "task.ttl"},
		{"ttl infinite", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = math.Inf(1) })}, codes.InvalidArgument, "task.ttl"},
		{"created_at too old", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.CreatedAt = 5 })}, codes.InvalidArgument, "task.created_at"},
		{"no task_type", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.TaskType = "" })}, codes.InvalidArgument, "task_type must be set"},
		{"delivered_at set", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.DeliveredAt = "now" })}, codes.InvalidArgument, "delivered_at must be empty"},
		{"ancestry set", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Ancestry = []string{"x"} })}, codes.InvalidArgument, "ancestry must be empty"},
		{"unknown run", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.RunId = -7 })}, codes.NotFound, "run -7 does not exist: call CreateRun first"},
		{"unknown consumer", []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.Task.Consumer.NodeId = 42 })}, codes.NotFound, "consumer node 42 does not exist"},
		{"one bad of two", []*flwrproto.TaskIns{valid(), with(func(ti *flwrproto.TaskIns) { ti.Task.Ttl = -1 })}, codes.InvalidArgument, "task_ins_list[1]"},
		{"one unknown run of two", []*flwrproto.TaskIns{valid(), with(func(ti *flwrproto.TaskIns) { ti.RunId = -7 })}, codes.NotFound, "task_ins_list[1]"},
	}
	for _, c := range cases {
		_, err := e.s.PushTaskIns(ctx, c.list)
		WantCode(t, "PushTaskIns "+c.name, err, c.code, c.msg)
	}
	// The whole message, as a peer reads it: the RPC, the element and what
	// to do, with no Go package name in front.
	_, err := e.s.PushTaskIns(ctx, []*flwrproto.TaskIns{with(func(ti *flwrproto.TaskIns) { ti.RunId = -7 })})
	if got, want := status.Convert(err).Message(), "PushTaskIns: task_ins_list[0]: run -7 does not exist: call CreateRun first"; got != want {
		t.Errorf("PushTaskIns unknown run: message %q, want %q", got, want)
	}
	if st := e.stats(t, e.s); st.TaskInsWaiting != 0 {
		t.Fatalf("rejected pushes stored tasks: %+v", st)
	}
	e.pullNone(t, e.s, node)
	if rs := must(e.s.Runs(ctx, 0))(t); len(rs) != 1 || rs[0].TaskInsPushed != 0 {
		t.Errorf("rejected pushes counted in the run: %+v", rs)
	}
}

// testPushTaskResInvalid: each malformed or misdirected PushTaskRes gets its
// code and message, and nothing is stored.
func testPushTaskResInvalid(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	nodeA, nodeB := e.node(t, e.s, 30), e.node(t, e.s, 30)
	now := e.now()
	ins := e.push(t, e.s, TaskIns(run, nodeA, now))
	e.pullNone(t, e.s, nodeB) // aimed at A, not handed to B
	resFrom := func(node int64) *flwrproto.TaskRes { return TaskRes(ins, node, now) }
	pushRes := func(name string, code codes.Code, msg string, list ...*flwrproto.TaskRes) {
		t.Helper()
		_, err := e.s.PushTaskRes(ctx, list, "")
		WantCode(t, "PushTaskRes "+name, err, code, msg)
	}
	pushRes("before the TaskIns was pulled", codes.FailedPrecondition, "was not pulled yet", resFrom(nodeA))
	e.pullOne(t, e.s, nodeA)
	resWith := func(mod func(*flwrproto.TaskRes)) *flwrproto.TaskRes { r := resFrom(nodeA); mod(r); return r }
	pushRes("empty list", codes.InvalidArgument, "task_res_list must not be empty")
	pushRes("nil TaskRes", codes.InvalidArgument, "TaskRes is missing", nil)
	pushRes("empty TaskRes", codes.InvalidArgument, "task is missing", &flwrproto.TaskRes{})
	pushRes("task id set", codes.InvalidArgument, "task_id must be empty", resWith(func(r *flwrproto.TaskRes) { r.TaskId = "x" }))
	pushRes("no producer", codes.InvalidArgument, "task.producer is missing", resWith(func(r *flwrproto.TaskRes) { r.Task.Producer = nil }))
	pushRes("anonymous producer", codes.InvalidArgument, "not anonymous", resWith(func(r *flwrproto.TaskRes) { r.Task.Producer = &flwrproto.Node{Anonymous: true} }))
	pushRes("producer node 0", codes.InvalidArgument, "task.producer is not anonymous but has node_id 0", resWith(func(r *flwrproto.TaskRes) { r.Task.Producer = &flwrproto.Node{} }))
	pushRes("no consumer", codes.InvalidArgument, "task.consumer is missing", resWith(func(r *flwrproto.TaskRes) { r.Task.Consumer = nil }))
	pushRes("no ancestry", codes.InvalidArgument, "task.ancestry must hold", resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = nil }))
	pushRes("ancestry not a uuid", codes.InvalidArgument, "is not a TaskIns id", resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = []string{"not-a-uuid"} }))
	pushRes("ttl zero", codes.InvalidArgument, "task.ttl must be higher than zero", resWith(func(r *flwrproto.TaskRes) { r.Task.Ttl = 0 }))
	pushRes("ancestry names no TaskIns", codes.NotFound, "does not exist", resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = []string{"6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1"} }))
	pushRes("from another node", codes.PermissionDenied, "which was sent to node", resFrom(nodeB))
	pushRes("other run", codes.InvalidArgument, "differs from run", resWith(func(r *flwrproto.TaskRes) { r.RunId = -7 }))
	pushRes("twice in one request", codes.FailedPrecondition, "already has a result", resFrom(nodeA), resFrom(nodeA))
	pushRes("good then bad", codes.NotFound, "task_res_list[1]", resFrom(nodeA), resWith(func(r *flwrproto.TaskRes) { r.Task.Ancestry = []string{uuid.NewString()} }))
	if st := e.stats(t, e.s); st.TaskResWaiting != 0 || st.TaskInsDelivered != 1 {
		t.Fatalf("rejected pushes stored results: %+v", st)
	}
	if r := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t); len(r) != 0 {
		t.Fatalf("a rejected push reached the driver: %v", r)
	}
}

// testOtherInvalid: the other methods' bad input, and what 1.8.0 answers
// without an error.
func testOtherInvalid(t *testing.T, e *env) {
	ctx := ctxOf(t)
	node := e.node(t, e.s, 30)
	_, err := e.s.PullTaskRes(ctx, []string{uuid.NewString(), "not-a-uuid"})
	WantCode(t, "PullTaskRes not a uuid", err, codes.InvalidArgument, `task_ids[1] "not-a-uuid" is not a task id`)
	WantCode(t, "DeleteNode unknown", e.s.DeleteNode(ctx, 42, ""), codes.NotFound, "node 42 does not exist")
	_, err = e.s.Ping(ctx, node, math.Inf(1), "")
	WantCode(t, "Ping infinite interval", err, codes.InvalidArgument, "ping_interval must be a finite number")
	_, err = e.s.Ping(ctx, node, math.NaN(), "")
	WantCode(t, "Ping NaN interval", err, codes.InvalidArgument, "ping_interval")
	_, err = e.s.CreateNode(ctx, state.NewNode{PingInterval: -1})
	WantCode(t, "CreateNode negative interval", err, codes.InvalidArgument, "ping_interval")
	if ok, err := e.s.Ping(ctx, 42, 30, ""); err != nil || ok {
		t.Errorf("Ping unknown node: %v %v, want false as 1.8.0", ok, err)
	}
	if r, err := e.s.PullTaskIns(ctx, -42, ""); err != nil || len(r) != 0 {
		t.Errorf("PullTaskIns unknown node: %v %v, want nothing as 1.8.0", r, err)
	}
	if r, err := e.s.GetNodes(ctx, -7); err != nil || len(r) != 0 {
		t.Errorf("GetNodes unknown run: %v %v, want nothing", r, err)
	}
	if r, err := e.s.PullTaskRes(ctx, []string{uuid.NewString()}); err != nil || len(r) != 0 {
		t.Errorf("PullTaskRes unknown task: %v %v, want nothing", r, err)
	}
	if r, err := e.s.PullTaskRes(ctx, nil); err != nil || len(r) != 0 {
		t.Errorf("PullTaskRes of no task: %v %v, want nothing", r, err)
	}
	if st := e.stats(t, e.s); st.Nodes != 1 {
		t.Errorf("bad requests changed the state: %+v", st)
	}
}

// testDelivery: each node gets its own TaskIns, oldest first, one per pull,
// each once, as pushed plus delivered_at.
func testDelivery(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	a, b := e.node(t, e.s, 30), e.node(t, e.s, 30)
	var pushed []*flwrproto.TaskIns
	for i := range 3 {
		ti := TaskIns(run, a, e.now())
		ti.GroupId = string(rune('x' + i))
		ti.Task.Recordset = &flwrproto.RecordSet{Configs: map[string]*flwrproto.ConfigsRecord{"c": {Data: map[string]*flwrproto.ConfigsRecordValue{
			"i": {Value: &flwrproto.ConfigsRecordValue_Sint64{Sint64: int64(i)}},
		}}}}
		pushed = append(pushed, ti)
	}
	want := make([]*flwrproto.TaskIns, len(pushed))
	must(e.s.PushTaskIns(ctx, pushed[:2]))(t) // two in one request
	e.clock.Advance(time.Second)
	e.push(t, e.s, pushed[2])
	for i, p := range pushed {
		want[i] = proto.Clone(p).(*flwrproto.TaskIns)
	}
	e.pullNone(t, e.s, b)
	for i := range pushed {
		e.clock.Advance(time.Millisecond)
		got := proto.Clone(e.pullOne(t, e.s, a)).(*flwrproto.TaskIns)
		if got.Task.DeliveredAt != rules.DeliveredAt(e.clock.Now()) {
			t.Errorf("delivered_at %q, want the clock's %q", got.Task.DeliveredAt, rules.DeliveredAt(e.clock.Now()))
		}
		got.Task.DeliveredAt = ""
		if !proto.Equal(got, want[i]) {
			t.Errorf("pull %d: got\n%v\nwant (oldest first, as pushed)\n%v", i, got, want[i])
		}
	}
	e.pullNone(t, e.s, a)
	e.pullNone(t, e.s, b)
	if st := e.stats(t, e.s); st.TaskInsWaiting != 0 || st.TaskInsDelivered != 3 {
		t.Errorf("stats after delivery: %+v", st)
	}
}

// testResults: every element of a PushTaskRes is stored (1.8.0 only the
// first); PullTaskRes answers in the order asked, each result once, and
// forgets the pair.
func testResults(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	a := e.node(t, e.s, 30)
	i1 := e.push(t, e.s, TaskIns(run, a, e.now()))
	i2 := e.push(t, e.s, TaskIns(run, a, e.now()))
	i3 := e.push(t, e.s, TaskIns(run, a, e.now()))
	p1, p2, p3 := e.pullOne(t, e.s, a), e.pullOne(t, e.s, a), e.pullOne(t, e.s, a)
	if p1.TaskId != i1.TaskId || p2.TaskId != i2.TaskId || p3.TaskId != i3.TaskId {
		t.Fatal("TaskIns not delivered in push order")
	}
	// Nothing yet: the node is online and has not answered.
	if r := must(e.s.PullTaskRes(ctx, []string{i1.TaskId, i2.TaskId}))(t); len(r) != 0 {
		t.Fatalf("results before any answer: %v", r)
	}
	r1, r2 := TaskRes(p1, a, e.now()), TaskRes(p2, a, e.now())
	r1.Task.Recordset = &flwrproto.RecordSet{Metrics: map[string]*flwrproto.MetricsRecord{"m": {Data: map[string]*flwrproto.MetricsRecordValue{
		"n": {Value: &flwrproto.MetricsRecordValue_Double{Double: 0.25}},
	}}}}
	e.clock.Advance(time.Second)
	res := must(e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{r1, r2}, ""))(t)
	if len(res) != 2 || r1.TaskId == "" || r2.TaskId == "" || r1.TaskId == r2.TaskId || r1.Task.PushedAt != e.now() {
		t.Fatalf("PushTaskRes of two: %v, ids %q %q, pushed_at %v", res, r1.TaskId, r2.TaskId, r1.Task.PushedAt)
	}
	want1, want2 := proto.Clone(r1).(*flwrproto.TaskRes), proto.Clone(r2).(*flwrproto.TaskRes)
	if st := e.stats(t, e.s); st.TaskResWaiting != 2 || st.TaskInsDelivered != 1 {
		t.Errorf("stats with two results: %+v", st)
	}
	e.clock.Advance(time.Second)
	got := must(e.s.PullTaskRes(ctx, []string{i3.TaskId, i2.TaskId, uuid.NewString(), i1.TaskId, i2.TaskId}))(t)
	if len(got) != 2 {
		t.Fatalf("PullTaskRes: %d results, want 2", len(got))
	}
	for i, w := range []*flwrproto.TaskRes{want2, want1} {
		g := proto.Clone(got[i]).(*flwrproto.TaskRes)
		if g.Task.DeliveredAt != rules.DeliveredAt(e.clock.Now()) {
			t.Errorf("result %d delivered_at %q", i, g.Task.DeliveredAt)
		}
		g.Task.DeliveredAt = ""
		if !proto.Equal(g, w) {
			t.Errorf("result %d (in the order asked):\n got %v\nwant %v", i, g, w)
		}
	}
	if st := e.stats(t, e.s); st.TaskResWaiting != 0 || st.TaskInsDelivered != 1 {
		t.Errorf("stats after PullTaskRes: %+v", st)
	}
	// Asked again (the response was lost): the same results again.
	again := must(e.s.PullTaskRes(ctx, []string{i1.TaskId, i2.TaskId}))(t)
	if len(again) != 2 || again[0].TaskId != want1.TaskId || again[1].TaskId != want2.TaskId {
		t.Fatalf("results asked for again: %v, want the same two", again)
	}
	// The run's next PullTaskRes that does not ask for them: forgotten.
	if r := must(e.s.PullTaskRes(ctx, []string{i3.TaskId}))(t); len(r) != 0 {
		t.Fatalf("a result for an unanswered TaskIns: %v", r)
	}
	if r := must(e.s.PullTaskRes(ctx, []string{i1.TaskId, i2.TaskId}))(t); len(r) != 0 {
		t.Fatalf("results delivered after the run moved on: %v", r)
	}
}

// testRepeatedResult: a repeat by its consumer (a retry whose first try was
// stored) is accepted and discarded, as 1.8.0 accepts it; another node
// still gets PermissionDenied.
func testRepeatedResult(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	a, b := e.node(t, e.s, 30), e.node(t, e.s, 30)
	ins := e.push(t, e.s, TaskIns(run, a, e.now()))
	e.pullOne(t, e.s, a)
	first := e.answer(t, e.s, ins, a)
	again := TaskRes(ins, a, e.now())
	again.GroupId = "repeat"
	res, err := e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{again}, "")
	if err != nil || len(res) != 1 {
		t.Fatalf("PushTaskRes repeated by its node: %v %v", res, err)
	}
	for id := range res {
		if id == first.TaskId {
			t.Error("the discarded repeat got the stored result's id")
		}
	}
	e.wantLog(t, "result discarded")
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ins, b, e.now())}, "")
	WantCode(t, "answered already, from another node", err, codes.PermissionDenied, "which was sent to node")
	if st := e.stats(t, e.s); st.TaskResWaiting != 1 {
		t.Fatalf("a repeated result was stored: %+v", st)
	}
	got := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	if len(got) != 1 || got[0].TaskId != first.TaskId || got[0].GroupId != ins.GroupId {
		t.Fatalf("PullTaskRes: %v, want the first result %s", got, first.TaskId)
	}
	// After delivery, a repeat is still accepted (the node may not have
	// heard the first answer); a second repeat too.
	for range 2 {
		if _, err := e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ins, a, e.now())}, ""); err != nil {
			t.Fatalf("repeat after delivery: %v", err)
		}
	}
	if st := e.stats(t, e.s); st.TaskResWaiting != 0 {
		t.Fatalf("a repeat after delivery was stored: %+v", st)
	}
}

// testLateResult: a node cut off while training is reported
// NODE_UNAVAILABLE; its result after it comes back is accepted and
// discarded (a 1.8.0 SuperNode would retry a refusal forever). Other nodes
// still get NotFound, and once the TaskIns would have expired, the memory
// of it is gone too.
func testLateResult(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	node, other := e.node(t, e.s, 30), e.node(t, e.s, 1e6)
	ins := e.push(t, e.s, TaskIns(run, node, e.now()))
	pulled := e.pullOne(t, e.s, node)
	e.clock.Advance(31 * time.Second) // the node missed its ping
	got := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	if len(got) != 1 || got[0].Task.GetError().GetCode() != state.NodeUnavailableCode {
		t.Fatalf("PullTaskRes: %v, want NODE_UNAVAILABLE", got)
	}
	if ok, err := e.s.Ping(ctx, node, 30, ""); err != nil || !ok {
		t.Fatal(ok, err)
	}
	res, err := e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(pulled, node, e.now())}, "")
	if err != nil || len(res) != 1 {
		t.Fatalf("late PushTaskRes: %v %v, want OK", res, err)
	}
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(pulled, other, e.now())}, "")
	WantCode(t, "late PushTaskRes from another node", err, codes.PermissionDenied, "which was sent to node")
	// The run moves on (a PullTaskRes that does not ask for it): the pair
	// is forgotten, its consumer remembered.
	next := e.push(t, e.s, TaskIns(run, other, e.now()))
	if got := must(e.s.PullTaskRes(ctx, []string{next.TaskId}))(t); len(got) != 0 {
		t.Fatalf("a result for an undelivered TaskIns: %v", got)
	}
	res, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(pulled, node, e.now())}, "")
	if err != nil || len(res) != 1 {
		t.Fatalf("late PushTaskRes after the run moved on: %v %v, want OK", res, err)
	}
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(pulled, other, e.now())}, "")
	WantCode(t, "late PushTaskRes from another node, after", err, codes.NotFound, "does not exist")
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(pulled, node, e.now()), TaskRes(pulled, node, e.now())}, "")
	WantCode(t, "two late results in one request", err, codes.NotFound, "does not exist")
	if st := e.stats(t, e.s); st.TaskInsDelivered+st.TaskResWaiting != 0 || st.TaskInsWaiting != 1 {
		t.Fatalf("state after a late result: %+v", st)
	}
	if got := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t); len(got) != 0 {
		t.Fatalf("PullTaskRes again: %v, want nothing", got)
	}
	e.clock.Advance(2 * time.Hour)
	if err := e.s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(pulled, node, e.now())}, "")
	WantCode(t, "late PushTaskRes after the TaskIns would have expired", err, codes.NotFound, "does not exist")
}

// blobBytes returns n bytes of a pattern seeded by seed.
func blobBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// testBlobs: large arrays are held once by content however many tasks
// carry them, come back byte for byte in their places, and are released
// with the last task holding them.
func testBlobs(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	a, b := e.node(t, e.s, 30), e.node(t, e.s, 30)
	m1, m2 := blobBytes(1, 3*state.BlobMin+5), blobBytes(2, state.BlobMin)
	small := blobBytes(3, state.BlobMin-1)
	model := func() *flwrproto.RecordSet {
		return &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
			"b": {DataKeys: []string{"0", "1", "2", "3"}, DataValues: []*flwrproto.Array{
				{Dtype: "<f4", Shape: []int32{3, int32(len(m1) / 3)}, Stype: "numpy.ndarray", Data: bytes.Clone(m1)},
				{Stype: "numpy.ndarray", Data: bytes.Clone(small)},
				{Stype: "numpy.ndarray", Data: bytes.Clone(m2)},
				{Stype: "numpy.ndarray"},
			}},
			"a":     {DataKeys: []string{"x"}, DataValues: []*flwrproto.Array{{Data: bytes.Clone(m2)}}},
			"empty": {},
		}}
	}
	var ins []*flwrproto.TaskIns
	for _, n := range []int64{a, b, a} {
		ti := TaskIns(run, n, e.now())
		ti.Task.Recordset = model()
		ins = append(ins, e.push(t, e.s, ti))
	}
	want := model()
	st := e.stats(t, e.s)
	if st.Blobs != 2 || st.BlobBytes != int64(len(m1)+len(m2)) {
		t.Errorf("3 tasks with the same 2 large arrays (and a small one): %d blobs of %d bytes, want 2 of %d", st.Blobs, st.BlobBytes, len(m1)+len(m2))
	}
	check := func(name string, got *flwrproto.RecordSet) {
		t.Helper()
		if !proto.Equal(got, want) {
			t.Errorf("%s: arrays differ from the ones pushed", name)
		}
	}
	pa := e.pullOne(t, e.s, a)
	pb := e.pullOne(t, e.s, b)
	check("TaskIns pulled by a", pa.Task.Recordset)
	check("TaskIns pulled by b", pb.Task.Recordset)

	// A result carrying one known and one new large array.
	m3 := blobBytes(4, 2*state.BlobMin)
	res := TaskRes(pa, a, e.now())
	res.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
		"fitres.parameters": {DataKeys: []string{"0", "1"}, DataValues: []*flwrproto.Array{{Data: bytes.Clone(m3)}, {Data: bytes.Clone(m1)}}},
	}}
	wantRes := proto.Clone(res.Task.Recordset).(*flwrproto.RecordSet)
	must(e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{res}, ""))(t)
	if st := e.stats(t, e.s); st.Blobs != 3 || st.BlobBytes != int64(len(m1)+len(m2)+len(m3)) {
		t.Errorf("after a result with one new array: %+v", st)
	}
	got := must(e.s.PullTaskRes(ctx, []string{ins[0].TaskId}))(t)
	if len(got) != 1 || !proto.Equal(got[0].Task.Recordset, wantRes) {
		t.Fatalf("result arrays differ from the ones pushed")
	}
	if st := e.stats(t, e.s); st.Blobs != 3 {
		t.Errorf("after the result was pulled: %+v, want it kept until the run moves on", st)
	}
	if again := must(e.s.PullTaskRes(ctx, []string{ins[0].TaskId}))(t); len(again) != 1 || !proto.Equal(again[0].Task.Recordset, wantRes) {
		t.Fatalf("result asked for again: arrays differ from the ones pushed")
	}
	must(e.s.PullTaskRes(ctx, []string{ins[1].TaskId}))(t) // the run moves on
	if st := e.stats(t, e.s); st.Blobs != 2 || st.BlobBytes != int64(len(m1)+len(m2)) {
		t.Errorf("after the run moved on: %+v, want the result's own array released", st)
	}
	check("third TaskIns", e.pullOne(t, e.s, a).Task.Recordset)
	e.clock.Advance(31 * time.Second) // both nodes offline: NODE_UNAVAILABLE for the rest
	if got := must(e.s.PullTaskRes(ctx, []string{ins[1].TaskId, ins[2].TaskId}))(t); len(got) != 2 {
		t.Fatalf("PullTaskRes: %d results, want 2", len(got))
	}
	if st := e.stats(t, e.s); st.Blobs != 0 || st.BlobBytes != 0 {
		t.Errorf("arrays still held after every task was pulled: %+v", st)
	}
}

// testSweep: tasks a ServerApp never pulls (it went away) are forgotten,
// with their results and arrays, once ttl + ExpiryGrace ran out; younger
// tasks stay deliverable.
func testSweep(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	node := e.node(t, e.s, 1e6)
	big := blobBytes(9, 2*state.BlobMin)
	push := func(ttl float64) *flwrproto.TaskIns {
		ti := TaskIns(run, node, e.now())
		ti.Task.Ttl = ttl
		ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
			"fitins.parameters": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Stype: "numpy.ndarray", Data: bytes.Clone(big)}}},
		}}
		return e.push(t, e.s, ti)
	}
	// One answered but never pulled, one never delivered, one long-lived.
	push(60)
	e.answer(t, e.s, e.pullOne(t, e.s, node), node)
	push(60)
	keep := push(7200)
	if st := e.stats(t, e.s); st.TaskInsWaiting != 2 || st.TaskResWaiting != 1 || st.Blobs != 1 {
		t.Fatalf("before: %+v", st)
	}
	e.clock.Advance(60*time.Second + rules.ExpiryGrace - time.Second)
	if err := e.s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.stats(t, e.s); st.TaskInsWaiting != 2 || st.TaskResWaiting != 1 {
		t.Fatalf("forgotten before ttl + grace: %+v", st)
	}
	e.clock.Advance(2 * time.Second)
	if err := e.s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.stats(t, e.s); st.TaskInsWaiting != 1 || st.TaskResWaiting != 0 || st.Blobs != 1 {
		t.Fatalf("after ttl + grace: %+v, want only the long-lived task", st)
	}
	e.wantLog(t, "expired tasks forgotten")
	if got := e.pullOne(t, e.s, node); got.TaskId != keep.TaskId {
		t.Fatalf("pull after sweep: %s, want %s", got.TaskId, keep.TaskId)
	}
	e.clock.Advance(2 * time.Hour)
	if err := e.s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.stats(t, e.s); st.TaskInsDelivered != 0 || st.Blobs != 0 || st.BlobBytes != 0 {
		t.Fatalf("at the end: %+v", st)
	}
}

// testSweepLogsOnce: the sweep notices a node that stopped pinging even
// when nobody asks for the node list, and says so once.
func testSweepLogsOnce(t *testing.T, e *env) {
	ctx := ctxOf(t)
	e.node(t, e.s, 1)
	if err := e.s.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if c := countLog(e, "missed_ping"); c != 0 {
		t.Fatal("logged a missed ping too early")
	}
	e.clock.Advance(2 * time.Second)
	for range 3 {
		if err := e.s.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if c := countLog(e, "missed_ping"); c != 1 {
		t.Fatalf("missed ping logged %d times, want once:\n%s", c, e.logs)
	}
	if st := e.stats(t, e.s); st.Nodes != 1 || st.NodesOnline != 0 {
		t.Errorf("stats: %+v", st)
	}
}

func countLog(e *env, s string) int { return bytes.Count([]byte(e.logs.String()), []byte(s)) }

// testIdentity: a node created under one client-certificate identity cannot
// be used under another; no identity is never checked.
func testIdentity(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	a := must(e.s.CreateNode(ctx, state.NewNode{PingInterval: 30, Identity: "node-a"}))(t)
	anon := must(e.s.CreateNode(ctx, state.NewNode{PingInterval: 30}))(t)
	_, err := e.s.Ping(ctx, a, 30, "node-b")
	WantCode(t, "Ping under another identity", err, codes.PermissionDenied, "another client certificate")
	for _, id := range []string{"node-a", ""} {
		if ok, err := e.s.Ping(ctx, a, 30, id); err != nil || !ok {
			t.Errorf("Ping with identity %q: %v %v", id, ok, err)
		}
	}
	_, err = e.s.Ping(ctx, anon, 30, "node-a")
	WantCode(t, "Ping of a node created without identity", err, codes.PermissionDenied, "another client certificate")

	ins := e.push(t, e.s, TaskIns(run, a, e.now()))
	_, err = e.s.PullTaskIns(ctx, a, "node-b")
	WantCode(t, "PullTaskIns under another identity", err, codes.PermissionDenied, "another client certificate")
	if st := e.stats(t, e.s); st.TaskInsWaiting != 1 {
		t.Fatalf("a refused pull delivered the task: %+v", st)
	}
	got := must(e.s.PullTaskIns(ctx, a, "node-a"))(t)
	if len(got) != 1 {
		t.Fatalf("PullTaskIns with the right identity: %v", got)
	}
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ins, a, e.now())}, "node-b")
	WantCode(t, "PushTaskRes under another identity", err, codes.PermissionDenied, "another client certificate")
	if _, err := e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ins, a, e.now())}, "node-a"); err != nil {
		t.Fatal(err)
	}
	must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	// The "already answered" memory keeps the identity too.
	_, err = e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ins, a, e.now())}, "node-b")
	WantCode(t, "late PushTaskRes under another identity", err, codes.PermissionDenied, "another client certificate")
	if _, err := e.s.PushTaskRes(ctx, []*flwrproto.TaskRes{TaskRes(ins, a, e.now())}, ""); err != nil {
		t.Errorf("late PushTaskRes without identity: %v", err)
	}

	nodes := must(e.s.Nodes(ctx))(t)
	if len(nodes) != 2 || nodes[0].Identity != "node-a" || nodes[1].Identity != "" {
		t.Errorf("Nodes: %+v", nodes)
	}
	WantCode(t, "DeleteNode under another identity", e.s.DeleteNode(ctx, a, "node-b"), codes.PermissionDenied, "another client certificate")
	if err := e.s.DeleteNode(ctx, a, "node-a"); err != nil {
		t.Fatal(err)
	}
}

// testStats follows the counts through a round.
func testStats(t *testing.T, e *env) {
	ctx := ctxOf(t)
	if st := e.stats(t, e.s); st != (state.Stats{}) {
		t.Fatalf("empty state: %+v", st)
	}
	run := e.run(t, e.s)
	a, b := e.node(t, e.s, 30), e.node(t, e.s, 60)
	big := blobBytes(5, state.BlobMin*2)
	var ins []*flwrproto.TaskIns
	for _, n := range []int64{a, b} {
		ti := TaskIns(run, n, e.now())
		ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: bytes.Clone(big)}}}}}
		ins = append(ins, e.push(t, e.s, ti))
	}
	want := state.Stats{Nodes: 2, NodesOnline: 2, Runs: 1, TaskInsWaiting: 2, Blobs: 1, BlobBytes: int64(len(big))}
	if st := e.stats(t, e.s); st != want {
		t.Errorf("pushed:\n got %+v\nwant %+v", st, want)
	}
	e.pullOne(t, e.s, a)
	want.TaskInsWaiting, want.TaskInsDelivered = 1, 1
	if st := e.stats(t, e.s); st != want {
		t.Errorf("one pulled:\n got %+v\nwant %+v", st, want)
	}
	e.answer(t, e.s, ins[0], a)
	want.TaskInsDelivered, want.TaskResWaiting = 0, 1
	if st := e.stats(t, e.s); st != want {
		t.Errorf("one answered:\n got %+v\nwant %+v", st, want)
	}
	e.clock.Advance(31 * time.Second)
	want.NodesOnline = 1
	if st := e.stats(t, e.s); st != want {
		t.Errorf("a offline:\n got %+v\nwant %+v", st, want)
	}
	must(e.s.PullTaskRes(ctx, []string{ins[0].TaskId}))(t)
	want.TaskResWaiting = 0
	if st := e.stats(t, e.s); st != want {
		t.Errorf("result pulled:\n got %+v\nwant %+v", st, want)
	}
}

// testNodesAndRuns: the observation of nodes and runs.
func testNodesAndRuns(t *testing.T, e *env) {
	ctx := ctxOf(t)
	if n := must(e.s.Nodes(ctx))(t); len(n) != 0 {
		t.Fatalf("Nodes of an empty state: %v", n)
	}
	if r := must(e.s.Runs(ctx, 10))(t); len(r) != 0 {
		t.Fatalf("Runs of an empty state: %v", r)
	}
	t0 := e.clock.Now()
	a := e.node(t, e.s, 30)
	e.clock.Advance(time.Second)
	b := e.node(t, e.s, 2.5)
	e.clock.Advance(5 * time.Second)
	nodes := must(e.s.Nodes(ctx))(t)
	want := []state.NodeInfo{
		{ID: a, PingInterval: 30, Created: t0, OnlineUntil: t0.Add(30 * time.Second), Online: true},
		{ID: b, PingInterval: 2.5, Created: t0.Add(time.Second), OnlineUntil: t0.Add(3500 * time.Millisecond), Online: false},
	}
	if len(nodes) != 2 {
		t.Fatalf("Nodes: %+v", nodes)
	}
	for i, w := range want {
		g := nodes[i]
		if g.ID != w.ID || g.PingInterval != w.PingInterval || !g.Created.Equal(w.Created) || !g.OnlineUntil.Equal(w.OnlineUntil) || g.Online != w.Online || g.Identity != "" {
			t.Errorf("node %d:\n got %+v\nwant %+v", i, g, w)
		}
	}

	r1 := e.run(t, e.s)
	e.clock.Advance(time.Second)
	r2 := e.run(t, e.s)
	e.clock.Advance(time.Second)
	r3 := e.run(t, e.s)
	for _, g := range []string{"1", "2"} {
		ti := TaskIns(r2, a, e.now())
		ti.GroupId = g
		e.push(t, e.s, ti)
	}
	p := e.pullOne(t, e.s, a)
	e.answer(t, e.s, p, a)
	must(e.s.PullTaskRes(ctx, []string{p.TaskId}))(t)
	runs := must(e.s.Runs(ctx, 0))(t)
	if len(runs) != 3 || runs[0].ID != r3 || runs[1].ID != r2 || runs[2].ID != r1 {
		t.Fatalf("Runs: %+v, want %d %d %d (most recent first)", runs, r3, r2, r1)
	}
	if g := runs[1]; g.LastGroup != "2" || g.TaskInsPushed != 2 || g.TaskResPulled != 1 || !g.Created.Equal(t0.Add(7*time.Second)) {
		t.Errorf("run 2: %+v", g)
	}
	if g := runs[0]; g.LastGroup != "" || g.TaskInsPushed != 0 || g.TaskResPulled != 0 {
		t.Errorf("run 3: %+v", g)
	}
	if runs := must(e.s.Runs(ctx, 2))(t); len(runs) != 2 || runs[0].ID != r3 || runs[1].ID != r2 {
		t.Errorf("Runs(2): %+v", runs)
	}
}

// testClose: a closed State refuses calls instead of panicking; Check
// answers before.
func testClose(t *testing.T, e *env) {
	ctx := ctxOf(t)
	if err := e.s.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	e.node(t, e.s, 30)
	if err := e.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := e.s.CreateNode(ctx, state.NewNode{PingInterval: 30}); err == nil {
		t.Error("CreateNode after Close did not fail")
	}
	if err := e.s.Check(ctx); err == nil {
		t.Error("Check after Close did not fail")
	}
	if _, err := e.s.Stats(ctx); err == nil {
		t.Error("Stats after Close did not fail")
	}
}
