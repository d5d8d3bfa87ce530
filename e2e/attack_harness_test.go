package e2e

// The attack tests (attack_*_test.go) repeat, against the real
// flower-superlink, attacks that once got past its limits, each with a
// legitimate FedAvg run beside it. Each logs one SUMMARY line: the
// attack, the SuperLink's peak RSS growth and CPU seconds, and the rounds
// the legitimate run finished. The long versions (the attacks' original
// durations) run with SEPAL_ATTACK_LONG=1.
//
// This is their harness: a flower-superlink with legitimate client apps
// and server apps (the real binaries) connected from 127.0.0.1, attackers
// on other loopback addresses, and meters of what an attack costs the
// SuperLink (peak RSS, CPU time, health) and the legitimate run (rounds
// finished, round times, nodes averaged).

import (
	"context"
	"crypto/tls"
	"fmt"
	"math"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/testkit"
)

// What the attack tests expect of the SuperLink's limits, named once.
const (
	// metricConnRefused counts connections refused by a connection
	// limit, by reason; reasonPerPeer is a peer's share of
	// --max-connections.
	metricConnRefused = "sepal_connections_refused_total"
	reasonPerPeer     = "per_peer"
	// metricClosedByLimit counts connections closed by a limit, by
	// reason; reasonControlFrames is HTTP/2 control-frame abuse.
	metricClosedByLimit = "sepal_connections_closed_by_limit_total"
	reasonControlFrames = "control_frames"
	// attackSlack is what an attack may add to the SuperLink's peak RSS
	// beyond what it admits: buffers, goroutines, the garbage collector's
	// lag.
	attackSlack int64 = 64 * mib
)

// perPeerConnections is the share of --max-connections limit that one
// peer may hold (the default of --max-connections-per-peer).
func perPeerConnections(limit int) int { return max(16, limit/16) }

// attackLong tells whether the long versions of the attacks run
// (SEPAL_ATTACK_LONG=1): their original durations instead of the suite's
// short ones.
func attackLong() bool { return os.Getenv("SEPAL_ATTACK_LONG") != "" }

// attackerIP is the i-th attacker's address: 127.0.0.2, 127.0.0.3, ...
// The legitimate apps connect from 127.0.0.1, so that per-peer limits
// apply to the attackers alone.
func attackerIP(i int) string { return fmt.Sprintf("127.0.0.%d", 2+i) }

// legitPoll is the client apps' --poll-interval: a round then takes two
// of the server app's 1 s polls of PullTaskRes.
const legitPoll = "250ms"

// bedOptions say how to start an attackBed.
type bedOptions struct {
	args    []string // flower-superlink flags beyond the certificates and addresses
	metrics bool     // serve --metrics-address on a free port
	clients int      // legitimate client apps (default 2)
}

// attackBed is a flower-superlink (certificates by flower-certs) with
// legitimate client apps connected from 127.0.0.1.
type attackBed struct {
	t       *testing.T
	dir     string
	sl      *superLink
	pid     int
	metrics string // http://HOST:PORT of --metrics-address, or ""
	clients []*proc
	apps    []*proc // the server apps started
	tls     *tls.Config
	rss0    int64 // the SuperLink's RSS once the client apps registered
	// unsettled is set once the SuperLink kept the memory of an attack
	// for 10 s (see meter).
	unsettled bool
}

// newBed starts the SuperLink and the client apps and waits until every
// client app registered its node.
func newBed(t *testing.T, o bedOptions) *attackBed {
	t.Helper()
	sl := startSuperLink(t, linkOptions{certs: true, args: o.args, metrics: o.metrics})
	b := &attackBed{t: t, dir: sl.dir, sl: sl, pid: sl.cmd.Process.Pid, tls: sl.tls}
	if sl.metrics != "" {
		b.metrics = "http://" + sl.metrics
	}
	if o.clients == 0 {
		o.clients = 2
	}
	for range o.clients {
		b.addClient()
	}
	for _, c := range b.clients {
		c.waitOutput(t, `msg="node registered"`, 30*time.Second)
	}
	b.rss0 = vm(t, b.pid).RSS
	return b
}

// addClient starts one more client app (it registers on its own).
func (b *attackBed) addClient() *proc {
	b.t.Helper()
	p := start(b.t, b.dir, nil, "flower-client-app", "client:app",
		"--root-certificates", slCA, "--server", b.sl.fleet, "--poll-interval", legitPoll)
	b.clients = append(b.clients, p)
	return p
}

