package load

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkIdleNodes measures what an idle connected SuperNode costs a
// flower-superlink process: 1,000 SuperNodes (app.RunNode, each on its
// own TLS connection, polling every 3 s as Flower 1.8.0) connect; the
// SuperLink's RSS while they poll (the median of readings every second
// over the second half of 30 s), less its RSS before they came, divided
// by the nodes. The goal is at most 55 KiB each (10,000 nodes in under
// 1 GiB).
//
//	go test ./internal/load -run '^$' -bench IdleNodes -benchtime 1x
func BenchmarkIdleNodes(b *testing.B) {
	bin := superlinkBinary(b)
	for b.Loop() {
		s, err := Start(context.Background(), Options{Binary: bin, Dir: b.TempDir(), Nodes: 1000})
		if err != nil {
			b.Fatal(err)
		}
		r, err := RunIdle(context.Background(), s, IdleOptions{Nodes: 1000, Poll: 3 * time.Second, Settle: 30 * time.Second})
		s.Stop()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.PerNode()/1024, "KiB/node")
		b.ReportMetric(float64(r.After.RSS)/(1<<20), "rss-MiB")
		b.ReportMetric(r.CPU.Seconds()/r.Settle.Seconds(), "cpu-cores")
	}
}

// BenchmarkSmallRPCs measures Ping and empty PullTaskIns calls from 1,000
// connected SuperNodes, at 10, 100 and 1,000 calling at once as fast as
// they can: calls per second, their latency and the SuperLink's CPU time
// per call. The load generator runs on the same machine, so the rate
// where it stops growing is the machine's, and cpu-us/call says what a
// SuperLink alone would sustain per core.
//
//	go test ./internal/load -run '^$' -bench SmallRPCs -benchtime 1x
func BenchmarkSmallRPCs(b *testing.B) {
	bin := superlinkBinary(b)
	for b.Loop() {
		s, err := Start(context.Background(), Options{Binary: bin, Dir: b.TempDir(), Nodes: 1000})
		if err != nil {
			b.Fatal(err)
		}
		levels, err := RunRPCs(context.Background(), s, RPCOptions{Nodes: 1000, Levels: []int{10, 100, 1000}, Duration: 5 * time.Second})
		s.Stop()
		if err != nil {
			b.Fatal(err)
		}
		for _, l := range levels {
			if l.Errors > 0 {
				b.Errorf("%d calls failed with %d nodes calling", l.Errors, l.Active)
			}
			p := fmt.Sprintf("active%d-", l.Active)
			b.ReportMetric(l.PerSecond(), p+"calls/s")
			b.ReportMetric(float64(l.P99)/1e6, p+"p99-ms")
			b.ReportMetric(float64(l.CPUPerCall())/1e3, p+"cpu-us/call")
		}
	}
}
