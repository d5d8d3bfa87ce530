package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/superlink"
)

// pushFlood sends n complete PushTaskRes of size bytes (well-formed, one
// array, from a node that does not exist), each on its own connection
// from its own attacker address (127.0.0.2, .3, ...), all at once, and
// returns each answer and what they cost process pid (from before the
// first connection to a second after the last answer). The connections
// stay open until the test ends.
func pushFlood(t testing.TB, pid int, addr string, cfg *tls.Config, n, size int) ([]testkit.H2Stream, cost) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	head := testkit.PushTaskResHead(1, 2, noSuchTaskIns, size)
	spec := attackSpec{method: mPushTaskRes, streams: 1, declared: uint32(len(head) + size), sent: int64(len(head) + size), end: true,
		head: func(int) []byte { return head }}
	m := startMeter(t, pid)
	conns := make([]*testkit.H2Conn, n)
	for i := range conns {
		c, err := testkit.DialH2From(ctx, attackerIP(i), addr, cfg)
		if err != nil {
			t.Fatalf("attacker %s: %v", attackerIP(i), err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	res := make([]testkit.H2Stream, n)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Go(func() {
			out, errs := attackOn(ctx, c, spec)
			res[i] = out[0]
			if errs[0] != nil {
				t.Errorf("push from %s: %v", attackerIP(i), errs[0])
			}
		})
	}
	wg.Wait()
	time.Sleep(time.Second)
	return res, m.read(t)
}

// An admitted byte costs one byte of memory: complete
// 200 MB PushTaskRes, each from its own attacker address so that the
// budget, not a peer's share, decides: 5 under the default 1 GiB budget
// (at least 4 admitted; peak RSS growth at most 1 GiB + 64 MiB), 6 under
// --max-inflight-bytes 256MiB (growth at most 256 MiB + 64 MiB). Within
// 10 s after the last answer the RSS is back within 64 MiB of where it
// was before. The legitimate run finishes every round.
func TestAttackAdmittedByteCostsOne(t *testing.T) {
	needE2E(t)
	for _, tc := range []struct {
		name        string
		args        []string
		budget      int64
		pushes      int
		minAdmitted int
	}{
		{"default budget", nil, superlink.DefaultMaxInflightBytes, 5, 4},
		{"max-inflight-bytes 256MiB", []string{"--max-inflight-bytes", "256MiB"}, 256 * mib, 6, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bed := newBed(t, bedOptions{args: tc.args})
			run := bed.startRun(5)
			if !run.waitRounds(1, time.Minute) {
				t.Fatal("the legitimate run finished no round within a minute")
			}
			res, c := pushFlood(t, bed.pid, bed.sl.fleet, bed.tls, tc.pushes, 200e6)
			admitted := admittedPushes(t, "PushTaskRes", res)
			t0 := time.Now()
			back, rss := waitRSS(t, bed.pid, c.rss0+attackSlack, 10*time.Second)
			t.Logf("%d x 200 MB PushTaskRes: %s; %v; RSS %d MiB %v after the last answer", tc.pushes, outcomes(res), c, rss/mib, time.Since(t0).Round(100*time.Millisecond))
			rep := run.wait(t, 3*time.Minute)
			t.Logf("legitimate run: %v", rep)
			summary(t, fmt.Sprintf("%d x 200 MB pushes, %s", tc.pushes, tc.name), c, &rep,
				fmt.Sprintf("%d admitted, RSS back within %d MiB in 10 s: %v (%d MiB)", admitted, attackSlack/mib, back, rss/mib))
			if admitted < tc.minAdmitted {
				t.Errorf("%d pushes were read, want at least %d: the budget was not filled", admitted, tc.minAdmitted)
			}
			if bound := tc.budget + attackSlack; c.grew > bound {
				t.Errorf("peak RSS grew by %d MiB, want at most %d MiB (the budget and %d MiB)", c.grew/mib, bound/mib, attackSlack/mib)
			}
			if !back {
				t.Errorf("10 s after the attack RSS is %d MiB, want within %d MiB of the %d MiB before it", rss/mib, attackSlack/mib, c.rss0/mib)
			}
			rep.check(t, 2)
			if err := checkHealth(t, bed.sl.fleet, bed.tls); err != nil {
				t.Errorf("health after the attack: %v", err)
			}
		})
	}
}

// BenchmarkAttackPushes reports the peak RSS growth of a flower-superlink
// run with --max-inflight-bytes 256MiB while 6 complete 200 MB PushTaskRes
// arrive at once, each from its own address (as
// TestAttackAdmittedByteCostsOne), and its CPU time.
//
//	go test ./e2e -run '^$' -bench AttackPushes -benchtime 1x
func BenchmarkAttackPushes(b *testing.B) {
	needE2E(b)
	for b.Loop() {
		sl := startSuperLink(b, linkOptions{certs: true, args: []string{"--max-inflight-bytes", "256MiB"}})
		_, c := pushFlood(b, sl.cmd.Process.Pid, sl.fleet, sl.tls, 6, 200e6)
		sl.stop()
		b.ReportMetric(float64(c.grew)/mib, "peak-rss-growth-MiB")
		b.ReportMetric(c.cpu.Seconds(), "superlink-cpu-s")
	}
}
