// Package statetest is the conformance suite of state.State: one set of
// tests that every implementation runs on itself, as testing/fstest.TestFS
// serves every fs.FS. It checks the Flower 1.8.0 semantics the SuperLink
// promises (PROTOCOL.md and the superlink package's documentation): ids,
// liveness, validation and error codes, delivery of each TaskIns to exactly
// one node once, results, the made-up NODE_UNAVAILABLE result, the
// "already answered" memory, expiry, parameter arrays stored once by
// content, node identities, the limits on registered nodes and the
// revocation of their certificates, the observation methods, and, for
// stores that outlive a State (files, databases), restarts and several
// States racing on one store.
//
// An implementation's test calls Run:
//
//	func TestConformance(t *testing.T) {
//		statetest.Run(t, statetest.Options{NewStore: func(t *testing.T) statetest.Opener {
//			return func(t *testing.T, c statetest.Config) state.State {
//				return memstate.New(memstate.Options{Now: c.Now, Logger: c.Logger})
//			}
//		}})
//	}
package statetest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/rules"
)

// Config is what the suite hands to an Opener.
type Config struct {
	// Now is the suite's clock; liveness, expiry and the task times must
	// follow it.
	Now func() time.Time
	// Logger receives the State's log lines; the suite reads some of them
	// (a node that joined, left, missed its ping).
	Logger *slog.Logger
	// Link are the bounds of the 1.29 generation (state.Options.Link):
	// the suite lowers them to test them.
	Link state.LinkLimits
}

// Opener opens a State over one store. The suite closes every State it
// opens.
type Opener func(t *testing.T, c Config) state.State

// Options describe the implementation under test.
type Options struct {
	// NewStore makes a new, empty store (removed when t ends) and returns
	// how to open States over it. Required.
	NewStore func(t *testing.T) Opener
	// Shared says that States opened over one store share what they
	// commit, at the same time (as several SuperLink processes on one
	// database) and after one was closed (a restart): files and databases.
	// The suite then also checks restarts and States racing. False (the
	// in-memory state): every State starts empty.
	Shared bool
}

// Run runs the suite as subtests of t.
func Run(t *testing.T, o Options) {
	if o.NewStore == nil {
		t.Fatal("Options.NewStore is required")
	}
	tests := []struct {
		name   string
		fn     func(*testing.T, *env)
		shared bool
	}{
		{"IDs", testIDs, false},
		{"Liveness", testLiveness, false},
		{"NodeUnavailable", testNodeUnavailable, false},
		{"PushTaskInsInvalid", testPushTaskInsInvalid, false},
		{"PushTaskResInvalid", testPushTaskResInvalid, false},
		{"OtherRequestsInvalid", testOtherInvalid, false},
		{"Delivery", testDelivery, false},
		{"Results", testResults, false},
		{"RepeatedResult", testRepeatedResult, false},
		{"LateResult", testLateResult, false},
		{"Blobs", testBlobs, false},
		{"Sweep", testSweep, false},
		{"SweepLogsMissedPingOnce", testSweepLogsOnce, false},
		{"Identity", testIdentity, false},
		{"Stats", testStats, false},
		{"NodesAndRuns", testNodesAndRuns, false},
		{"Concurrent", testConcurrent, false},
		{"Close", testClose, false},
		{"MaxNodes", testMaxNodes, false},
		{"MaxPerIdentity", testMaxPerIdentity, false},
		{"RevokeNodes", testRevokeNodes, false},
		{"NodeLimitsShared", testNodeLimitsShared, true},
		{"Restart", testRestart, true},
		{"RestartGrace", testRestartGrace, true},
		{"SharedStore", testSharedStore, true},
		{"ConcurrentShared", testConcurrentShared, true},
	}
	for _, tc := range tests {
		if tc.shared && !o.Shared {
			continue // needs a store that outlives a State
		}
		t.Run(tc.name, func(t *testing.T) {
			e := &env{clock: &Clock{}, logs: &testkit.SyncBuffer{}, opener: o.NewStore(t)}
			e.clock.Set(time.Unix(1795638840, 0))
			e.s = e.open(t)
			tc.fn(t, e)
		})
	}
}

// Clock is a settable clock, safe for concurrent use. The zero value
// reads the zero time.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set sets the clock.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// Advance moves the clock by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is one subtest's store, clock, log and first State.
type env struct {
	clock  *Clock
	logs   *testkit.SyncBuffer
	opener Opener
	s      state.State
}

