package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// slowStream is one stream of the slow senders and when it ended.
type slowStream struct {
	c      *testkit.H2Conn
	s      *testkit.H2Stream
	method string
	ended  time.Duration // since the attack began; 0 while it lives
	result testkit.H2Stream
}

// slowSenders opens slow streams from the attacker's address
// on 3 connections: a PushTaskRes declaring 320 MiB on each (together
// the budget's large part, 960 of 1024 MiB), then 64 CreateNode
// declaring 1 MiB (the small-call reserve), each sending its prefix and
// 1 byte, then 1 byte every 20 s until ctx ends. It returns once every
// stream has ended or ctx has.
func (b *attackBed) slowSenders(ctx context.Context, begin time.Time) []*slowStream {
	b.t.Helper()
	var conns []*testkit.H2Conn
	for range 3 {
		c, err := b.dialAttacker(ctx, 0, b.sl.fleet)
		if err != nil {
			b.t.Fatalf("attacker's connection: %v", err)
		}
		conns = append(conns, c)
	}
	var streams []*slowStream
	open := func(c *testkit.H2Conn, method string, declared uint32) {
		s, err := c.Open(method)
		if err == nil {
			err = c.Send(ctx, s, declared, nil, 1, false)
		}
		if err != nil && !errors.Is(err, testkit.ErrStreamEnded) {
			b.t.Fatalf("opening a slow %s stream: %v", method, err)
		}
		streams = append(streams, &slowStream{c: c, s: s, method: method})
	}
	for _, c := range conns {
		open(c, mPushTaskRes, 320<<20)
	}
	time.Sleep(500 * time.Millisecond) // the large ones first
	for i := range 64 {
		open(conns[i%3], mCreateNode, 1<<20)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, st := range streams {
		wg.Go(func() {
			for {
				select {
				case <-st.s.Done():
					mu.Lock()
					st.ended = time.Since(begin)
					mu.Unlock()
					return
				case <-ctx.Done():
					return
				case <-time.After(20 * time.Second):
					_ = st.c.Continue(ctx, st.s, 1, false)
				}
			}
		})
	}
	wg.Wait()
	for _, st := range streams {
		st.result = st.c.Result(st.s)
	}
	for _, c := range conns {
		c.Close()
	}
	return streams
}

// Slow senders: from one attacker address, 3 connections declare large
// PushTaskRes messages (960 MiB together) and 64 CreateNode streams
// declare 1 MiB each (the small-call reserve), then send 1 byte every
// 20 s, for 30 s (2 min with SEPAL_ATTACK_LONG=1, past a 95 s
// hold). Within 30 s of the attack's start every one of those streams is
// refused or reset; the legitimate apps never see a call fail; the FedAvg
// rounds during the attack take under 3x the baseline round time measured
// before it; both nodes stay in every round; gRPC health stays SERVING
// and /readyz ready throughout.
func TestAttackSlowSenders(t *testing.T) {
	needE2E(t)
	d := 30 * time.Second
	if attackLong() {
		d = 2 * time.Minute
	}
	bed := newBed(t, bedOptions{metrics: true})
	base := bed.baseline(3)
	run := bed.startRun(roundsFor(d, base))
	if !run.waitRounds(1, time.Minute) {
		t.Fatal("the legitimate run finished no round within a minute")
	}
	health := bed.watchHealth()
	m := bed.meter()
	begin := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), begin.Add(d))
	defer cancel()
	streams := bed.slowSenders(ctx, begin)
	<-ctx.Done()
	end := time.Now()
	c := m.read(t)
	h := health.end()
	rep := run.wait(t, time.Duration(run.asked)*3*base+time.Minute)

	const within = 30 * time.Second
	var late []string
	var ended []testkit.H2Stream
	var longest time.Duration
	for _, st := range streams {
		ended = append(ended, st.result)
		switch {
		case st.ended == 0:
			late = append(late, fmt.Sprintf("%s %s, still open when the attack ended", st.method, st.result.String()))
		case st.ended > within:
			late = append(late, fmt.Sprintf("%s %s, ended %v after the attack began", st.method, st.result.String(), st.ended.Round(time.Second)))
		}
		longest = max(longest, st.ended)
	}
	lasted := fmt.Sprintf("the last ended %.1f s after the attack began", longest.Seconds())
	if len(late) > 0 {
		lasted = fmt.Sprintf("%d lived past %v", len(late), within)
	}
	t.Logf("the attacker's %d streams: %s; %s", len(streams), outcomes(ended), lasted)
	t.Logf("legitimate run: %v; %v", rep, h)
	worst := rep.longestDuring(begin, end)
	summary(t, "slow senders", c, &rep, fmt.Sprintf("longest round under attack %.2f s (baseline %.2f s), attacker's streams: %s", worst.Seconds(), base.Seconds(), lasted))
	if len(late) > 0 {
		t.Errorf("%d of the attacker's %d streams were not refused or reset within %v of the attack's start; the first:\n%s", len(late), len(streams), within, strings.Join(late[:min(len(late), 5)], "\n"))
	}
	bed.checkLegit()
	h.check(t)
	if worst > 3*base {
		t.Errorf("a legitimate round under attack took %.2f s, want under 3x the baseline of %.2f s", worst.Seconds(), base.Seconds())
	}
	rep.check(t, 2)
}
