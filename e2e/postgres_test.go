package e2e

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/transport"
)

// The tests of flower-superlink --database postgres://...: the real binary
// on a real PostgreSQL (internal/pgtest), Sepal's nodes and server app in
// this process. The three-SuperLinks-behind-HAProxy run with SIGKILLs is
// in haproxy_test.go.

// pgModelBytes is the model of these runs: one float32 array.
const pgModelBytes = 512 << 10

// pgFedAvg runs a FedAvg of one node per fleet address (each its own
// SuperLink or the same) and a server app on driver, and checks that every
// round averaged every node and the model ends at rounds.
func pgFedAvg(t *testing.T, ctx context.Context, tlsOpts transport.ClientOptions, fleets []string, driver string, rounds int, onFit func(int64)) {
	t.Helper()
	var fits atomic.Int64
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	nctx, stopNodes := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, fleet := range fleets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := app.RunNode(nctx, app.NodeOptions{
				Server: fleet, TLS: tlsOpts, PollInterval: 50 * time.Millisecond, Logger: quiet,
				NewClient: func(int64) app.ClientApp { return &addOneClient{size: pgModelBytes, fits: &fits, onFit: onFit} },
			})
			if err != nil && nctx.Err() == nil {
				t.Errorf("node on %s: %v", fleet, err)
			}
		}()
	}
	defer func() {
		stopNodes()
		wg.Wait()
	}()
	sum, err := app.RunFedAvg(ctx, app.ServerOptions{
		Server: driver, TLS: tlsOpts, Rounds: rounds, MinNodes: len(fleets),
		PollInterval: 50 * time.Millisecond, NodesInterval: 100 * time.Millisecond, RoundTimeout: time.Minute,
		Logger: quiet,
	})
	if err != nil {
		t.Fatalf("the FedAvg run failed: %v", err)
	}
	checkAddOneRun(t, sum, rounds, len(fleets))
}

