package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/flowerenv"
	"github.com/sepal-fl/sepal/internal/testkit"
)

// flower18 runs real Flower 1.8.0 (../shared/flower-1.8) with the numpy
// apps of testdata/flower18: flower-client-app as its SuperNode and
// flower-server-app with FedAvg.
type flower18 struct {
	f   flowerenv.Flower
	app string // testdata/flower18, absolute
	env []string
}

func newFlower18(t *testing.T) flower18 {
	f := flowerenv.Flower18(t)
	app, err := filepath.Abs(filepath.Join("testdata", "flower18"))
	if err != nil {
		t.Fatal(err)
	}
	// No __pycache__ in testdata.
	return flower18{f: f, app: app, env: []string{"PYTHONDONTWRITEBYTECODE=1"}}
}

// startNodes starts n flower-client-apps in dir on the Fleet API at
// fleet, over TLS trusting ca.
func (f flower18) startNodes(t *testing.T, dir, fleet, ca string, n int) []*proc {
	var ps []*proc
	for range n {
		ps = append(ps, start(t, dir, f.env, filepath.Join(f.f.Bin, "flower-client-app"), "client:app", "--dir", f.app,
			"--root-certificates", ca, "--server", fleet))
	}
	return ps
}

// startServerApp starts flower-server-app in dir on the Driver API at
// driver, over TLS trusting ca, for rounds FedAvg rounds over two nodes.
func (f flower18) startServerApp(t *testing.T, dir, driver, ca string, rounds int) *proc {
	return start(t, dir, append([]string{fmt.Sprintf("SEPAL_ROUNDS=%d", rounds)}, f.env...), filepath.Join(f.f.Bin, "flower-server-app"),
		"server:app", "--dir", f.app, "--root-certificates", ca, "--server", driver)
}

