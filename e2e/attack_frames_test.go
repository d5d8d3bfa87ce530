package e2e

import (
	"context"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// frameFlood is one control-frame flood on one connection.
type frameFlood struct {
	name   string
	frames int
	send   func(ctx context.Context, c *testkit.H2Conn, n int) (int, error)
}

var floods = []frameFlood{
	{"rapid reset", 300000, func(ctx context.Context, c *testkit.H2Conn, n int) (int, error) { return c.RapidReset(ctx, mPing, n) }},
	{"SETTINGS flood", 500000, func(ctx context.Context, c *testkit.H2Conn, n int) (int, error) { return c.SettingsFlood(ctx, n) }},
}

// maxAbuseStreams bounds the streams the SuperLink may process of a rapid
// reset before it ends the connection (the GOAWAY's last stream id / 2).
const maxAbuseStreams = 50000

// floodResult is one flood's connection after it.
type floodResult struct {
	sent   int
	err    error
	closed bool
	goAway *testkit.GoAway
}

func (r floodResult) String() string {
	g := "no GOAWAY"
	if r.goAway != nil {
		g = fmt.Sprintf("GOAWAY %v (last stream %d, %q)", r.goAway.Code, r.goAway.LastStreamID, r.goAway.Debug)
	}
	return fmt.Sprintf("%d frames written (%v), %s, connection closed: %v", r.sent, r.err, g, r.closed)
}

// run floods c with n frames (until ctx ends) and waits up to 10 s more
// for the server to close the connection.
func (f frameFlood) run(ctx context.Context, c *testkit.H2Conn, n int) floodResult {
	var r floodResult
	r.sent, r.err = f.send(ctx, c, n)
	select {
	case <-c.Closed():
		r.closed = true
	case <-time.After(10 * time.Second):
	}
	r.goAway = c.GoAway()
	return r
}

// check fails the test unless the SuperLink answered the flood with
// GOAWAY (ENHANCE_YOUR_CALM) and closed the connection.
func (r floodResult) check(t testing.TB, name string, rapidReset bool) {
	t.Helper()
	if r.goAway == nil || r.goAway.Code != http2.ErrCodeEnhanceYourCalm {
		t.Errorf("%s: %v, want GOAWAY ENHANCE_YOUR_CALM", name, r)
	}
	if !r.closed {
		t.Errorf("%s: the connection was still open 10 s after the flood", name)
	}
	if rapidReset && r.goAway != nil && r.goAway.LastStreamID/2 > maxAbuseStreams {
		t.Errorf("%s: the SuperLink processed %d streams before it ended the connection, want at most %d", name, r.goAway.LastStreamID/2, maxAbuseStreams)
	}
}

// HTTP/2 control-frame abuse: a rapid reset (300,000
// HEADERS + RST_STREAM pairs) and a SETTINGS flood (500,000 frames), each
// on one connection, end with GOAWAY (ENHANCE_YOUR_CALM) and the
// connection closed, after at most 50,000 streams, costing the SuperLink
// under 2 CPU s each; then 4 rapid-reset connections at once for 10 s
// (30 s with SEPAL_ATTACK_LONG) do not stretch the legitimate rounds
// beyond 1.5x the baseline; sepal_connections_closed_by_limit_total
// {reason="control_frames"} counts every connection so closed.
func TestAttackControlFrames(t *testing.T) {
	needE2E(t)
	d := 10 * time.Second
	if attackLong() {
		d = 30 * time.Second
	}
	bed := newBed(t, bedOptions{metrics: true})
	base := bed.baseline(3)
	run := bed.startRun(4)
	if !run.waitRounds(1, time.Minute) {
		t.Fatal("the legitimate run finished no round within a minute")
	}
	costs := make([]cost, len(floods))
	found := make([]floodResult, len(floods))
	for i, f := range floods {
		t.Run(f.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := bed.dialAttacker(ctx, 0, bed.sl.fleet)
			if err != nil {
				t.Fatal(err)
			}
			m := bed.meter()
			r := f.run(ctx, c, f.frames)
			co := m.read(t)
			costs[i], found[i] = co, r
			t.Logf("%s: %v; %v", f.name, r, co)
			r.check(t, f.name, f.name == "rapid reset")
			if co.cpu > 2*time.Second {
				t.Errorf("%s cost the SuperLink %.2f CPU s, want under 2", f.name, co.cpu.Seconds())
			}
		})
	}
	rep := run.wait(t, 3*time.Minute)
	t.Logf("legitimate run during the single floods: %v", rep)
	for i, f := range floods {
		summary(t, fmt.Sprintf("%s (%d frames, one connection)", f.name, f.frames), costs[i], &rep, found[i].String())
	}
	rep.check(t, 2)

	// 4 connections at once, for d, beside a run of its own.
	run = bed.startRun(roundsFor(d, base))
	if !run.waitRounds(1, time.Minute) {
		t.Fatal("the legitimate run finished no round within a minute")
	}
	m := bed.meter()
	begin := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), begin.Add(d))
	defer cancel()
	results := make([]floodResult, 4)
	var wg sync.WaitGroup
	for i := range results {
		c, err := bed.dialAttacker(ctx, 0, bed.sl.fleet)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { results[i] = floods[0].run(ctx, c, math.MaxInt32) })
	}
	wg.Wait()
	<-ctx.Done()
	end := time.Now()
	co := m.read(t)
	rep = run.wait(t, time.Duration(run.asked)*3*base+time.Minute)
	worst := rep.longestDuring(begin, end)
	t.Logf("4 rapid-reset connections for %v: %v; legitimate run: %v", d, co, rep)
	summary(t, fmt.Sprintf("4 rapid-reset connections for %v", d), co, &rep,
		fmt.Sprintf("longest round under attack %.2f s (baseline %.2f s)", worst.Seconds(), base.Seconds()))
	for i, r := range results {
		t.Logf("connection %d: %v", i, r)
		r.check(t, fmt.Sprintf("rapid reset, connection %d of 4", i), true)
	}
	// A round is a whole number of the server app's 1 s polls: one poll
	// more (3.01 s for 2.01 s) is 1.5x.
	if bound := base*3/2 + 50*time.Millisecond; worst > bound {
		t.Errorf("a legitimate round under attack took %.2f s, want at most 1.5x the baseline of %.2f s", worst.Seconds(), base.Seconds())
	}
	rep.check(t, 2)
	closed := bed.scrape().Sum(metricClosedByLimit, "reason", reasonControlFrames)
	if want := float64(len(floods) + len(results)); closed < want {
		t.Errorf("%s{reason=%q} is %v, want at least %v", metricClosedByLimit, reasonControlFrames, closed, want)
	}
	if err := checkHealth(t, bed.sl.fleet, bed.tls); err != nil {
		t.Errorf("health after the attacks: %v", err)
	}
}
