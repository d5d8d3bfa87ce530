package sqlstate_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestLinkConformance runs the 1.29 suite on SQLite files; LinkStates
// over one file are several States on it (Shared), and a restart closes
// one and opens another.
func TestLinkConformance(t *testing.T) {
	statetest.RunLink(t, statetest.LinkOptions{Shared: true, NewStore: func(t *testing.T) statetest.LinkOpener {
		path := filepath.Join(t.TempDir(), "state.db")
		return func(t *testing.T, c statetest.Config) state.LinkState { return openShared(t, path, c) }
	}})
}

// TestLinkConformancePostgres runs the 1.29 suite on PostgreSQL
// databases: the LinkStates over one database are replicas, and one that
// crashes is a SuperLink killed (its connections cut).
func TestLinkConformancePostgres(t *testing.T) {
	statetest.RunLink(t, statetest.LinkOptions{Shared: true, NewStore: func(t *testing.T) statetest.LinkOpener {
		dsn := pgtest.NewDatabase(t)
		return func(t *testing.T, c statetest.Config) state.LinkState { return openPostgres(t, dsn, c) }
	}, Crash: func(s state.LinkState) { sqlstate.Crash(s.(*sqlstate.State)) }, SignaturesShared: true})
}

// TestLinkRestartGrace: a SuperLink killed and started again on its file
// after longer than a node's heartbeat patience and a ServerApp's token
// lifetime finds both alive: they could not reach it meanwhile. Past the
// patience from the restart without heartbeats, they are gone.
func TestLinkRestartGrace(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	clock := &statetest.Clock{}
	clock.Set(time.Unix(1795638840, 0))
	open := func() *sqlstate.State {
		s, err := sqlstate.OpenSQLite(ctx, path, sqlstate.SQLiteOptions{Options: sqlstate.Options{Now: clock.Now, Logger: slog.New(slog.DiscardHandler)}})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	node, _ := s.RegisterNode(ctx, []byte("key"), 0)
	if _, err := s.ActivateNode(ctx, []byte("key"), 30); err != nil {
		t.Fatal(err)
	}
	fab := []byte("fab")
	run, _ := s.CreateLinkRun(ctx, state.NewRun{Fab: &flwr129.Fab{HashStr: statetest.Hex256(fab), Content: fab}})
	tok, _ := s.RequestToken(ctx, run)
	if _, _, _, err := s.StartApp(ctx, run); err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Second)
	if err := s.Sweep(ctx); err != nil { // records that a SuperLink ran
		t.Fatal(err)
	}
	sqlstate.Crash(s)
	clock.Advance(5 * time.Minute)
	s = open()
	defer s.Close()
	if ns, err := s.OnlineNodes(ctx, run); err != nil || len(ns) != 1 || ns[0] != node {
		t.Fatalf("after the restart: online nodes %v %v, want the node", ns, err)
	}
	if id, ok, err := s.RunOfToken(ctx, tok); err != nil || !ok || id != run {
		t.Fatalf("after the restart: the token's run %d %v %v", id, ok, err)
	}
	clock.Advance(61 * time.Second)
	r, err := s.Run(ctx, run)
	if err != nil || r.Status.Status != state.StatusFinished || r.Status.SubStatus != state.SubStatusFailed {
		t.Fatalf("61 s after the restart without heartbeats: %v %v, want failed", r.GetStatus(), err)
	}
	ns, _ := s.LinkNodes(ctx)
	if len(ns) != 1 || ns[0].Status != state.NodeOffline {
		t.Fatalf("61 s after the restart without heartbeats: %v, want the node offline", ns)
	}
}
