package e2e

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/superlink"
)

// idleConns opens n TLS connections (HTTP/2 preface and SETTINGS sent) to
// addr from the attacker's address, 32 at a time, each given 5 s, and
// returns those still open a second after the last was tried, and how
// long each refused one took to be refused: a failed dial, or a
// connection the server closed (from the dial's start to the close).
func (b *attackBed) idleConns(addr string, n int) (open []*testkit.H2Conn, refused []time.Duration) {
	b.t.Helper()
	var mu sync.Mutex
	var all []*testkit.H2Conn
	closedIn := map[*testkit.H2Conn]time.Duration{}
	work := make(chan struct{})
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for range work {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := b.dialAttacker(ctx, 0, addr)
				cancel()
				mu.Lock()
				if err != nil {
					refused = append(refused, time.Since(t0))
				} else {
					all = append(all, c)
					go func() {
						<-c.Closed()
						mu.Lock()
						closedIn[c] = time.Since(t0)
						mu.Unlock()
					}()
				}
				mu.Unlock()
			}
		})
	}
	for range n {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	time.Sleep(time.Second)
	mu.Lock()
	defer mu.Unlock()
	for _, c := range all {
		if d, ok := closedIn[c]; ok {
			refused = append(refused, d)
		} else {
			open = append(open, c)
		}
	}
	return open, refused
}

// connRefusalLines returns the lines of the SuperLink's log that report a
// connection from the attacker refused.
func connRefusalLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		low := strings.ToLower(l)
		if strings.Contains(l, attackerIP(0)) && strings.Contains(low, "connection") && strings.Contains(low, "refus") &&
			!strings.Contains(l, `msg="request refused`) {
			lines = append(lines, l)
		}
	}
	return lines
}

// Connection slots: one attacker address opens n idle
// TLS connections against a SuperLink with --max-connections limit (0:
// the default); it holds at most its share (max(16, limit/16)), the
// others refused at once (in under 2 s); a client app started during the
// attack registers within 20 s and averages in the later rounds of the
// legitimate run, which finishes; the SuperLink logs the refusals in a
// few lines (at most one per ten refusals) and counts them in
// sepal_connections_refused_total{reason="per_peer"}.
func connectionSlots(t *testing.T, limit, n int) {
	var args []string
	if limit != 0 {
		args = []string{"--max-connections", strconv.Itoa(limit)}
	} else {
		limit = superlink.DefaultMaxConnections
	}
	bed := newBed(t, bedOptions{args: args, metrics: true})
	share := perPeerConnections(limit)
	run := bed.startRun(8)
	if !run.waitRounds(1, time.Minute) {
		t.Fatal("the legitimate run finished no round within a minute")
	}
	health := bed.watchHealth()
	m := bed.meter()
	open, refused := bed.idleConns(bed.sl.fleet, n)
	c := m.read(t)
	var slow int
	var slowest time.Duration
	for _, d := range refused {
		if d > 2*time.Second {
			slow++
		}
		slowest = max(slowest, d)
	}
	t.Logf("%d connections tried from %s: %d open, %d refused (the slowest refusal took %v); %v; %.1f KiB per open connection",
		n, attackerIP(0), len(open), len(refused), slowest.Round(time.Millisecond), c, float64(c.grew)/1024/float64(max(1, len(open))))

	joinedAt := time.Now()
	newbie := bed.addClient()
	joined := waitFor(newbie, `msg="node registered"`, 20*time.Second)
	t.Logf("a new client app registered: %v (in %v)", joined, time.Since(joinedAt).Round(time.Millisecond))
	rep := run.wait(t, 3*time.Minute)
	h := health.end()
	t.Logf("legitimate run: %v; %v", rep, h)
	lines := connRefusalLines(bed.sl.out.String())
	counted := bed.scrape().Sum(metricConnRefused, "reason", reasonPerPeer)
	summary(t, fmt.Sprintf("%d idle connections, --max-connections %d", n, limit), c, &rep,
		fmt.Sprintf("%d held (share %d), %d refused, new node joined %v, %d log lines, %s{reason=%q} %v", len(open), share, len(refused), joined, len(lines), metricConnRefused, reasonPerPeer, counted))

	if len(open) > share {
		t.Errorf("one peer holds %d connections, want at most its share of %d", len(open), share)
	}
	if slow > 0 {
		t.Errorf("%d refusals took over 2 s (the slowest %v), want each at once", slow, slowest.Round(time.Millisecond))
	}
	if !joined {
		t.Errorf("a client app started during the attack did not register within 20 s:\n%s", newbie.out.String())
	} else if _, hi := rep.nodes(); hi < 3 {
		t.Errorf("no round averaged the new node: %v", rep)
	}
	rep.check(t, 2)
	if len(refused) > 0 {
		if len(lines) == 0 || len(lines) > max(1, len(refused)/10) {
			t.Errorf("the SuperLink logged %d lines about %d refused connections, want between 1 and %d:\n%s",
				len(lines), len(refused), max(1, len(refused)/10), strings.Join(lines[:min(len(lines), 5)], "\n"))
		}
		if counted < float64(len(refused)) {
			t.Errorf("%s{reason=%q} is %v, want at least the %d refusals", metricConnRefused, reasonPerPeer, counted, len(refused))
		}
	}
}

// Connection slots, at --max-connections 200 (198 idle
// connections) and at the default 4096 (4094 connections from one process:
// what that costs, and that the share holds there too).
func TestAttackConnectionSlots(t *testing.T) {
	needE2E(t)
	t.Run("limit 200", func(t *testing.T) { connectionSlots(t, 200, 198) })
	t.Run("default limit", func(t *testing.T) { connectionSlots(t, 0, 4094) })
}