// dialAttacker opens a raw HTTP/2 connection from the i-th attacker
// address to addr (one of the SuperLink's), closed when the test ends.
func (b *attackBed) dialAttacker(ctx context.Context, i int, addr string) (*testkit.H2Conn, error) {
	c, err := testkit.DialH2From(ctx, attackerIP(i), addr, b.tls)
	if err == nil {
		b.t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// legitFailure matches what the apps log when a call of theirs failed or
// a node was lost: none of it happens in a run left alone.
var legitFailure = regexp.MustCompile(`msg="(call failed, retrying|ping failed|ping not acknowledged|node dropped from the round|result refused|evaluate result dropped|the SuperLink forgot this node|DeleteNode failed|waiting for nodes)`)

// legitFailures returns the lines of the legitimate apps' logs that say a
// call failed or a node was lost, each prefixed with its app.
func (b *attackBed) legitFailures() []string {
	var out []string
	for _, p := range append(append([]*proc{}, b.clients...), b.apps...) {
		for _, l := range strings.Split(p.out.String(), "\n") {
			if legitFailure.MatchString(l) {
				out = append(out, fmt.Sprintf("%s %d: %s", p.name, p.cmd.Process.Pid, l))
			}
		}
	}
	return out
}

// checkLegit fails the test with the lines of legitFailures, if any.
func (b *attackBed) checkLegit() {
	b.t.Helper()
	if f := b.legitFailures(); len(f) > 0 {
		b.t.Errorf("the legitimate apps logged %d failed calls or lost nodes, want none; the first:\n%s", len(f), strings.Join(f[:min(len(f), 10)], "\n"))
	}
}

// scrape reads the SuperLink's /metrics (the bed needs bedOptions.metrics).
func (b *attackBed) scrape() testkit.Samples {
	b.t.Helper()
	if b.metrics == "" {
		b.t.Fatal("the SuperLink was started without --metrics-address")
	}
	return testkit.Scrape(b.t, b.metrics+"/metrics")
}

// fedRun is a flower-server-app run against the bed's SuperLink; it notes
// when each of its round lines appears.
type fedRun struct {
	p       *proc
	asked   int
	start   time.Time
	watched chan struct{}

	mu   sync.Mutex
	ends []time.Time // when each round line appeared
}

// startRun starts a FedAvg run of rounds rounds over at least 2 nodes.
func (b *attackBed) startRun(rounds int) *fedRun {
	b.t.Helper()
	r := &fedRun{asked: rounds, start: time.Now(), watched: make(chan struct{})}
	r.p = start(b.t, b.dir, nil, "flower-server-app", "server:app", "--root-certificates", slCA,
		"--server", b.sl.driver, "--rounds", strconv.Itoa(rounds), "--min-nodes", "2")
	b.apps = append(b.apps, r.p)
	go r.watch()
	return r
}

// watch notes the time each round line appears, until the run ends.
func (r *fedRun) watch() {
	defer close(r.watched)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ended := false
		select {
		case <-r.p.done:
			ended = true
		case <-tick.C:
		}
		n := len(roundLine.FindAllStringIndex(r.p.out.String(), -1))
		r.mu.Lock()
		for len(r.ends) < n {
			r.ends = append(r.ends, time.Now())
		}
		r.mu.Unlock()
		if ended {
			return
		}
	}
}

// rounds returns how many rounds finished so far.
func (r *fedRun) rounds() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ends)
}

