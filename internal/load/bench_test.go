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

// BenchmarkFedAvg129 measures the Flower 1.29.0 FedAvg workload on a
// flower-superlink process over TLS: 2 rounds of a 32 MiB model with 2, 4
// and 16 SuperNodes polling every 200 ms, started at once. It reports the
// SuperLink's CPU seconds and their ratio to the floor of the bytes moved
// (cpu/floor: TLS for the Fleet API's, plain TCP for ServerAppIo's) and
// to the floor and the checks every 1.29 SuperLink must do (cpu/floor+checks:
// the SHA-256 of each object pushed, a P-384 verification per Fleet call),
// its peak RSS, and that peak over the object bytes the run made it hold at
// once (rss/held; held_peak_mib in sepal-load) and over those and its RSS
// at start (rss/held+start). The goals: cpu/floor at most 1.25, rss/held at
// most 1.2. With -short, one 8 MiB round with 2 nodes:
//
//	go test ./internal/load -run '^$' -bench FedAvg129 -benchtime 1x
//	go test ./internal/load -short -run '^$' -bench FedAvg129 -benchtime 1x
func BenchmarkFedAvg129(b *testing.B) {
	bin := buildSuperlink(b)
	nodes, rounds, model := []int{2, 4, 16}, 2, 32<<20
	if testing.Short() {
		nodes, rounds, model = []int{2}, 1, 8<<20
	}
	ctx := context.Background()
	for _, n := range nodes {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for b.Loop() {
				s, err := Start(ctx, Options{Binary: bin, Dir: b.TempDir(), Nodes: n, Flower129: true})
				if err != nil {
					b.Fatal(err)
				}
				r, err := RunFedAvg129(ctx, s, FedAvg129Options{Nodes: n, Rounds: rounds, ModelBytes: model,
					NodePoll: 200 * time.Millisecond, ServerPoll: 200 * time.Millisecond, InStep: true})
				exit := s.Stop()
				if err != nil {
					b.Fatal(err)
				}
				if exit.Err != nil {
					b.Fatalf("the SuperLink did not stop cleanly: %v", exit.Err)
				}
				floor, err := Floor(ctx, s, r.Fleet.In, r.Fleet.Out, int(r.Part))
				if err != nil {
					b.Fatal(err)
				}
				plain, err := PlainFloor(ctx, s, r.AppIo.In, r.AppIo.Out, int(r.Part))
				if err != nil {
					b.Fatal(err)
				}
				floor += plain
				checks, err := Checks(ctx, r.In(), int(r.Part), r.FleetCalls)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(exit.CPU.Seconds(), "cpu-s")
				b.ReportMetric(exit.CPU.Seconds()/floor.Seconds(), "cpu/floor")
				b.ReportMetric(exit.CPU.Seconds()/(floor+checks).Seconds(), "cpu/floor+checks")
				b.ReportMetric(float64(r.Memory.HWM)/(1<<20), "peak-rss-MiB")
				b.ReportMetric(float64(r.HeldPeak)/(1<<20), "held-MiB")
				b.ReportMetric(float64(r.Memory.HWM)/float64(r.HeldPeak), "rss/held")
				b.ReportMetric(float64(r.Memory.HWM)/float64(r.HeldPeak+r.Start.RSS), "rss/held+start")
			}
		})
	}
}
