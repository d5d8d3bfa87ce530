package statetest

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/sepal-fl/sepal/state"
)

// wantLimit fails t unless err is the *state.NodeLimitError of limit, a
// ResourceExhausted status whose message holds msg.
func wantLimit(t *testing.T, name string, err error, limit, msg string) {
	t.Helper()
	WantCode(t, name, err, codes.ResourceExhausted, msg)
	var le *state.NodeLimitError
	if !errors.As(err, &le) || le.Limit != limit {
		t.Errorf("%s: %v is not the NodeLimitError of %s", name, err, limit)
	}
}

// nodeIDs returns the ids of the registered nodes, in join order.
func (e *env) nodeIDs(t *testing.T, s state.State) []int64 {
	t.Helper()
	var ids []int64
	for _, n := range must(s.Nodes(ctxOf(t)))(t) {
		ids = append(ids, n.ID)
	}
	return ids
}

// testMaxNodes: NewNode.MaxNodes bounds the nodes registered; when all
// are online the next is refused, and when some are offline the one
// offline the longest is forgotten for the new one (its task answered
// NODE_UNAVAILABLE at once); without the limit nothing is counted.
func testMaxNodes(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	create := func(pi float64) (int64, error) {
		return e.s.CreateNode(ctx, state.NewNode{PingInterval: pi, MaxNodes: 3})
	}
	a := must(create(10))(t)
	b := must(create(20))(t)
	c := must(create(3600))(t)
	_, err := create(30)
	wantLimit(t, "a fourth node, all online", err, state.LimitMaxNodes, "holds 3 nodes, all online")
	if got := e.nodeIDs(t, e.s); !slices.Equal(got, []int64{a, b, c}) {
		t.Fatalf("a refused node changed the nodes: %v", got)
	}
	ins := e.push(t, e.s, TaskIns(run, a, e.now()))

	// a and b miss their ping; a is offline the longest and makes room.
	e.clock.Advance(25 * time.Second)
	d := must(create(30))(t)
	if got := e.nodeIDs(t, e.s); !slices.Equal(got, []int64{b, c, d}) {
		t.Fatalf("after a fourth node with a and b offline: %v, want %v", got, []int64{b, c, d})
	}
	e.wantLog(t, "reason=evicted limit=max_nodes")
	if ok, err := e.s.Ping(ctx, a, 30, ""); err != nil || ok {
		t.Errorf("Ping of the node forgotten: %v %v, want false", ok, err)
	}
	res := must(e.s.PullTaskRes(ctx, []string{ins.TaskId}))(t)
	if len(res) != 1 || res[0].Task.Error.GetCode() != state.NodeUnavailableCode {
		t.Fatalf("the task of the node forgotten: %v, want NODE_UNAVAILABLE", res)
	}
	// b is back: nothing offline is left to make room.
	if ok, err := e.s.Ping(ctx, b, 30, ""); err != nil || !ok {
		t.Fatalf("Ping of b: %v %v", ok, err)
	}
	_, err = create(30)
	wantLimit(t, "a node when the offline one came back", err, state.LimitMaxNodes, "its limit")
	// No limit, no count.
	e.node(t, e.s, 30)
	if st := e.stats(t, e.s); st.Nodes != 4 {
		t.Errorf("%d nodes, want 4", st.Nodes)
	}
}

