package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/transport"
)

// attackerSource is the loopback address the attacker's connections come
// from, so that the SuperLink's limits per peer count it apart from the
// legitimate nodes on 127.0.0.1.
const attackerSource = "127.0.0.2"

// attackerConns opens n connections to the Fleet API at addr from
// attackerSource, over TLS with o (and its client certificate, if any).
func attackerConns(t *testing.T, addr string, o transport.ClientOptions, n int) []flwrproto.FleetClient {
	t.Helper()
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(attackerSource)}, Timeout: 10 * time.Second}
	var out []flwrproto.FleetClient
	for range n {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		out = append(out, flwrproto.NewFleetClient(c))
	}
	return out
}

// floodTally counts the answers to an attacker's CreateNode calls.
type floodTally struct {
	mu      sync.Mutex
	calls   int
	ok      []int             // per connection
	ids     []int64           // the nodes created
	refused map[string]int    // by code and the limit the message names
	samples map[string]string // one message per kind
}

func newTally(conns int) *floodTally {
	return &floodTally{ok: make([]int, conns), refused: map[string]int{}, samples: map[string]string{}}
}

// limitOf names the limit a refusal's message names.
func limitOf(err error) string {
	msg := status.Convert(err).Message()
	for _, k := range []struct{ key, substr string }{
		{"ping_interval_cap", "above this SuperLink's limit"},
		{"rate", "too many registrations"},
		{"per_connection", "this connection holds"},
		{"per_identity", "the client certificate"},
		{"max_nodes", "the SuperLink holds"},
	} {
		if strings.Contains(msg, k.substr) {
			return status.Code(err).String() + " " + k.key
		}
	}
	return status.Code(err).String() + " other"
}

func (f *floodTally) add(conn int, id int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if err == nil {
		f.ok[conn]++
		f.ids = append(f.ids, id)
		return
	}
	k := limitOf(err)
	f.refused[k]++
	if _, ok := f.samples[k]; !ok {
		f.samples[k] = status.Convert(err).Message()
	}
}

func (f *floodTally) total() (ok int) {
	for _, n := range f.ok {
		ok += n
	}
	return ok
}

func (f *floodTally) String() string {
	var kinds []string
	for k, n := range f.refused {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(kinds)
	return fmt.Sprintf("%d calls, %d nodes created (per connection %v), refused: %s", f.calls, f.total(), f.ok, strings.Join(kinds, ", "))
}

// flood makes CreateNode calls with pingInterval on every connection,
// workers at once on each, each worker calls calls, or until ctx ends
// when calls is 0.
func flood(ctx context.Context, conns []flwrproto.FleetClient, workers, calls int, pingInterval float64, f *floodTally) {
	var wg sync.WaitGroup
	for i, c := range conns {
		for range workers {
			wg.Go(func() {
				for n := 0; (calls == 0 || n < calls) && ctx.Err() == nil; n++ {
					r, err := c.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: pingInterval})
					if ctx.Err() != nil {
						return
					}
					f.add(i, r.GetNode().GetNodeId(), err)
				}
			})
		}
	}
	wg.Wait()
}