// waitRounds waits up to d for n rounds to finish and reports whether
// they did.
func (r *fedRun) waitRounds(n int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for r.rounds() < n {
		select {
		case <-r.p.done:
			<-r.watched
			return r.rounds() >= n
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// fedReport is what a run did.
type fedReport struct {
	asked, finished int
	rounds          []round     // as the server app printed them
	ends            []time.Time // when each round line appeared
	start, end      time.Time   // of the process
	exit            int         // -1: killed after the wait
}

// wait waits up to d for the run to end (then kills it) and returns its
// report.
func (r *fedRun) wait(t testing.TB, d time.Duration) fedReport {
	t.Helper()
	rep := fedReport{asked: r.asked, start: r.start}
	select {
	case <-r.p.done:
		rep.exit = r.p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		_ = r.p.cmd.Process.Kill()
		<-r.p.done
		rep.exit = -1
	}
	<-r.watched
	rep.end = time.Now()
	rep.rounds = parseRounds(t, r.p.out.String())
	r.mu.Lock()
	rep.ends = slices.Clone(r.ends)
	r.mu.Unlock()
	rep.finished = min(len(rep.rounds), len(rep.ends))
	return rep
}

// nodes returns the fewest and most nodes a round averaged.
func (r fedReport) nodes() (lo, hi int) {
	lo = math.MaxInt
	for _, rd := range r.rounds {
		lo, hi = min(lo, rd.nodes), max(hi, rd.nodes)
	}
	if len(r.rounds) == 0 {
		lo = 0
	}
	return lo, hi
}

// medianRound is the median round time.
func (r fedReport) medianRound() time.Duration {
	var ts []time.Duration
	for _, rd := range r.rounds {
		ts = append(ts, rd.took)
	}
	if len(ts) == 0 {
		return 0
	}
	slices.Sort(ts)
	return ts[len(ts)/2]
}

// longestDuring returns the longest round that overlapped [from, to]:
// finished rounds by their printed time, and a round the run never
// finished (it ended or was killed first) by the time from the end of the
// round before it (or the run's start) to the run's end.
func (r fedReport) longestDuring(from, to time.Time) time.Duration {
	var longest time.Duration
	last := r.start
	for i := range r.finished {
		end := r.ends[i]
		if begin := end.Add(-r.rounds[i].took); begin.Before(to) && end.After(from) {
			longest = max(longest, r.rounds[i].took)
		}
		last = end
	}
	if r.finished < r.asked && last.Before(to) && r.end.After(from) {
		longest = max(longest, r.end.Sub(last))
	}
	return longest
}

// lastedPast reports whether a round of the run ended after t: the run
// was still going when an attack that ended at t did.
func (r fedReport) lastedPast(t time.Time) bool {
	return len(r.ends) > 0 && r.ends[len(r.ends)-1].After(t)
}

// check fails the test unless every round asked finished, averaging at
// least nodes nodes each.
func (r fedReport) check(t testing.TB, nodes int) {
	t.Helper()
	if r.finished != r.asked || r.exit != 0 {
		t.Errorf("the legitimate run finished %d of %d rounds (exit %d), want all", r.finished, r.asked, r.exit)
	}
	for _, rd := range r.rounds {
		if rd.nodes < nodes {
			t.Errorf("round %d averaged %d nodes, want %d", rd.n, rd.nodes, nodes)
		}
	}
}

// String sums the run up for a test's log.
func (r fedReport) String() string {
	lo, hi := r.nodes()
	var ts []string
	for _, rd := range r.rounds {
		ts = append(ts, fmt.Sprintf("%.2f", rd.took.Seconds()))
	}
	return fmt.Sprintf("rounds %d/%d (exit %d), nodes averaged %d-%d, round times %s s", r.finished, r.asked, r.exit, lo, hi, strings.Join(ts, " "))
}

// baseline runs rounds rounds with nothing else going on and returns their
// median round time, failing the test if the run fails.
func (b *attackBed) baseline(rounds int) time.Duration {
	b.t.Helper()
	rep := b.startRun(rounds).wait(b.t, time.Duration(rounds)*10*time.Second+30*time.Second)
	rep.check(b.t, 2)
	if b.t.Failed() {
		b.t.FailNow()
	}
	med := rep.medianRound()
	b.t.Logf("baseline: %v; median round %.2f s", rep, med.Seconds())
	return med
}

// roundsFor is how many rounds of about base each span d, plus two.
func roundsFor(d, base time.Duration) int {
	return int(math.Ceil(float64(d)/float64(base))) + 2
}

// meter measures what the SuperLink spends from its start to read: its
// peak RSS (VmHWM, reset at the start) over its RSS at the start, and its
// CPU time (user+sys).
type meter struct {
	pid   int
	begin time.Time
	rss0  int64
	cpu0  time.Duration
}

// cost is a meter's reading.
type cost struct {
	rss0, peak, rss int64 // RSS at the start, peak RSS since, RSS now
	grew            int64 // peak - rss0
	cpu             time.Duration
	took            time.Duration
}

func (c cost) String() string {
	return fmt.Sprintf("peak RSS growth %d MiB (RSS %d MiB before, peak %d MiB, now %d MiB), SuperLink CPU %.2f s in %.1f s",
		c.grew/mib, c.rss0/mib, c.peak/mib, c.rss/mib, c.cpu.Seconds(), c.took.Seconds())
}

// meter starts measuring the SuperLink once it gave back the memory of
// earlier attacks: it waits up to 10 s for its RSS to be within
// attackSlack of its RSS before any attack (not again once such a wait
// failed), so that memory an earlier attack left behind neither counts
// against this one nor hides what this one costs.
func (b *attackBed) meter() *meter {
	b.t.Helper()
	if !b.unsettled {
		if back, rss := waitRSS(b.t, b.pid, b.rss0+attackSlack, 10*time.Second); !back {
			b.unsettled = true
			b.t.Logf("the SuperLink's RSS is %d MiB, %d MiB before any attack: the next attacks' growth counts from there", rss/mib, b.rss0/mib)
		}
	}
	return startMeter(b.t, b.pid)
}

// waitRSS waits up to d for process pid's RSS to be at most limit and
// returns whether it came down, and the RSS last read.
func waitRSS(t testing.TB, pid int, limit int64, d time.Duration) (bool, int64) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		rss := vm(t, pid).RSS
		if rss <= limit {
			return true, rss
		}
		if time.Now().After(deadline) {
			return false, rss
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startMeter resets process pid's peak RSS and starts measuring.
func startMeter(t testing.TB, pid int) *meter {
	t.Helper()
	if err := load.ResetPeak(pid); err != nil {
		t.Fatal(err)
	}
	cpu, err := load.ReadCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	return &meter{pid: pid, begin: time.Now(), rss0: vm(t, pid).RSS, cpu0: cpu}
}

// read returns what the process spent since the meter started.
func (m *meter) read(t testing.TB) cost {
	t.Helper()
	cpu, err := load.ReadCPU(m.pid)
	if err != nil {
		t.Fatal(err)
	}
	v := vm(t, m.pid)
	return cost{rss0: m.rss0, peak: v.HWM, rss: v.RSS, grew: v.HWM - m.rss0, cpu: cpu - m.cpu0, took: time.Since(m.begin)}
}

// healthWatch asks the SuperLink's gRPC health service on the Fleet port
// (over one connection from 127.0.0.1, as a monitor keeps) and, with
// --metrics-address, /readyz, every half second.
type healthWatch struct {
	stop, done chan struct{}
	samples    int
	bad        []string // what each sample that was not SERVING and ready saw, with its time
}

// watchHealth starts watching; end stops it.
func (b *attackBed) watchHealth() *healthWatch {
	b.t.Helper()
	conn, err := grpc.NewClient(b.sl.fleet, grpc.WithTransportCredentials(credentials.NewTLS(b.tls)))
	if err != nil {
		b.t.Fatal(err)
	}
	h := &healthWatch{stop: make(chan struct{}), done: make(chan struct{})}
	begin := time.Now()
	go func() {
		defer close(h.done)
		defer conn.Close()
		hc := &http.Client{Timeout: 3 * time.Second}
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			st, err := testkit.CheckHealth(ctx, conn)
			cancel()
			var seen []string
			if err != nil {
				seen = append(seen, "health check failed: "+status.Code(err).String()+": "+status.Convert(err).Message())
			} else if st != healthpb.HealthCheckResponse_SERVING {
				seen = append(seen, "health "+st.String())
			}
			if b.metrics != "" {
				if r, err := hc.Get(b.metrics + "/readyz"); err != nil {
					seen = append(seen, "/readyz: "+err.Error())
				} else {
					r.Body.Close()
					if r.StatusCode != http.StatusOK {
						seen = append(seen, "/readyz: "+r.Status)
					}
				}
			}
			h.samples++
			if len(seen) > 0 {
				h.bad = append(h.bad, fmt.Sprintf("%.1fs: %s", time.Since(begin).Seconds(), strings.Join(seen, "; ")))
			}
			select {
			case <-h.stop:
				return
			case <-tick.C:
			}
		}
	}()
	return h
}

// end stops the watch and returns it.
func (h *healthWatch) end() *healthWatch {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
	return h
}

func (h *healthWatch) String() string {
	return fmt.Sprintf("health: %d of %d samples SERVING and ready", h.samples-len(h.bad), h.samples)
}

// check fails the test if any sample was not SERVING and ready.
func (h *healthWatch) check(t testing.TB) {
	t.Helper()
	if len(h.bad) > 0 {
		t.Errorf("%v; want all; the first not so:\n%s", h, strings.Join(h.bad[:min(len(h.bad), 10)], "\n"))
	}
}

// summary logs the one line each attack test ends with.
func summary(t testing.TB, attack string, c cost, r *fedReport, more string) {
	t.Helper()
	rounds := "no legitimate run"
	if r != nil {
		lo, hi := r.nodes()
		rounds = fmt.Sprintf("rounds finished %d/%d (nodes %d-%d)", r.finished, r.asked, lo, hi)
	}
	if more != "" {
		more = "; " + more
	}
	t.Logf("SUMMARY %s: peak RSS growth %d MiB, SuperLink CPU %.2f s, %s%s", attack, c.grew/mib, c.cpu.Seconds(), rounds, more)
}

// The methods the attacks call.
const (
	mCreateNode  = "/flwr.proto.Fleet/CreateNode"
	mPing        = "/flwr.proto.Fleet/Ping"
	mPushTaskRes = "/flwr.proto.Fleet/PushTaskRes"
	mGetNodes    = "/flwr.proto.Driver/GetNodes"
	mHealth      = "/grpc.health.v1.Health/Check"
)

// noSuchTaskIns is the TaskIns a pushed TaskRes answers: none.
const noSuchTaskIns = "6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1"

// measuredAttack runs spec against addr, one of b's SuperLink's, and
// reads what it cost (bed.meter): the meter starts before the attacker
// connects and is read a moment after every stream was answered or sent.
func (b *attackBed) measuredAttack(t testing.TB, addr string, spec attackSpec) ([]testkit.H2Stream, cost) {
	t.Helper()
	m := b.meter()
	res, _ := attack(t, addr, b.tls, spec)
	time.Sleep(250 * time.Millisecond) // whatever the SuperLink still reads
	return res, m.read(t)
}

// refusedAt fails the test unless every stream was answered
// ResourceExhausted with a message naming limit, before 16 MiB were sent.
func refusedAt(t testing.TB, what string, res []testkit.H2Stream, limit string) {
	t.Helper()
	for _, r := range res {
		if !r.Trailers || r.Status != codes.ResourceExhausted || !strings.Contains(r.Message, limit) {
			t.Errorf("%s: %s, want ResourceExhausted naming the %s limit", what, r.String(), limit)
		} else if r.Sent > 16*mib {
			t.Errorf("%s: stream %d could send %d bytes before it was refused", what, r.ID, r.Sent)
		}
	}
}

// admittedPushes counts the pushes read in full (NotFound: no such
// TaskIns) and fails the test for any that was neither that nor refused
// with ResourceExhausted before 16 MiB were sent.
func admittedPushes(t testing.TB, what string, res []testkit.H2Stream) int {
	t.Helper()
	admitted := 0
	for _, r := range res {
		switch {
		case r.Trailers && r.Status == codes.NotFound:
			admitted++
		case r.Trailers && r.Status == codes.ResourceExhausted:
			if r.Sent > 16*mib {
				t.Errorf("%s: stream %d sent %d bytes before it was refused", what, r.ID, r.Sent)
			}
		default:
			t.Errorf("%s: %s, want NotFound (read, no such TaskIns) or ResourceExhausted", what, r.String())
		}
	}
	return admitted
}

// outcomes sums up the answers of streams, for a log line.
func outcomes(res []testkit.H2Stream) string {
	count := map[string]int{}
	var order []string
	for _, r := range res {
		k := "no answer"
		switch {
		case r.Trailers:
			k = r.Status.String()
		case r.Reset:
			k = "RST_STREAM " + r.ResetErr.String()
		}
		if count[k] == 0 {
			order = append(order, k)
		}
		count[k]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d %s", count[k], k))
	}
	return strings.Join(parts, ", ")
}

// waitFor waits up to d for p's output to contain s and reports whether
// it did.
func waitFor(p *proc, s string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !strings.Contains(p.out.String(), s) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