// checkFlower18Run checks the output of a flower-server-app that ran the
// testdata ServerApp: every round with both nodes' results, the model
// whole after each (its mean is the round's number), and the summary.
func checkFlower18Run(t *testing.T, out string, rounds int) {
	t.Helper()
	for k := 1; k <= rounds; k++ {
		if !strings.Contains(out, fmt.Sprintf("[ROUND %d]", k)) {
			t.Errorf("Flower 1.8.0's ServerApp did not start round %d:\n%s", k, out)
		}
		if want := fmt.Sprintf("sepal-e2e round %d: 2 results, model mean %d.0", k, k); !strings.Contains(out, want) {
			t.Errorf("Flower 1.8.0's ServerApp did not print %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "aggregate_fit: received 2 results and 0 failures"); n != rounds {
		t.Errorf("%d rounds trained on 2 nodes without failures, want %d:\n%s", n, rounds, out)
	}
	if want := fmt.Sprintf("Run finished %d rounds", rounds); !strings.Contains(out, want) {
		t.Errorf("Flower 1.8.0's ServerApp did not print %q:\n%s", want, out)
	}
}

// registered129 matches the SuperLink's log line of a 1.29 node's
// registration.
var registered129 = regexp.MustCompile(`msg="node registered" node_id=(\d+) generation=1\.29`)

// bothGenerations serves two generations at once on d's SuperLink, on its
// ports, over TLS: a quickstart-numpy run of Flower 1.29.0 (d's two stock
// SuperNodes, flwr run --stream through the Control API, Flower's
// SuperExec and ServerApp on ServerAppIo) and a run of Flower 1.8.0 (two
// flower-client-apps on the same Fleet port, flower-server-app on the
// Driver API, which shares its port with ServerAppIo), rounds rounds
// each. Both must complete every round. Meanwhile and after, the metrics
// at metricsAddr and the status page (in Chromium) must show each
// generation's nodes and runs, the 1.29 objects held while the run ran
// and given back after, and calls by method of the 1.29 services. It
// returns the 1.29 run's id.
func (d *flower129) bothGenerations(t *testing.T, metricsAddr string, rounds int) string {
	t.Helper()
	f18 := newFlower18(t)
	ca := filepath.Join(d.dir, "certificates", "ca.crt")
	f18.startNodes(t, d.dir, d.fleet, ca, 2)

	began := time.Now()
	run129 := start(t, d.app, d.env, filepath.Join(d.f.Bin, "flwr"), quickstartArgs(rounds)...)
	run18 := f18.startServerApp(t, d.dir, d.appIo, ca, rounds)

	// While they run: what the SuperLink holds for the 1.29 run.
	base := "http://" + metricsAddr
	var maxObjects, maxObjectBytes, maxMessages, maxRunning float64
	deadline := time.Now().Add(4 * time.Minute)
	done := map[*proc]time.Duration{}
	for len(done) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the runs did not end within 4 minutes: flwr run:\n%s\nflower-server-app:\n%s", run129.out.String(), run18.out.String())
		}
		s := testkit.Scrape(t, base+"/metrics")
		v := func(name string, labels ...string) float64 { x, _ := s.Value(name, labels...); return x }
		maxObjects = max(maxObjects, v("sepal_flower129_objects"))
		maxObjectBytes = max(maxObjectBytes, v("sepal_flower129_object_bytes"))
		maxMessages = max(maxMessages, v("sepal_flower129_messages"))
		maxRunning = max(maxRunning, v("sepal_flower129_runs", "status", "running"))
		for _, p := range []*proc{run129, run18} {
			select {
			case <-p.done:
				if _, ok := done[p]; !ok {
					done[p] = time.Since(began)
				}
			default:
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if code := run129.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("flwr run exited %d:\n%s", code, run129.out.String())
	}
	if code := run18.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("Flower 1.8.0's flower-server-app exited %d:\n%s", code, run18.out.String())
	}
	id := checkQuickstart(t, run129.out.String(), rounds)
	checkFlower18Run(t, run18.out.String(), rounds)
	t.Logf("at the same time: Flower 1.29 flwr run of %d rounds %v, Flower 1.8.0 run of %d rounds %v; 1.29 state at most %v objects (%.1f MiB), %v messages",
		rounds, done[run129].Round(100*time.Millisecond), rounds, done[run18].Round(100*time.Millisecond), maxObjects, maxObjectBytes/(1<<20), maxMessages)
	if maxObjects == 0 || maxObjectBytes == 0 || maxMessages == 0 || maxRunning != 1 {
		t.Errorf("while the 1.29 run ran the metrics showed at most %v objects of %v bytes, %v messages, %v runs running; want some, and one run",
			maxObjects, maxObjectBytes, maxMessages, maxRunning)
	}

	// After: both generations' nodes online, one run each, the 1.29 run's
	// objects given back, calls counted by method.
	s := testkit.Scrape(t, base+"/metrics")
	s.Want(t, 1, "sepal_state_up")
	s.Want(t, 2, "sepal_nodes", "state", "online")
	s.Want(t, 1, "sepal_runs")
	for st, n := range map[string]float64{"registered": 0, "online": 2, "offline": 0, "unregistered": 0} {
		s.Want(t, n, "sepal_flower129_nodes", "state", st)
	}
	s.Want(t, 0, "sepal_flower129_nodes_heartbeat_late")
	for st, n := range map[string]float64{"pending": 0, "starting": 0, "running": 0, "finished": 1} {
		s.Want(t, n, "sepal_flower129_runs", "status", st)
	}
	s.Want(t, 0, "sepal_flower129_objects")
	s.Want(t, 0, "sepal_flower129_object_bytes")
	s.Want(t, 0, "sepal_flower129_messages")
	ok := func(svc, method string) float64 {
		v, _ := s.Value("grpc_server_handled_total", "grpc_service", svc, "grpc_method", method, "grpc_code", "OK")
		return v
	}
	// Train and evaluate per round and node: 1.29's messages and 1.8.0's
	// TaskIns and TaskRes.
	perRun := float64(2 * 2 * rounds)
	for _, c := range []struct {
		svc, method string
		atLeast     float64
	}{
		{"flwr.proto.Fleet", "ActivateNode", 2}, {"flwr.proto.Fleet", "PullMessages", perRun},
		{"flwr.proto.Fleet", "PushMessages", perRun}, {"flwr.proto.Fleet", "PushObject", perRun}, {"flwr.proto.Fleet", "PullObject", perRun},
		{"flwr.proto.ServerAppIo", "PushMessages", 2 * float64(rounds)}, {"flwr.proto.ServerAppIo", "PullMessages", 2 * float64(rounds)},
		{"flwr.proto.ServerAppIo", "PushObject", 1}, {"flwr.proto.ServerAppIo", "PullObject", perRun},
		{"flwr.proto.Control", "StartRun", 1}, {"flwr.proto.Control", "StreamLogs", 1},
		{"flwr.proto.Fleet", "CreateNode", 2}, {"flwr.proto.Fleet", "PushTaskRes", perRun},
		{"flwr.proto.Driver", "CreateRun", 1}, {"flwr.proto.Driver", "PushTaskIns", 2 * float64(rounds)},
	} {
		if got := ok(c.svc, c.method); got < c.atLeast {
			t.Errorf("grpc_server_handled_total{%s/%s, OK} = %v, want at least %v", c.svc, c.method, got, c.atLeast)
		}
	}
	s.Want(t, 1, "grpc_server_handled_total", "grpc_service", "flwr.proto.Control", "grpc_method", "StartRun", "grpc_code", "OK")
	for _, api := range []string{"fleet", "driver", "control"} {
		if v, _ := s.Value("sepal_tls_handshakes_total", "api", api, "result", "success"); v < 1 {
			t.Errorf("no successful TLS handshake counted on the %s API", api)
		}
	}

	// The status page, in Chromium: the 1.29 nodes (the ids the SuperLink
	// registered, a key fingerprint each, heartbeats on time) and run, and
	// the 1.8.0 nodes and run at its last round.
	var ids []string
	for _, m := range registered129.FindAllStringSubmatch(d.link.out.String(), -1) {
		ids = append(ids, m[1])
	}
	statusInBrowser(t, base+"/", "", func(p statusPage) {
		if p.ready != "ready" || p.nodesOnline != "2" || p.nodes129Online != "2" {
			t.Errorf("the page says %q, %q Flower 1.8 nodes and %q Flower 1.29 nodes online, want ready, 2 and 2:\n%s", p.ready, p.nodesOnline, p.nodes129Online, p.text)
		}
		if len(ids) != 2 || !slices.Equal(sorted(p.nodeIDs129), sorted(ids)) {
			t.Errorf("the page lists 1.29 nodes %q, the SuperLink registered %q", p.nodeIDs129, ids)
		}
		fp := regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{16}$`)
		if len(p.keys129) != 2 || p.keys129[0] == p.keys129[1] || !fp.MatchString(p.keys129[0]) || !fp.MatchString(p.keys129[1]) {
			t.Errorf("the page shows key fingerprints %q, want two distinct SHA256:...", p.keys129)
		}
		for _, h := range p.heartbeats129 {
			if !strings.HasPrefix(h, "on time, last ") || !strings.HasSuffix(h, "every 30 s") {
				t.Errorf("the page shows the heartbeat %q, want on time, every 30 s", h)
			}
		}
		if !slices.Equal(p.statuses129, []string{"finished:completed"}) {
			t.Errorf("the page shows 1.29 runs %q, want one finished:completed", p.statuses129)
		}
		if !slices.Equal(p.rounds, []string{strconv.Itoa(rounds)}) {
			t.Errorf("the page shows 1.8 runs at rounds %q, want one at %d", p.rounds, rounds)
		}
		if !strings.Contains(p.text, id) {
			t.Errorf("the page does not list the 1.29 run %s:\n%s", id, p.text)
		}
	})
	return id
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
