package metrics_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/metrics"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memlink"
	"github.com/sepal-fl/sepal/state/statetest"
	"github.com/sepal-fl/sepal/superlink"
)

// TestFlower129Metrics fills a real in-memory 1.29 state with nodes in
// every state (one online but late with its heartbeat) and runs in
// several statuses, and checks the metrics (fixed labels only) and the
// status page, then the page and scrape with the store closed.
func TestFlower129Metrics(t *testing.T) {
	ctx := context.Background()
	clock := &statetest.Clock{}
	clock.Set(time.Now().Add(-time.Hour))
	ls := memlink.New(state.Options{Logger: quiet, Now: clock.Now})
	must := func(id uint64, err error) uint64 {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}

	// first joins with a 30 s interval and sends no heartbeat; 40 s later
	// late joins with 60 s, left joins and leaves; registered is
	// registered as flwr supernode register does; gone is unregistered.
	keys := map[string][]byte{}
	for _, n := range []string{"first", "late", "left", "registered", "gone"} {
		_, keys[n] = statetest.NodeKey(t)
	}
	first := must(ls.RegisterNode(ctx, keys["first"], 0))
	must(ls.ActivateNode(ctx, keys["first"], 30))
	clock.Advance(40 * time.Second)
	late := must(ls.RegisterNode(ctx, keys["late"], 0))
	must(ls.ActivateNode(ctx, keys["late"], 60))
	left := must(ls.RegisterNode(ctx, keys["left"], 0))
	must(ls.ActivateNode(ctx, keys["left"], 30))
	if err := ls.DeactivateNode(ctx, left); err != nil {
		t.Fatal(err)
	}
	registered := must(ls.RegisterNode(ctx, keys["registered"], state.HeartbeatDefaultInterval))
	gone := must(ls.RegisterNode(ctx, keys["gone"], 0))
	if err := ls.UnregisterNode(ctx, gone); err != nil {
		t.Fatal(err)
	}

	// Runs: one completed, one failed, one pending whose app id holds
	// markup.
	newRun := func(fabID string) uint64 {
		t.Helper()
		content := []byte("fab of " + fabID)
		h := sha256.Sum256(content)
		return must(ls.CreateLinkRun(ctx, state.NewRun{FabID: fabID, FabVersion: "1.0.0",
			Fab: &flwr129.Fab{HashStr: hex.EncodeToString(h[:]), Content: content}}))
	}
	completed := newRun("flwrlabs/quickstart-numpy")
	tok, err := ls.RequestToken(ctx, completed)
	if err != nil || tok == "" {
		t.Fatalf("RequestToken: %q %v", tok, err)
	}
	if _, _, _, err := ls.StartApp(ctx, completed); err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{20, 35, 35} { // its ServerApp runs for 90 s, with heartbeats
		clock.Advance(d * time.Second)
		if ok, err := ls.AppHeartbeat(ctx, tok); !ok || err != nil {
			t.Fatalf("AppHeartbeat: %v %v", ok, err)
		}
	}
	if err := ls.UpdateRunStatus(ctx, completed, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusCompleted}); err != nil {
		t.Fatal(err)
	}
	failed := newRun("sepal/failing")
	if err := ls.UpdateRunStatus(ctx, failed, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusFailed}); err != nil {
		t.Fatal(err)
	}
	pending := newRun("<script>alert(1)</script>")

	// Now, 90 s after late joined (and its last heartbeat): first went
	// offline 60 s after it joined, late is online but missed one of its
	// 60 s heartbeats.
	r := newRig(t, metrics.Options{LinkState: ls, ListedNodes: 3, Now: clock.Now})
	r.m.SetServing(true)
	s := scrape(t, r)
	s.Want(t, 1, "sepal_state_up")
	for st, n := range map[string]float64{"registered": 1, "online": 1, "offline": 2, "unregistered": 1} {
		s.Want(t, n, "sepal_flower129_nodes", "state", st)
	}
	s.Want(t, 1, "sepal_flower129_nodes_heartbeat_late")
	for st, n := range map[string]float64{"pending": 1, "starting": 0, "running": 0, "finished": 2} {
		s.Want(t, n, "sepal_flower129_runs", "status", st)
	}
	s.Want(t, 0, "sepal_flower129_messages")
	s.Want(t, 0, "sepal_flower129_objects")
	s.Want(t, 0, "sepal_flower129_object_bytes")
	if got := s.LabelValues("sepal_flower129_nodes", "state"); !slices.Equal(got, []string{"offline", "online", "registered", "unregistered"}) {
		t.Errorf("state label values %v", got)
	}
	// Every 1.29 method is counted from the start, under Flower's names.
	for _, m := range [][2]string{{"flwr.proto.Fleet", "RegisterNode"}, {"flwr.proto.Fleet", "PullMessages"}, {"flwr.proto.Fleet", "CreateNode"},
		{"flwr.proto.ServerAppIo", "PushMessages"}, {"flwr.proto.Control", "StartRun"}, {"flwr.proto.Control", "StreamLogs"}} {
		s.Want(t, 0, "grpc_server_started_total", "grpc_service", m[0], "grpc_method", m[1])
	}
	if got := s.LabelValues("grpc_server_started_total", "grpc_service"); strings.Contains(strings.Join(got, ","), "sepal.") {
		t.Errorf("the generated service names show: %v", got)
	}

	_, page := r.get(t, "/")
	page = strings.ReplaceAll(page, "&#43;", "+") // html/template's escape of a fingerprint's +
	for _, want := range []string{
		`Flower 1.29 SuperNodes online: <span id="nodes129-online">1</span>`,
		`(1 registered, 2 offline, 1 unregistered)`,
		"<code>" + superlink.KeyFingerprint(keys["first"]) + "</code>",
		"<code>" + superlink.KeyFingerprint(keys["late"]) + "</code>",
		`<span class="warn">late</span>, last 1 min ago, every 1 min`,
		`<span class="muted">none since 1 min ago</span>`,
		"and 1 more not listed.",
		`<span class="ok">finished:completed</span>`, `<span class="bad">finished:failed</span>`, `<span class="">pending</span>`,
		"flwrlabs/quickstart-numpy 1.0.0", "&lt;script&gt;alert(1)&lt;/script&gt; 1.0.0",
		"<td>1 min</td>", // the completed run ran for 90 s
		formatID(completed), formatID(failed), formatID(pending),
		`<dt>Objects held</dt><dd class="num">0 (0 B)</dd>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	// Listed: first, late, left (registration order); registered is the
	// one more; gone is unregistered.
	for _, id := range []uint64{registered, gone} {
		if strings.Contains(page, formatID(id)) {
			t.Errorf("the page lists node %d", id)
		}
	}
	for _, id := range []uint64{first, late, left} {
		if !strings.Contains(page, formatID(id)) {
			t.Errorf("the page does not list node %d", id)
		}
	}
	if strings.Contains(page, "<script") {
		t.Errorf("the page holds a script:\n%s", page)
	}

	// The store goes away: the page says so, the scrape says the state is down.
	ls.Close()
	if _, page := r.get(t, "/"); !strings.Contains(page, "The Flower 1.29 state cannot be read: ") {
		t.Errorf("the page does not say that the 1.29 state is down:\n%s", page)
	}
	s = scrape(t, r)
	s.Want(t, 0, "sepal_state_up")
	if _, ok := s.Value("sepal_flower129_nodes", "state", "online"); ok {
		t.Errorf("1.29 node counts exported from a closed state")
	}
}

func formatID(id uint64) string { return "<code>" + strconv.FormatUint(id, 10) + "</code>" }
