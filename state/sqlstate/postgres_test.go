package sqlstate_test

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"

	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestConformancePostgres runs the suite on PostgreSQL databases: the
// States over one database are replicas, as several SuperLinks on it.
func TestConformancePostgres(t *testing.T) {
	statetest.Run(t, statetest.Options{Shared: true, NewStore: func(t *testing.T) statetest.Opener {
		dsn := pgtest.NewDatabase(t)
		return func(t *testing.T, c statetest.Config) state.State { return openPostgres(t, dsn, c) }
	}})
}

// TestPostgresGoesAway: while the server is down every call fails with
// Unavailable and a message that says so; once it is back the same State
// carries on, without being opened again, its replica lock is taken
// again, and a node whose ping fell due while the server was down is
// given its ping interval (the grace of a restart).
func TestPostgresGoesAway(t *testing.T) {
	srv := pgtest.NewServer(t)
	dsn := srv.NewDatabase(t)
	logs := &testkit.SyncBuffer{}
	ctx := context.Background()
	clock := &statetest.Clock{}
	clock.Set(time.Unix(1795638840, 0))
	s, err := sqlstate.OpenPostgres(ctx, dsn, sqlstate.PostgresOptions{Options: sqlstate.Options{Now: clock.Now, Logger: slog.New(slog.NewTextHandler(logs, nil))}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	waiting, err := s.CreateNode(ctx, state.NewNode{PingInterval: 10})
	if err != nil {
		t.Fatal(err)
	}
	node, err := s.CreateNode(ctx, state.NewNode{PingInterval: 60})
	if err != nil {
		t.Fatal(err)
	}
	run, err := s.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second) // past waiting's ping interval
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err = s.PushTaskIns(cctx, []*flwrproto.TaskIns{statetest.TaskIns(run, node, 1.8e9)})
	statetest.WantCode(t, "PushTaskIns while the server is down", err, codes.Unavailable, "cannot reach the database server")
	_, err = s.Ping(cctx, node, 60, "")
	statetest.WantCode(t, "Ping while the server is down", err, codes.Unavailable, "")
	if err := s.Check(cctx); status.Code(err) != codes.Unavailable {
		t.Errorf("Check while the server is down: %v", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ping(cctx, node, 60, ""); err != nil {
		t.Fatalf("Ping once the server is back: %v", err)
	}
	nodes, err := s.GetNodes(cctx, run)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes online once the server is back: %v %v, want both: the one whose ping fell due during the outage gets its interval", nodes, err)
	}
	clock.Advance(11 * time.Second)
	if nodes, err := s.GetNodes(cctx, run); err != nil || len(nodes) != 1 || nodes[0].NodeId != node {
		t.Fatalf("nodes online past the grace: %v %v, want only %d, not %d", nodes, err, node, waiting)
	}
	if !strings.Contains(logs.String(), "state database reachable again") {
		t.Errorf("the end of the outage was not logged:\n%s", logs)
	}
	ti := statetest.TaskIns(run, node, 1.8e9)
	if _, err := s.PushTaskIns(cctx, []*flwrproto.TaskIns{ti}); err != nil {
		t.Fatalf("PushTaskIns once the server is back: %v", err)
	}
	got, err := s.PullTaskIns(cctx, node, "")
	if err != nil || len(got) != 1 || got[0].TaskId != ti.TaskId {
		t.Fatalf("PullTaskIns once the server is back: %v %v", got, err)
	}
	// The replica lock is taken again (the watch checks every 2 s).
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(logs.String(), "this SuperLink is shown running again") {
		if time.Now().After(deadline) {
			t.Fatalf("the replica lock was not taken again:\n%s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "state database failed") {
		t.Errorf("the failures were not logged:\n%s", logs)
	}
	if strings.Contains(logs.String(), srv.Password) {
		t.Error("the log holds the password")
	}
}

// openPG opens a State on dsn with the clock now, logging into logs.
func openPG(t *testing.T, dsn string, now func() time.Time, logs *testkit.SyncBuffer) *sqlstate.State {
	t.Helper()
	s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{
		Options: sqlstate.Options{Now: now, Logger: slog.New(slog.NewTextHandler(logs, nil))},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestPostgresReplicaKilled: a TaskIns delivered through a replica that
// then dies (its process killed: no Close) and not answered goes again to
// its node when the node asks through another replica; while the replica
// that delivered it lives, it never goes twice.
func TestPostgresReplicaKilled(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ctx := context.Background()
	logs := &testkit.SyncBuffer{}
	a, b := openPG(t, dsn, time.Now, logs), openPG(t, dsn, time.Now, logs)
	node, err := a.CreateNode(ctx, state.NewNode{PingInterval: 60})
	if err != nil {
		t.Fatal(err)
	}
	run, err := b.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ti := statetest.TaskIns(run, node, 1.8e9)
	if _, err := b.PushTaskIns(ctx, []*flwrproto.TaskIns{ti}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.PullTaskIns(ctx, node, ""); err != nil || len(got) != 1 {
		t.Fatalf("first pull: %v %v", got, err)
	}
	if got, err := b.PullTaskIns(ctx, node, ""); err != nil || len(got) != 0 {
		t.Fatalf("pull through another replica while the one that delivered it lives: %v %v, want nothing", got, err)
	}
	sqlstate.Crash(a)
	pullAgain(t, b, node, ti.TaskId)
	if !strings.Contains(logs.String(), "task delivered again") {
		t.Errorf("the redelivery was not logged:\n%s", logs)
	}
	if got, err := b.PullTaskIns(ctx, node, ""); err != nil || len(got) != 0 {
		t.Fatalf("pull again through the replica that delivered it again: %v %v, want nothing", got, err)
	}
	if _, err := b.PushTaskRes(ctx, []*flwrproto.TaskRes{statetest.TaskRes(ti, node, 1.8e9)}, ""); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresReplicaGrace: a replica that joins while another serves
// leaves the nodes' liveness alone; one that joins when none is alive
// gives the nodes online at the last heartbeat their ping interval from
// now; of several joining at once, one gives it.
func TestPostgresReplicaGrace(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ctx := context.Background()
	logs := &testkit.SyncBuffer{}
	clock := &statetest.Clock{}
	clock.Set(time.Unix(1795638840, 0))
	a := openPG(t, dsn, clock.Now, logs)
	node, err := a.CreateNode(ctx, state.NewNode{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	run, err := a.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	online := func(s *sqlstate.State) bool {
		t.Helper()
		nodes, err := s.GetNodes(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		return len(nodes) == 1
	}
	clock.Advance(40 * time.Second) // past the ping interval, with a replica serving
	b := openPG(t, dsn, clock.Now, logs)
	if online(b) {
		t.Fatal("a replica that joined while another served gave a grace")
	}
	if _, err := b.Ping(ctx, node, 30, ""); err != nil {
		t.Fatal(err)
	}
	// Every replica stops; the node's ping falls due while none runs.
	sqlstate.Crash(a)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(100 * time.Second)
	states := make([]*sqlstate.State, 3)
	var wg sync.WaitGroup
	for i := range states {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := sqlstate.OpenPostgres(ctx, dsn, sqlstate.PostgresOptions{Options: sqlstate.Options{Now: clock.Now, Logger: slog.New(slog.DiscardHandler)}})
			if err != nil {
				t.Error(err)
				return
			}
			t.Cleanup(func() { s.Close() })
			states[i] = s
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i, s := range states {
		if !online(s) {
			t.Errorf("replica %d: the node is offline: no replica gave the restart grace", i)
		}
	}
	clock.Advance(31 * time.Second)
	if online(states[0]) {
		t.Error("the grace was given more than once, or longer than the ping interval")
	}
}

// TestPostgresRace: two States on one database, as two SuperLinks, with
// every node pulling through both at once, four pullers per node, the
// tasks all waiting before the pullers start: every TaskIns reaches its
// node exactly once, and every result comes back exactly once through
// either State.
func TestPostgresRace(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	logs := &testkit.SyncBuffer{}
	states := []*sqlstate.State{openPG(t, dsn, time.Now, logs), openPG(t, dsn, time.Now, logs)}
	const nodes, perNode = 8, 25
	run, err := states[0].CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]int64, nodes)
	var pushed []string
	for i := range ids {
		if ids[i], err = states[i%2].CreateNode(ctx, state.NewNode{PingInterval: 3600}); err != nil {
			t.Fatal(err)
		}
	}
	for r := range perNode {
		for i, id := range ids {
			list, err := states[(r+i)%2].PushTaskIns(ctx, []*flwrproto.TaskIns{statetest.TaskIns(run, id, 1.8e9)})
			if err != nil {
				t.Fatal(err)
			}
			pushed = append(pushed, list...)
		}
	}
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for _, id := range ids {
		for k := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := states[k%2]
				for empty := 0; empty < 3; {
					list, err := s.PullTaskIns(ctx, id, "")
					if err != nil {
						t.Error(err)
						return
					}
					if len(list) == 0 {
						empty++
						continue
					}
					empty = 0
					for _, ti := range list {
						mu.Lock()
						got[ti.TaskId]++
						mu.Unlock()
						if ti.Task.Consumer.NodeId != id {
							t.Errorf("node %d got a TaskIns for node %d", id, ti.Task.Consumer.NodeId)
						}
						if _, err := states[(k+1)%2].PushTaskRes(ctx, []*flwrproto.TaskRes{statetest.TaskRes(ti, id, 1.8e9)}, ""); err != nil {
							t.Error(err)
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	for _, id := range pushed {
		if got[id] != 1 {
			t.Errorf("TaskIns %s delivered %d times", id, got[id])
		}
	}
	if len(got) != len(pushed) {
		t.Errorf("%d TaskIns delivered, %d pushed", len(got), len(pushed))
	}
	results := map[string]int{}
	var wg2 sync.WaitGroup
	for k := range 2 { // two ServerApps' worth of pulls, racing
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			list, err := states[k].PullTaskRes(ctx, pushed[k*len(pushed)/2:(k+1)*len(pushed)/2])
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			for _, r := range list {
				results[r.Task.Ancestry[0]]++
			}
			mu.Unlock()
		}()
	}
	wg2.Wait()
	for _, id := range pushed {
		if results[id] != 1 {
			t.Errorf("result of %s delivered %d times", id, results[id])
		}
	}
	if strings.Contains(logs.String(), "task delivered again") {
		t.Errorf("a TaskIns was delivered again while both replicas lived:\n%s", logs)
	}
}

// TestPostgresOpenTogether: three States opened at the same moment on an
// empty database (three SuperLinks started at once) all open: one creates
// the schema under the lock, the others find it; each is its own replica.
func TestPostgresOpenTogether(t *testing.T) {
	for range 3 { // a race is a matter of luck: a few empty databases
		dsn := pgtest.NewDatabase(t)
		logs := &testkit.SyncBuffer{}
		states := make([]*sqlstate.State, 3)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range states {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{
					Options: sqlstate.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}})
				if err != nil {
					t.Error(err)
					return
				}
				t.Cleanup(func() { s.Close() })
				states[i] = s
			}()
		}
		close(start)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		if n := strings.Count(logs.String(), "state database created"); n != 1 {
			t.Errorf("%d States say they created the schema, want 1:\n%s", n, logs)
		}
		node, err := states[0].CreateNode(context.Background(), state.NewNode{PingInterval: 30})
		if err != nil {
			t.Fatal(err)
		}
		for i, s := range states {
			if ok, err := s.Ping(context.Background(), node, 30, ""); err != nil || !ok {
				t.Errorf("state %d: Ping: %v %v", i, ok, err)
			}
		}
	}
}

// TestPostgresOwnerRole: as docs/several-superlinks.md sets it up (a role
// that owns its database, no superuser), the State creates its schema, and
// replicas see each other's locks: a killed one's delivery goes again. Its
// connections name themselves (application_name).
func TestPostgresOwnerRole(t *testing.T) {
	srv := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := strings.TrimPrefix(u.Path, "/")
	role := "owner_" + db
	admin := func(stmt string) {
		t.Helper()
		c, err := pgx.Connect(context.Background(), srv.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	admin("CREATE ROLE " + role + " LOGIN PASSWORD 'ownerpw'")
	admin("ALTER DATABASE " + db + " OWNER TO " + role)
	t.Cleanup(func() {
		admin("DROP DATABASE IF EXISTS " + db + " WITH (FORCE)")
		admin("DROP ROLE IF EXISTS " + role)
	})
	u.User = url.UserPassword(role, "ownerpw")
	ctx := context.Background()
	logs := &testkit.SyncBuffer{}
	a, b := openPG(t, u.String(), time.Now, logs), openPG(t, u.String(), time.Now, logs)
	node, err := a.CreateNode(ctx, state.NewNode{PingInterval: 60})
	if err != nil {
		t.Fatal(err)
	}
	run, err := a.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ti := statetest.TaskIns(run, node, 1.8e9)
	if _, err := a.PushTaskIns(ctx, []*flwrproto.TaskIns{ti}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.PullTaskIns(ctx, node, ""); err != nil || len(got) != 1 {
		t.Fatalf("pull: %v %v", got, err)
	}
	if got, err := b.PullTaskIns(ctx, node, ""); err != nil || len(got) != 0 {
		t.Fatalf("pull through the other replica while the first lives: %v %v, want nothing (its lock is not seen?)", got, err)
	}
	c, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var named int
	if err := c.QueryRow(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'sepal-superlink'`, db).Scan(&named); err != nil || named < 2 {
		t.Errorf("%d connections named sepal-superlink (%v), want the two replicas' locks at least", named, err)
	}
	sqlstate.Crash(a)
	pullAgain(t, b, node, ti.TaskId)
}

// pullAgain pulls for node through s until it gets the TaskIns id again,
// delivered by a replica that died: the server frees the dead replica's
// lock once its backend has seen the connection end, a moment after.
func pullAgain(t *testing.T, s *sqlstate.State, node int64, id string) {
	t.Helper()
	start := time.Now()
	for {
		got, err := s.PullTaskIns(context.Background(), node, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 1 && got[0].TaskId == id {
			t.Logf("delivered again %v after the replica died", time.Since(start).Round(time.Millisecond))
			return
		}
		if len(got) != 0 {
			t.Fatalf("pull after the delivering replica died: %s, want %s again", got[0].TaskId, id)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("the TaskIns delivered by a replica that died was not delivered again within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