// cpuOf is the CPU time process pid has used.
func cpuOf(t *testing.T, pid int) time.Duration {
	t.Helper()
	d, err := load.TreeCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A node registration flood against the real binary, beside a legitimate
// FedAvg: two flower-client-apps on 127.0.0.1 join a SuperLink (its
// --max-nodes lowered to 60, the other node limits at their defaults) and
// run 5 FedAvg rounds, to time them without an attack; then a stranger on 127.0.0.2 registers nodes as fast as it can on 6
// connections (ping_interval 1 s): it gets at most 16 on one connection,
// never past 60 nodes in all, at most its burst of 100 calls, and is
// refused past each. Its nodes miss their ping; then, while flower-server-app runs
// 5 FedAvg rounds, it floods CreateNode with ping_interval 1e9 (31 years)
// on 8 connections (100,000 such calls got 100,000 nodes before), every
// one refused. The run finishes every round with the two real nodes and
// no other.
func TestAttackNodeRegistration(t *testing.T) {
	needE2E(t)
	sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--max-nodes", "60"}, metrics: true})
	dir := sl.dir
	pid := sl.cmd.Process.Pid
	metricsURL := "http://" + sl.metrics + "/metrics"
	node := func() *proc {
		return start(t, dir, nil, "flower-client-app", "client:app", "--root-certificates", slCA, "--server", sl.fleet, "--poll-interval", "500ms")
	}
	clients := []*proc{node(), node()}
	waitCount(t, sl.proc, "node joined", 2, 20*time.Second)
	fedAvg := func() *proc {
		return start(t, dir, nil, "flower-server-app", "server:app", "--root-certificates", slCA, "--server", sl.driver, "--rounds", "5")
	}
	begin := time.Now()
	if code := fedAvg().wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("the FedAvg run before the attack exited %d", code)
	}
	baseline := time.Since(begin)
	cpu0, hwm0 := cpuOf(t, pid), vm(t, pid).HWM
	tlsOpts := transport.ClientOptions{RootCertificates: filepath.Join(dir, slCA)}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The limits, one by one: 20 calls on one connection (16 nodes, then
	// the limit per connection), then 100 on five more (the 60 nodes in
	// all, then the burst of 100 calls).
	begin = time.Now()
	burst := newTally(6)
	conns := attackerConns(t, sl.fleet, tlsOpts, 6)
	flood(ctx, conns[:1], 1, 20, 1, burst)
	rest := newTally(5)
	flood(ctx, conns[1:], 1, 20, 1, rest)
	took := time.Since(begin)
	burst.calls += rest.calls
	copy(burst.ok[1:], rest.ok)
	for k, n := range rest.refused {
		burst.refused[k] += n
		burst.samples[k] = rest.samples[k]
	}
	t.Logf("a stranger's burst of valid registrations (%v): %s", took.Round(time.Millisecond), burst)
	if max := 100 + int(10*took.Seconds()) + 1; burst.total() > max {
		t.Errorf("the stranger registered %d nodes in %v, past the burst and rate (%d)", burst.total(), took, max)
	}
	for i, n := range burst.ok {
		if n > 16 {
			t.Errorf("connection %d registered %d nodes, past --max-nodes-per-connection's 16", i, n)
		}
	}
	if burst.ok[0] != 16 {
		t.Errorf("the first connection registered %d nodes, want 16", burst.ok[0])
	}
	for _, k := range []string{"ResourceExhausted rate", "ResourceExhausted per_connection"} {
		if burst.refused[k] == 0 {
			t.Errorf("no refusal %q: %s", k, burst)
		}
	}
	s := testkit.Scrape(t, metricsURL)
	if n := s.Sum("sepal_nodes"); n > 60 {
		t.Errorf("%v nodes registered, past --max-nodes 60", n)
	}
	evicted := strings.Count(sl.out.String(), "reason=evicted")
	if full := s.Sum("sepal_node_registrations_refused_total", "reason", "max_nodes"); full+float64(evicted) == 0 {
		t.Errorf("60 nodes full, and no node was refused or evicted for --max-nodes: %s", burst)
	}
	for k, msg := range burst.samples {
		t.Logf("  %s: %s", k, msg)
	}
	time.Sleep(1500 * time.Millisecond) // its nodes miss their ping

	// The flood of ping_interval 1e9 during a FedAvg run.
	app := fedAvg()
	fctx, stopFlood := context.WithCancel(ctx)
	flooded := newTally(8)
	var flooding sync.WaitGroup
	flooding.Go(func() { flood(fctx, attackerConns(t, sl.fleet, tlsOpts, 8), 4, 0, 1e9, flooded) })
	begin = time.Now()
	code := app.wait(t, 3*time.Minute)
	wall := time.Since(begin)
	stopFlood()
	flooding.Wait()
	out := app.out.String()
	if code != 0 {
		t.Fatalf("flower-server-app exited %d during the flood:\n%s", code, out)
	}
	rounds := parseRounds(t, out)
	if len(rounds) != 5 {
		t.Fatalf("%d rounds finished during the flood, want 5:\n%s", len(rounds), out)
	}
	for _, r := range rounds {
		if r.nodes != 2 {
			t.Errorf("round %d averaged %d nodes, want the 2 real ones", r.n, r.nodes)
		}
	}
	if strings.Contains(out, "node dropped") {
		t.Errorf("the run addressed a node other than the two real ones:\n%s", out)
	}
	if flooded.total() != 0 {
		t.Errorf("the flood of ping_interval 1e9 registered %d nodes: %s", flooded.total(), flooded)
	}
	if flooded.refused["ResourceExhausted rate"] == 0 || flooded.refused["InvalidArgument ping_interval_cap"] == 0 {
		t.Errorf("want the flood refused for its ping_interval, then for its rate: %s", flooded)
	}
	cpu, hwm := cpuOf(t, pid), vm(t, pid).HWM
	s = testkit.Scrape(t, metricsURL)
	s.Want(t, 2, "sepal_nodes", "state", "online")
	var reasons []string
	for _, r := range s.LabelValues("sepal_node_registrations_refused_total", "reason") {
		v, _ := s.Value("sepal_node_registrations_refused_total", "reason", r)
		reasons = append(reasons, fmt.Sprintf("%s %v", r, v))
	}
	t.Logf("during %d FedAvg rounds (%v; %v without the attack): %s (%.0f calls/s)", len(rounds), wall.Round(time.Millisecond),
		baseline.Round(time.Millisecond), flooded, float64(flooded.calls)/wall.Seconds())
	t.Logf("SuperLink: peak RSS (VmHWM) %d MiB (%d MiB before the attacks), CPU %.1f s during them (%.1f s in all); refused by reason: %s",
		hwm/mib, hwm0/mib, (cpu - cpu0).Seconds(), cpu.Seconds(), strings.Join(reasons, ", "))
	if !strings.Contains(sl.out.String(), `level=WARN msg="node registration refused by a limit"`) {
		t.Error("no warning of the refusals in the SuperLink's log")
	}
	if n := strings.Count(sl.out.String(), "node registration refused by a limit"); n > 40 {
		t.Errorf("%d warnings of refusals for %d refused calls: the log is not rate-limited", n, flooded.calls)
	}
	if err := checkHealth(t, sl.fleet, sl.tls); err != nil {
		t.Errorf("health after the attack: %v", err)
	}
	stopClients(t, clients)
}

// The same under mutual TLS: a node certificate (mallory's, from 127.0.0.2)
// registers no more than --max-nodes-per-identity (4) nodes, whatever it
// tries on two connections; they take ping_interval 3600 and never answer.
// A FedAvg run with the two real nodes (alice and bob) addresses them too;
// once mallory's first task is out, flower-certs revoke mallory: the CRL's
// reload takes its 4 nodes offline within a few seconds, their tasks are
// answered NODE_UNAVAILABLE, and the run finishes without waiting out their
// ping interval (nor the server app's 5 minute round timeout).
func TestAttackNodeRegistrationMutualTLS(t *testing.T) {
	needE2E(t)
	dir := t.TempDir()
	for _, args := range [][]string{nil, {"node", "alice", "bob", "mallory"}} {
		if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", args...); code != 0 {
			t.Fatalf("flower-certs %q exited %d:\n%s", args, code, out)
		}
	}
	sl := startSuperLink(t, linkOptions{dir: dir, certs: true, metrics: true, args: []string{"--fleet-api-client-ca", slCA, "--client-crl", "certificates/crl.pem",
		"--certificates-poll-interval", "200ms", "--max-nodes-per-identity", "4"}})
	pid := sl.cmd.Process.Pid
	var clients []*proc
	for _, n := range []string{"alice", "bob"} {
		clients = append(clients, start(t, dir, nil, "flower-client-app", append([]string{"client:app", "--root-certificates", slCA,
			"--server", sl.fleet, "--poll-interval", "500ms"}, clientCert("node", n)...)...))
	}
	waitCount(t, sl.proc, "node joined", 2, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	mallory := attackerConns(t, sl.fleet, transport.ClientOptions{RootCertificates: filepath.Join(dir, slCA),
		ClientCertificate: filepath.Join(dir, "certificates/nodes/mallory.pem"), ClientKey: filepath.Join(dir, "certificates/nodes/mallory.key")}, 2)
	tally := newTally(2)
	flood(ctx, mallory, 2, 15, 3600, tally)
	t.Logf("mallory's registrations: %s", tally)
	if tally.total() != 4 {
		t.Fatalf("mallory's certificate registered %d nodes, want --max-nodes-per-identity's 4: %s", tally.total(), tally)
	}
	if tally.refused["ResourceExhausted per_identity"] == 0 {
		t.Errorf("no refusal naming the limit per certificate: %s", tally)
	}
	for k, msg := range tally.samples {
		t.Logf("  %s: %s", k, msg)
	}

	// Mallory's nodes take their tasks and sit on them.
	got := make(chan int64, 1)
	pctx, stopPull := context.WithCancel(ctx)
	defer stopPull()
	var pulling sync.WaitGroup
	for i, id := range tally.ids {
		pulling.Go(func() {
			for pctx.Err() == nil {
				r, err := mallory[i%2].PullTaskIns(pctx, &flwrproto.PullTaskInsRequest{Node: &flwrproto.Node{NodeId: id}})
				if err == nil && len(r.TaskInsList) > 0 {
					select {
					case got <- id:
					default:
					}
				}
				if status.Code(err) == codes.Unauthenticated {
					return // revoked
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	cpu0 := cpuOf(t, pid)
	app := start(t, dir, nil, "flower-server-app", "server:app", "--root-certificates", slCA, "--server", sl.driver, "--rounds", "2")
	select {
	case <-got:
	case <-time.After(60 * time.Second):
		t.Fatalf("none of mallory's nodes got a task within 60 s:\n%s", app.out.String())
	}
	out, code := run(t, 30*time.Second, dir, nil, "flower-certs", "revoke", "mallory")
	if code != 0 {
		t.Fatalf("flower-certs revoke mallory exited %d:\n%s", code, out)
	}
	revoked := time.Now()
	waitCount(t, sl.proc, "reason=certificate_revoked identity=sepal:node:mallory", 4, 10*time.Second)
	offline := time.Since(revoked)
	code = app.wait(t, 2*time.Minute)
	finished := time.Since(revoked)
	stopPull()
	pulling.Wait()
	out = app.out.String()
	if code != 0 {
		t.Fatalf("flower-server-app exited %d after the revocation:\n%s", code, out)
	}
	rounds := parseRounds(t, out)
	if len(rounds) != 2 || rounds[1].nodes != 2 {
		t.Fatalf("want 2 rounds, the last of the 2 real nodes:\n%s", out)
	}
	if !strings.Contains(out, "node dropped") || !strings.Contains(out, "Node Unavailable") {
		t.Errorf("the server app was not told mallory's nodes were unavailable:\n%s", out)
	}
	if finished > 30*time.Second {
		t.Errorf("the run took %v after the revocation to finish; mallory's ping interval is an hour, want seconds", finished)
	}
	s := testkit.Scrape(t, "http://"+sl.metrics+"/metrics")
	s.Want(t, 4, "sepal_nodes_revoked_total")
	s.Want(t, 2, "sepal_nodes", "state", "online")
	if v, _ := s.Value("sepal_node_registrations_refused_total", "reason", "max_nodes_per_identity"); v < 1 {
		t.Errorf("no refusal per identity counted: %v", v)
	}
	t.Logf("revoked: mallory's 4 nodes offline %v after flower-certs revoke, the run finished %v after it (%d rounds, the last of %d nodes)",
		offline.Round(time.Millisecond), finished.Round(time.Millisecond), len(rounds), rounds[len(rounds)-1].nodes)
	t.Logf("SuperLink: peak RSS (VmHWM) %d MiB, CPU %.2f s during the run", vm(t, pid).HWM/mib, (cpuOf(t, pid) - cpu0).Seconds())
	stopClients(t, clients)
}