// open opens another State over the subtest's store, closed when t ends.
func (e *env) open(t *testing.T) state.State {
	t.Helper()
	s := e.opener(t, Config{Now: e.clock.Now, Logger: slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if s == nil {
		t.Fatal("the Opener returned no State")
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// now is the clock as unix seconds.
func (e *env) now() float64 { return rules.Seconds(e.clock.Now()) }

func ctxOf(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TaskIns builds a valid TaskIns for node in run, as a ServerApp pushes it.
func TaskIns(run, node int64, createdAt float64) *flwrproto.TaskIns {
	return &flwrproto.TaskIns{
		GroupId: "1",
		RunId:   run,
		Task: &flwrproto.Task{
			Producer:  &flwrproto.Node{Anonymous: true},
			Consumer:  &flwrproto.Node{NodeId: node},
			CreatedAt: createdAt,
			Ttl:       3600,
			TaskType:  "train",
			Recordset: &flwrproto.RecordSet{},
		},
	}
}

// TaskRes builds a valid answer of node to ins, as a SuperNode pushes it.
func TaskRes(ins *flwrproto.TaskIns, node int64, createdAt float64) *flwrproto.TaskRes {
	return &flwrproto.TaskRes{
		GroupId: ins.GroupId,
		RunId:   ins.RunId,
		Task: &flwrproto.Task{
			Producer:  &flwrproto.Node{NodeId: node},
			Consumer:  &flwrproto.Node{Anonymous: true},
			CreatedAt: createdAt,
			Ttl:       3000,
			Ancestry:  []string{ins.TaskId},
			TaskType:  ins.Task.TaskType,
			Recordset: &flwrproto.RecordSet{},
		},
	}
}

// WantCode fails t unless err is a status error with code want whose
// message holds msg.
func WantCode(t testing.TB, name string, err error, want codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != want {
		t.Errorf("%s: got %v, want %v", name, err, want)
		return
	}
	if !strings.Contains(status.Convert(err).Message(), msg) {
		t.Errorf("%s: message %q lacks %q", name, status.Convert(err).Message(), msg)
	}
}

// must returns v, failing t at once on err: must(f())(t).
func must[T any](v T, err error) func(*testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func (e *env) node(t *testing.T, s state.State, pingInterval float64) int64 {
	t.Helper()
	return must(s.CreateNode(ctxOf(t), state.NewNode{PingInterval: pingInterval}))(t)
}

func (e *env) run(t *testing.T, s state.State) int64 {
	t.Helper()
	return must(s.CreateRun(ctxOf(t)))(t)
}

// push pushes one TaskIns and returns it with its id set.
func (e *env) push(t *testing.T, s state.State, ti *flwrproto.TaskIns) *flwrproto.TaskIns {
	t.Helper()
	ids := must(s.PushTaskIns(ctxOf(t), []*flwrproto.TaskIns{ti}))(t)
	if len(ids) != 1 || ids[0] == "" || ti.TaskId != ids[0] {
		t.Fatalf("PushTaskIns returned %v, TaskIns id %q", ids, ti.TaskId)
	}
	return ti
}

// pullOne pulls for node and wants exactly one TaskIns.
func (e *env) pullOne(t *testing.T, s state.State, node int64) *flwrproto.TaskIns {
	t.Helper()
	got := must(s.PullTaskIns(ctxOf(t), node, ""))(t)
	if len(got) != 1 {
		t.Fatalf("node %d pulled %d TaskIns, want 1", node, len(got))
	}
	return got[0]
}

// pullNone pulls for node and wants nothing.
func (e *env) pullNone(t *testing.T, s state.State, node int64) {
	t.Helper()
	if got := must(s.PullTaskIns(ctxOf(t), node, ""))(t); len(got) != 0 {
		t.Fatalf("node %d pulled %d TaskIns, want none", node, len(got))
	}
}

// answer pushes node's answer to ins.
func (e *env) answer(t *testing.T, s state.State, ins *flwrproto.TaskIns, node int64) *flwrproto.TaskRes {
	t.Helper()
	r := TaskRes(ins, node, e.now())
	res := must(s.PushTaskRes(ctxOf(t), []*flwrproto.TaskRes{r}, ""))(t)
	if len(res) != 1 || r.TaskId == "" {
		t.Fatalf("PushTaskRes returned %v, TaskRes id %q", res, r.TaskId)
	}
	if _, ok := res[r.TaskId]; !ok {
		t.Fatalf("PushTaskRes returned %v, not the id %q it gave the TaskRes", res, r.TaskId)
	}
	return r
}

func (e *env) stats(t *testing.T, s state.State) state.Stats {
	t.Helper()
	return must(s.Stats(ctxOf(t)))(t)
}

func (e *env) online(t *testing.T, s state.State, run, node int64) bool {
	t.Helper()
	for _, n := range must(s.GetNodes(ctxOf(t), run))(t) {
		if n.NodeId == node {
			return true
		}
	}
	return false
}

// wantLog fails t unless the log holds each of want.
func (e *env) wantLog(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(e.logs.String(), w) {
			t.Errorf("log lacks %q:\n%s", w, e.logs.String())
		}
	}
}
