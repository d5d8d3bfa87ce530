package metrics_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/metrics"
	"github.com/sepal-fl/sepal/state"
)

// fixedState answers with fixed values: the page's rendering is checked
// here on cases a live run seldom shows (identities with markup, a store
// that is down); the e2e test reads the page of a real run.
type fixedState struct {
	stats state.Stats
	nodes []state.NodeInfo
	runs  []state.RunInfo
	err   error
}

func (f *fixedState) Stats(context.Context) (state.Stats, error) { return f.stats, f.err }
func (f *fixedState) Nodes(context.Context) ([]state.NodeInfo, error) {
	return f.nodes, f.err
}
func (f *fixedState) Runs(_ context.Context, limit int) ([]state.RunInfo, error) {
	if limit > 0 && len(f.runs) > limit {
		return f.runs[:limit], f.err
	}
	return f.runs, f.err
}
func (f *fixedState) Check(context.Context) error { return f.err }

func TestStatusPage(t *testing.T) {
	now := time.Now()
	st := &fixedState{
		stats: state.Stats{Nodes: 3, NodesOnline: 2, Runs: 12, TaskInsWaiting: 4, TaskResWaiting: 1, Blobs: 2, BlobBytes: 3 << 20},
		nodes: []state.NodeInfo{
			{ID: 4242, Identity: "node-a.example", PingInterval: 30, Created: now.Add(-time.Hour), OnlineUntil: now.Add(time.Minute), Online: true},
			{ID: -77, Identity: `<script>alert(1)</script>`, PingInterval: 30, Created: now, OnlineUntil: now.Add(time.Minute), Online: true},
			{ID: 99, Online: false},
		},
	}
	for i := range 12 {
		st.runs = append(st.runs, state.RunInfo{ID: int64(1000 + i), Created: now, LastGroup: "3", TaskInsPushed: 6, TaskResPulled: 6})
	}
	r := newRig(t, metrics.Options{State: st, RecentRuns: 5, Refresh: 3 * time.Second, Version: "v1.2.3"})
	r.m.SetServing(true)
	code, page := r.get(t, "/")
	if code != 200 {
		t.Fatalf("GET /: %d\n%s", code, page)
	}
	for _, want := range []string{
		`<meta http-equiv="refresh" content="3">`,
		`<span class="ok" id="ready">ready</span>`,
		"v1.2.3",
		"CN=localhost,O=Sepal", "localhost, 127.0.0.1, ::1", "Sepal research CA",
		r.pki.Pair.Leaf.NotAfter.UTC().Format("2006-01-02 15:04:05 UTC"),
		`<dd class="source">file</dd>`,
		`start at`, `succeeded`,
		`Flower 1.8 nodes online: <span id="nodes-online">2</span>`, "(1 offline)",
		"<code>4242</code>", `<td class="identity">node-a.example</td>`,
		"&lt;script&gt;alert(1)&lt;/script&gt;",
		"<code>1000</code>", "<code>1004</code>", `<td class="round">3</td>`,
		"3.0 MiB",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %q", want)
		}
	}
	if strings.Contains(page, "<code>1005</code>") {
		t.Errorf("the page lists more than RecentRuns runs")
	}
	if strings.Contains(page, "<script") || strings.Contains(page, "<code>99</code>") {
		t.Errorf("the page holds a script, or an offline node:\n%s", page)
	}

	// The store goes down: the page says so, and /readyz fails.
	st.err = errors.New("connection refused")
	if _, page := r.get(t, "/"); !strings.Contains(page, "The state cannot be read: connection refused") {
		t.Errorf("the page does not say that the state is down:\n%s", page)
	}
	if code, body := r.get(t, "/readyz"); code != 503 || !strings.Contains(body, "the state cannot be reached: connection refused") {
		t.Errorf("/readyz with the state down: %d %q", code, body)
	}
	s := scrape(t, r)
	s.Want(t, 0, "sepal_state_up")
	st.err = nil
	s = scrape(t, r)
	s.Want(t, 1, "sepal_state_up")
	s.Want(t, 2, "sepal_nodes", "state", "online")
	s.Want(t, 1, "sepal_nodes", "state", "offline")
	s.Want(t, 12, "sepal_runs")
	s.Want(t, 4, "sepal_task_ins", "state", "waiting")
	s.Want(t, 1, "sepal_task_res_waiting")
	s.Want(t, 3<<20, "sepal_parameter_bytes")
}

// A plaintext SuperLink (--insecure) has no certificate and no handshakes
// to show, and is ready once serving.
func TestStatusPagePlaintext(t *testing.T) {
	m := metrics.New(metrics.Options{Logger: quiet})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	m.SetServing(true)
	r := &rig{m: m, http: srv}
	code, page := r.get(t, "/")
	if code != 200 || !strings.Contains(page, "No TLS: serving plaintext") || strings.Contains(page, "Handshakes") || strings.Contains(page, "Nodes online") {
		t.Errorf("plaintext page: %d\n%s", code, page)
	}
	if code, body := r.get(t, "/readyz"); code != 200 {
		t.Errorf("/readyz: %d %q", code, body)
	}
}
