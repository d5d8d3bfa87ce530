package sqlstate_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// heapPeak samples the heap's objects every millisecond while fn runs and
// returns the highest value above the heap before it.
func heapPeak(fn func()) uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	base := s[0].Value.Uint64()
	stop, done := make(chan struct{}), make(chan uint64)
	go func() {
		var peak uint64
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			select {
			case <-stop:
				done <- peak
				return
			case <-t.C:
			}
		}
	}()
	fn()
	close(stop)
	return max(<-done, base) - base
}

// BenchmarkLargeArray pushes a TaskIns holding one 512 MiB array into the
// database and pulls it back through a State that never saw it (so it is
// read from the database), reporting the heap each needs beyond the array:
// the array goes to and from the database in 1 MiB chunks, never as a
// second whole copy. On PostgreSQL it also reports the largest peak RSS of
// the server's processes (the backends that wrote and read it).
//
//	go test ./state/sqlstate -run '^$' -bench LargeArray -benchtime 1x
func BenchmarkLargeArray(b *testing.B) {
	quiet := sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}
	b.Run("SQLite", func(b *testing.B) {
		var path string
		benchLargeArray(b, func() {
			path = filepath.Join(b.TempDir(), "state.db")
		}, func() *sqlstate.State {
			s, err := sqlstate.OpenSQLite(context.Background(), path, sqlstate.SQLiteOptions{Options: quiet})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}, nil)
	})
	b.Run("PostgreSQL", func(b *testing.B) {
		srv := pgtest.NewServer(b)
		pid, err := load.PostmasterPID(filepath.Join(srv.Dir, "data"))
		if err != nil {
			b.Fatal(err)
		}
		var dsn string
		benchLargeArray(b, func() {
			dsn = srv.NewDatabase(b)
		}, func() *sqlstate.State {
			s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{Options: quiet})
			if err != nil {
				b.Fatal(err)
			}
			return s
		}, func() int64 {
			peak, _, err := load.TreePeakRSS(pid)
			if err != nil {
				b.Fatal(err)
			}
			return peak
		})
	})
}

// benchLargeArray runs BenchmarkLargeArray on one database: fresh makes a
// new empty one, open opens a State on it, server (if set) returns the
// largest peak RSS of the server's live processes: read after the push,
// while the backend that wrote the array lives, and after the pull.
func benchLargeArray(b *testing.B, fresh func(), open func() *sqlstate.State, server func() int64) {
	const size = 512 << 20
	ctx := context.Background()
	for range b.N {
		fresh()
		s := open()
		node, _ := s.CreateNode(ctx, state.NewNode{PingInterval: 3600})
		run, _ := s.CreateRun(ctx)
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i * 7)
		}
		ti := statetest.TaskIns(run, node, 1.8e9)
		ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: data}}}}}
		push := heapPeak(func() {
			if _, err := s.PushTaskIns(ctx, []*flwrproto.TaskIns{ti}); err != nil {
				b.Fatal(err)
			}
		})
		var serverPeak int64
		if server != nil {
			serverPeak = server()
		}
		s.Close()
		data, ti = nil, nil
		s = open()
		var got []*flwrproto.TaskIns
		var err error
		pull := heapPeak(func() {
			if got, err = s.PullTaskIns(ctx, node, ""); err != nil || len(got) != 1 {
				b.Fatalf("pull: %v %v", got, err)
			}
		})
		if n := len(got[0].Task.Recordset.Parameters["p"].DataValues[0].Data); n != size {
			b.Fatalf("pulled %d bytes, want %d", n, size)
		}
		if server != nil {
			serverPeak = max(serverPeak, server())
			b.ReportMetric(float64(serverPeak)/(1<<20), "postgres-peak-rss-MiB")
		}
		s.Close()
		b.ReportMetric(float64(push)/(1<<20), "push-extra-heap-MiB")
		b.ReportMetric(float64(pull)/(1<<20), "pull-heap-MiB")
		b.ReportMetric(float64(pull)/size, "pull-heap/array")
	}
}
