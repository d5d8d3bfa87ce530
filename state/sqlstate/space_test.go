package sqlstate_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// fedAvgRounds runs rounds FedAvg-shaped rounds on s: each round a new
// model of mib MiB pushed to every node, pulled, answered with a model of
// the same size, and the results pulled; after each round, after(round).
func fedAvgRounds(tb testing.TB, s state.State, nodes, rounds int, mib float64, after func(round int)) {
	ctx := context.Background()
	run, err := s.CreateRun(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	ids := make([]int64, nodes)
	for i := range ids {
		if ids[i], err = s.CreateNode(ctx, state.NewNode{PingInterval: 3600}); err != nil {
			tb.Fatal(err)
		}
	}
	size := int(mib * (1 << 20))
	model := func(seed int) []byte {
		b := make([]byte, size)
		for i := 0; i+8 <= len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], uint64(seed)*0x9e3779b97f4a7c15+uint64(i))
		}
		return b
	}
	params := func(d []byte) *flwrproto.RecordSet {
		return &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: d}}}}}
	}
	for r := 1; r <= rounds; r++ {
		m := model(r)
		var want []string
		for _, id := range ids {
			ti := statetest.TaskIns(run, id, 1.8e9)
			ti.GroupId = fmt.Sprint(r)
			ti.Task.Recordset = params(m)
			got, err := s.PushTaskIns(ctx, []*flwrproto.TaskIns{ti})
			if err != nil {
				tb.Fatal(err)
			}
			want = append(want, got...)
		}
		for i, id := range ids {
			list, err := s.PullTaskIns(ctx, id, "")
			if err != nil || len(list) != 1 {
				tb.Fatalf("round %d: pull: %v %v", r, list, err)
			}
			res := statetest.TaskRes(list[0], id, 1.8e9)
			res.Task.Recordset = params(model(r*1000 + i))
			if _, err := s.PushTaskRes(ctx, []*flwrproto.TaskRes{res}, ""); err != nil {
				tb.Fatal(err)
			}
		}
		got, err := s.PullTaskRes(ctx, want)
		if err != nil || len(got) != nodes {
			tb.Fatalf("round %d: %d results, %v", r, len(got), err)
		}
		after(r)
	}
}

func fileSize(tb testing.TB, path string) int64 {
	var n int64
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// TestSpaceReused: the file does not grow with the rounds: the space of a
// round's arrays, released when the next round's results are pulled, is
// reused by the next rounds.
func TestSpaceReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := sqlstate.OpenSQLite(context.Background(), path, sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const mib = 1
	var at5 int64
	fedAvgRounds(t, s, 2, 30, mib, func(r int) {
		switch r {
		case 5:
			at5 = fileSize(t, path)
		case 30:
			at30 := fileSize(t, path)
			db, _ := os.Stat(path)
			t.Logf("file and WAL after 5 rounds: %.1f MiB, after 30: %.1f MiB, of which the file %.1f MiB (each round writes %d MiB of arrays)",
				float64(at5)/(1<<20), float64(at30)/(1<<20), float64(db.Size())/(1<<20), 3*mib)
			if at30 > at5+(2<<20) {
				t.Errorf("the file grew from %d to %d bytes between rounds 5 and 30", at5, at30)
			}
		}
	})
}

// BenchmarkSpace100Rounds runs 100 FedAvg rounds of 2 nodes with a 32 MiB
// model (a new one each round, and a new one from each node) on a SQLite
// file and reports its size (with the WAL) after 10 and 100 rounds, at its
// largest, and once closed (the WAL gone).
//
//	go test ./state/sqlstate -run '^$' -bench Space100Rounds -benchtime 1x
func BenchmarkSpace100Rounds(b *testing.B) {
	for range b.N {
		path := filepath.Join(b.TempDir(), "state.db")
		s, err := sqlstate.OpenSQLite(context.Background(), path, sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}})
		if err != nil {
			b.Fatal(err)
		}
		var peak, last, at10 int64
		fedAvgRounds(b, s, 2, 100, 32, func(r int) {
			last = fileSize(b, path)
			peak = max(peak, last)
			if r == 10 {
				at10 = last
			}
		})
		s.Close()
		b.ReportMetric(float64(at10)/(1<<20), "file-MiB-after-10")
		b.ReportMetric(float64(last)/(1<<20), "file-MiB-after-100")
		b.ReportMetric(float64(peak)/(1<<20), "file-MiB-peak")
		b.ReportMetric(float64(fileSize(b, path))/(1<<20), "file-MiB-closed")
	}
}