// testMaxPerIdentity: NewNode.MaxPerIdentity bounds the nodes of one
// client-certificate identity, apart from the others'; a node of that
// identity offline makes room, never another's; no identity is not
// counted; with both limits full, one node forgotten makes room for both.
func testMaxPerIdentity(t *testing.T, e *env) {
	ctx := ctxOf(t)
	const m, o = "sepal:node:mallory", "sepal:node:olive"
	create := func(identity string, pi float64, max int) (int64, error) {
		return e.s.CreateNode(ctx, state.NewNode{PingInterval: pi, Identity: identity, Certificate: "cert-" + identity, MaxPerIdentity: 2, MaxNodes: max})
	}
	olive := must(create(o, 1, 0))(t)
	m1 := must(create(m, 10, 0))(t)
	m2 := must(create(m, 3600, 0))(t)
	_, err := create(m, 30, 0)
	wantLimit(t, "a third node of one identity", err, state.LimitMaxPerIdentity, "client certificate "+m+" holds 2 nodes")
	must(create(o, 30, 0))(t)
	for range 3 {
		must(create("", 30, 0))(t) // no identity: no limit per identity
	}

	e.clock.Advance(15 * time.Second) // olive's first and m1 offline; olive's the longest
	m3 := must(create(m, 30, 0))(t)
	ids := e.nodeIDs(t, e.s)
	if slices.Contains(ids, m1) || !slices.Contains(ids, olive) || !slices.Contains(ids, m2) || !slices.Contains(ids, m3) {
		t.Fatalf("nodes after the third of %s: %v; want m1 %d forgotten, not olive's %d", m, ids, m1, olive)
	}
	e.wantLog(t, "reason=evicted limit=max_nodes_per_identity")

	// Both limits full (7 nodes): m2 goes offline, and is the only one
	// forgotten, for both limits.
	e.clock.Advance(3600 * time.Second) // all offline but the ones pinged below
	for _, n := range ids {
		if n != m2 {
			must(e.s.Ping(ctx, n, 3600, ""))(t)
		}
	}
	if len(ids) != 7 {
		t.Fatalf("%d nodes, want 7", len(ids))
	}
	m4 := must(create(m, 30, 7))(t)
	after := e.nodeIDs(t, e.s)
	if len(after) != 7 || slices.Contains(after, m2) || !slices.Contains(after, m4) {
		t.Fatalf("nodes: %v, want m2 %d replaced by %d", after, m2, m4)
	}
	_, err = create(m, 30, 7)
	wantLimit(t, "a node when all are online", err, state.LimitMaxPerIdentity, "all online")
	_, err = create("", 30, 7)
	wantLimit(t, "a node without identity when all are online", err, state.LimitMaxNodes, "holds 7 nodes, all online")
}

// testRevokeNodes: RevokeNodes forgets the nodes of the revoked
// certificates at once, whatever their ping interval: their tasks are
// answered NODE_UNAVAILABLE at the next PullTaskRes, delivered or not, a
// Ping is not acknowledged; the others stay.
func testRevokeNodes(t *testing.T, e *env) {
	ctx := ctxOf(t)
	run := e.run(t, e.s)
	node := func(identity, cert string) int64 {
		return must(e.s.CreateNode(ctx, state.NewNode{PingInterval: 3600, Identity: identity, Certificate: cert}))(t)
	}
	m1 := node("sepal:node:mallory", "01/ca")
	a := node("sepal:node:alice", "02/ca")
	m2 := node("sepal:node:mallory", "01/ca")
	anon := node("", "")
	m3 := node("sepal:node:mallory", "03/ca") // a new certificate, same name
	delivered := e.push(t, e.s, TaskIns(run, m1, e.now()))
	waiting := e.push(t, e.s, TaskIns(run, m2, e.now()))
	other := e.push(t, e.s, TaskIns(run, a, e.now()))
	e.pullOne(t, e.s, m1)

	var asked []string
	gone := must(e.s.RevokeNodes(ctx, func(c string) bool { asked = append(asked, c); return c == "01/ca" }))(t)
	if !slices.Equal(gone, []int64{m1, m2}) {
		t.Fatalf("RevokeNodes forgot %v, want %v", gone, []int64{m1, m2})
	}
	if slices.Contains(asked, "") {
		t.Errorf("RevokeNodes asked about a node without certificate: %q", asked)
	}
	if got := e.nodeIDs(t, e.s); !slices.Equal(got, []int64{a, anon, m3}) {
		t.Errorf("nodes left: %v, want %v", got, []int64{a, anon, m3})
	}
	nodes := must(e.s.Nodes(ctx))(t)
	if nodes[0].Certificate != "02/ca" || nodes[1].Certificate != "" {
		t.Errorf("Nodes: %+v", nodes)
	}
	if e.online(t, e.s, run, m1) || !e.online(t, e.s, run, m3) {
		t.Error("GetNodes lists a revoked node, or not the node of the new certificate")
	}
	if countLog(e, "reason=certificate_revoked") != 2 {
		t.Errorf("want two lines for the nodes revoked:\n%s", e.logs.String())
	}
	e.wantLog(t, "identity=sepal:node:mallory certificate=01/ca undelivered_tasks=1")
	res := must(e.s.PullTaskRes(ctx, []string{delivered.TaskId, waiting.TaskId, other.TaskId}))(t)
	if len(res) != 2 {
		t.Fatalf("PullTaskRes right after the revocation: %d results, want the 2 NODE_UNAVAILABLE ones", len(res))
	}
	for _, r := range res {
		if r.Task.Error.GetCode() != state.NodeUnavailableCode || r.Task.Error.GetReason() != state.NodeUnavailableReason {
			t.Errorf("result %v, want NODE_UNAVAILABLE", r.Task.Error)
		}
	}
	if ok, err := e.s.Ping(ctx, m1, 30, "sepal:node:mallory"); err != nil || ok {
		t.Errorf("Ping of a revoked node: %v %v, want false", ok, err)
	}
	e.pullNone(t, e.s, m2)
	if again := must(e.s.RevokeNodes(ctx, func(c string) bool { return c == "01/ca" }))(t); len(again) != 0 {
		t.Errorf("a second RevokeNodes forgot %v", again)
	}
}