// dialTLS opens a gRPC client to addr trusting the SuperLink's CA.
func dialTLS(t *testing.T, addr string, o transport.ClientOptions) *grpc.ClientConn {
	t.Helper()
	creds, err := transport.ClientCredentials(o)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestPostgresReplicas: three SuperLinks started at the same moment on one
// empty database all serve (one creates the schema, under the lock; the
// others find it); a node registered through one pings through another;
// and a FedAvg whose nodes each talk to a different SuperLink and whose
// server app talks to a third ends with every result of every round.
func TestPostgresReplicas(t *testing.T) {
	needE2E(t)
	dsn := pgtest.NewDatabase(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	links := make([]*superLink, 3)
	for i := range links { // all at once: no wait between the starts
		links[i] = startSuperLink(t, linkOptions{dir: dir, certs: true, args: []string{"--database", dsn}, early: true})
	}
	created := 0
	for _, l := range links {
		l.waitServing(t)
		out := l.out.String()
		created += strings.Count(out, "state database created")
		if strings.Contains(out, strings.SplitN(strings.TrimPrefix(dsn, "postgres://postgres:"), "@", 2)[0]) {
			t.Error("a SuperLink logged the database password")
		}
	}
	if created != 1 {
		t.Errorf("%d SuperLinks say they created the state's schema, want 1", created)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var version, replicas int
	if err := conn.QueryRow(ctx, `SELECT version FROM sepal_schema WHERE name = 'SuperLink state'`).Scan(&version); err != nil || version != sqlstate.PostgresSchemaVersion() {
		t.Errorf("schema version %d (%v), want %d", version, err, sqlstate.PostgresSchemaVersion())
	}
	if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM replicas`).Scan(&replicas); err != nil || replicas != 3 {
		t.Errorf("%d replicas recorded (%v), want 3", replicas, err)
	}

	tlsOpts := transport.ClientOptions{RootCertificates: filepath.Join(dir, slCA)}
	f0 := flwrproto.NewFleetClient(dialTLS(t, links[0].fleet, tlsOpts))
	f1 := flwrproto.NewFleetClient(dialTLS(t, links[1].fleet, tlsOpts))
	created0, err := f0.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	ping, err := f1.Ping(ctx, &flwrproto.PingRequest{Node: created0.Node, PingInterval: 30})
	if err != nil || !ping.Success {
		t.Fatalf("a node created through one SuperLink pinged through another: %v %v", ping, err)
	}
	if _, err := f1.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: created0.Node}); err != nil {
		t.Fatalf("DeleteNode through another SuperLink: %v", err)
	}

	start := time.Now()
	pgFedAvg(t, ctx, tlsOpts, []string{links[0].fleet, links[1].fleet, links[2].fleet}, links[2].driver, 3, nil)
	t.Logf("3 rounds, 3 nodes on 3 SuperLinks, server app on the third, %d KiB model: %v", pgModelBytes>>10, time.Since(start).Round(time.Millisecond))
}

// TestPostgresGoesAway: the database stops while a FedAvg runs (round 2);
// the SuperLink answers Unavailable meanwhile (the nodes and the server
// app retry), carries on when the database is back, without a restart, and
// every round averages every node.
func TestPostgresGoesAway(t *testing.T) {
	needE2E(t)
	srv := pgtest.NewServer(t)
	dsn := srv.NewDatabase(t)
	sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--database", dsn}})
	dir := sl.dir
	tlsOpts := transport.ClientOptions{RootCertificates: filepath.Join(dir, slCA)}
	driver := flwrproto.NewDriverClient(dialTLS(t, sl.driver, tlsOpts))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	var once sync.Once
	outage := make(chan error, 1)
	onFit := func(n int64) {
		if n != 3 { // the first training of round 2
			return
		}
		once.Do(func() {
			go func() {
				outage <- func() error {
					if err := srv.Stop(); err != nil {
						return err
					}
					defer srv.Restart()
					cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
					defer ccancel()
					_, err := driver.CreateRun(cctx, &flwrproto.CreateRunRequest{})
					if status.Code(err) != codes.Unavailable {
						t.Errorf("CreateRun while the database is down: %v, want Unavailable", err)
					} else {
						t.Logf("while the database is down: %v", err)
					}
					time.Sleep(3 * time.Second)
					return nil
				}()
			}()
		})
	}
	start := time.Now()
	pgFedAvg(t, ctx, tlsOpts, []string{sl.fleet, sl.fleet}, sl.driver, 4, onFit)
	select {
	case err := <-outage:
		if err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatal("the database was never stopped")
	}
	t.Logf("4 rounds with the database stopped for 3 s in round 2: %v", time.Since(start).Round(time.Millisecond))
	select {
	case <-sl.done:
		t.Fatalf("the SuperLink ended: %v", sl.err)
	default:
	}
	if out := sl.out.String(); !strings.Contains(out, "state database failed") || !strings.Contains(out, "cannot reach the database server") {
		t.Errorf("the SuperLink did not log the database's absence")
	}
	if strings.Contains(sl.out.String(), srv.Password) {
		t.Error("the SuperLink logged the database password")
	}
	// And it still takes new work.
	if _, err := driver.CreateRun(ctx, &flwrproto.CreateRunRequest{}); err != nil {
		t.Fatalf("CreateRun after the outage: %v", err)
	}
}

// TestACMEDatabaseOnly: with --acme-domain and --database postgres://...
// but no --acme-storage, the ACME account and certificate go into that
// database beside the state: the SuperLink obtains a certificate, serves a
// FedAvg round with its state in PostgreSQL, and a SuperLink started again
// on the same database serves the same certificate without ordering
// another.
func TestACMEDatabaseOnly(t *testing.T) {
	needE2E(t)
	dsn := pgtest.NewDatabase(t)
	fleet := freeAddr(t)
	pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), AuthzReuse: -1})
	roots := pb.issuingRoots(t)
	l := startACMELink(t, pb, acmeLinkOptions{client: "certmagic", fleet: fleet, database: dsn})
	first, took := waitACMECert(t, l, roots, 90*time.Second)
	t.Logf("process start to serving the ACME certificate from the database's storage: %v", took.Round(time.Millisecond))
	l.waitOutput(t, "msg=serving", 10*time.Second)
	if out := l.out.String(); !strings.Contains(out, "from=--database") {
		t.Errorf("the SuperLink did not say the ACME storage is the --database")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var schemas, certs int
	if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM sepal_schema WHERE name IN ('acme storage', 'SuperLink state')`).Scan(&schemas); err != nil || schemas != 2 {
		t.Errorf("%d of the ACME storage's and the state's schemas in the database (%v), want 2", schemas, err)
	}
	if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM acme_keys WHERE key LIKE '%.crt'`).Scan(&certs); err != nil || certs != 1 {
		t.Errorf("%d certificates stored in the database (%v), want 1", certs, err)
	}

	acmeRound(t, pb, l) // client and server apps over the ACME certificate, the state in PostgreSQL
	var runs int
	if err := conn.QueryRow(ctx, `SELECT COUNT(*) FROM runs`).Scan(&runs); err != nil || runs != 1 {
		t.Errorf("%d runs in the database's state (%v), want the round's 1", runs, err)
	}

	l.stop()
	l2 := startACMELink(t, pb, acmeLinkOptions{client: "certmagic", fleet: fleet, database: dsn})
	again, _ := waitACMECert(t, l2, roots, 60*time.Second)
	if again.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("the SuperLink started again serves serial %x, want %x from the database", again.SerialNumber, first.SerialNumber)
	}
	if n := newOrders(pb); n != 1 {
		t.Errorf("pebble received %d orders, want 1", n)
	}
}
