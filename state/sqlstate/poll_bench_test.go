package sqlstate_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// BenchmarkPoll is a node's poll for work when there is none, on a SQLite
// file: what an idle SuperLink spends most of its time on, a transaction
// of a few small queries. 1.29 is PullInstruction (behind PullMessages)
// for an online node, with a run created; 1.8 is PullTaskIns for a node
// that pings. Besides time it reports the process's CPU (cpu-µs/op, from
// getrusage), which other load on the machine disturbs less.
//
//	go test ./state/sqlstate -run '^$' -bench Poll -count 6
func BenchmarkPoll(b *testing.B) {
	ctx := context.Background()
	open := func(b *testing.B) *sqlstate.State {
		s, err := sqlstate.OpenSQLite(ctx, filepath.Join(b.TempDir(), "state.db"), sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	b.Run("SQLite/1.29-PullInstruction", func(b *testing.B) {
		s := open(b)
		key := []byte("-----BEGIN PUBLIC KEY-----\nbench\n-----END PUBLIC KEY-----\n")
		if _, err := s.RegisterNode(ctx, key, 0); err != nil {
			b.Fatal(err)
		}
		id, err := s.ActivateNode(ctx, key, 30)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.CreateLinkRun(ctx, state.NewRun{Fab: statetest.FlwrFab(b, "bench")}); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		cpu := cpuNow()
		for b.Loop() {
			m, _, err := s.PullInstruction(ctx, id)
			if err != nil || m != nil {
				b.Fatal(m, err)
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("SQLite/1.8-PullTaskIns", func(b *testing.B) {
		s := open(b)
		id, err := s.CreateNode(ctx, state.NewNode{PingInterval: 30})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		cpu := cpuNow()
		for b.Loop() {
			l, err := s.PullTaskIns(ctx, id, "")
			if err != nil || len(l) != 0 {
				b.Fatal(l, err)
			}
		}
		reportCPU(b, cpu)
	})
}

// reportCPU reports the process's CPU since cpu, per op.
func reportCPU(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(cpuNow()-cpu)/1e3/float64(b.N), "cpu-µs/op")
}
