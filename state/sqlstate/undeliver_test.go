package sqlstate

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestUndeliver: a delivery whose commit may have happened though the
// call failed is cleared once the database answers, and the TaskIns goes
// again to its node, through any replica, even though the replica that
// delivered it lives.
func TestUndeliver(t *testing.T) {
	ctx := context.Background()
	a, b := sharedPair(t)
	node, _ := a.CreateNode(ctx, state.NewNode{PingInterval: 60})
	run, _ := a.CreateRun(ctx)
	ti := statetest.TaskIns(run, node, 1.8e9)
	if _, err := a.PushTaskIns(ctx, []*flwrproto.TaskIns{ti}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.PullTaskIns(ctx, node, ""); err != nil || len(got) != 1 {
		t.Fatalf("pull: %v %v", got, err)
	}
	var u undelivery
	if err := a.db.QueryRowContext(ctx, `SELECT seq, delivered_at, delivered_by FROM task_ins WHERE id = $1`, ti.TaskId).Scan(&u.seq, &u.at, &u.by); err != nil {
		t.Fatal(err)
	}
	if got, err := b.PullTaskIns(ctx, node, ""); err != nil || len(got) != 0 {
		t.Fatalf("pull through the other replica: %v %v, want nothing", got, err)
	}
	other := u
	other.at++ // not this delivery: left alone
	undeliverAll(t, a, other, u)
	got, err := b.PullTaskIns(ctx, node, "")
	if err != nil || len(got) != 1 || got[0].TaskId != ti.TaskId {
		t.Fatalf("pull after the delivery was cleared: %v %v, want the TaskIns again", got, err)
	}
	if got, err := a.PullTaskIns(ctx, node, ""); err != nil || len(got) != 0 {
		t.Fatalf("pull once more: %v %v, want nothing", got, err)
	}
}

// sharedPair opens two States on one new SQLite file, closed when t ends.
func sharedPair(t *testing.T) (a, b *State) {
	path := filepath.Join(t.TempDir(), "state.db")
	o := SQLiteOptions{Options: Options{Logger: slog.New(slog.DiscardHandler)}, Shared: true}
	for _, p := range []**State{&a, &b} {
		s, err := OpenSQLite(context.Background(), path, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		*p = s
	}
	return a, b
}

// undeliverAll queues us on s and waits until they were tried.
func undeliverAll(t *testing.T, s *State, us ...undelivery) {
	for _, u := range us {
		s.undeliverLater(u)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.undo.mu.Lock()
		n := len(s.undo.list)
		s.undo.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the deliveries were not cleared")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