// testNodeLimitsShared: two States on one store hold the limits together,
// as SuperLinks on one database: nodes created at once through both never
// pass MaxNodes or MaxPerIdentity, and a revocation through one is seen
// through the other.
func testNodeLimitsShared(t *testing.T, e *env) {
	ctx := ctxOf(t)
	states := []state.State{e.s, e.open(t)}
	const max, perIdentity, tries = 6, 2, 20
	var mu sync.Mutex
	made, refused := map[string]int{}, 0
	var wg sync.WaitGroup
	for i := range tries {
		wg.Go(func() {
			identity := []string{"sepal:node:a", "sepal:node:b", "sepal:node:c", "sepal:node:d"}[i%4]
			_, err := states[i%2].CreateNode(ctx, state.NewNode{PingInterval: 3600, Identity: identity, Certificate: identity + "/cert",
				MaxNodes: max, MaxPerIdentity: perIdentity})
			mu.Lock()
			defer mu.Unlock()
			var le *state.NodeLimitError
			switch {
			case err == nil:
				made[identity]++
			case errors.As(err, &le):
				refused++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	total := 0
	for id, n := range made {
		total += n
		if n > perIdentity {
			t.Errorf("%s registered %d nodes, past its limit of %d", id, n, perIdentity)
		}
	}
	if total != max || refused != tries-max {
		t.Errorf("%d nodes made and %d refused (%v), want %d and %d", total, refused, made, max, tries-max)
	}
	for _, s := range states {
		if st := e.stats(t, s); st.Nodes != max {
			t.Errorf("a State sees %d nodes, want %d", st.Nodes, max)
		}
	}
	var victim string
	for id, n := range made {
		if n > 0 {
			victim = id
		}
	}
	gone := must(states[0].RevokeNodes(ctx, func(c string) bool { return c == victim+"/cert" }))(t)
	if len(gone) != made[victim] {
		t.Errorf("revoked %d nodes of %s, want %d", len(gone), victim, made[victim])
	}
	run := e.run(t, states[1])
	for _, n := range must(states[1].GetNodes(ctx, run))(t) {
		if slices.Contains(gone, n.NodeId) {
			t.Errorf("the other State lists the revoked node %d", n.NodeId)
		}
	}
	// The room they left is the other State's to fill.
	must(states[1].CreateNode(ctx, state.NewNode{PingInterval: 30, MaxNodes: max}))(t)
}
