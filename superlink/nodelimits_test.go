package superlink

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/transport"
)

// nodeLink is a SuperLink over TLS with node limits l.
type nodeLink struct {
	sl     *SuperLink
	logs   *testkit.SyncBuffer
	fleet  string
	driver string
	caFile string
}

func startNodeLimits(t *testing.T, l NodeLimits) *nodeLink {
	t.Helper()
	creds, caFile := testCerts(t)
	logs := &testkit.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	sl := New(Options{State: memstate.New(memstate.Options{Logger: log}), Logger: log, SweepInterval: time.Hour, NodeLimits: l})
	link := testkit.Serve(t, serveOn(sl, creds))
	return &nodeLink{sl: sl, logs: logs, fleet: link.Fleet, driver: link.Driver, caFile: caFile}
}

// client opens a new connection to the Fleet API.
func (l *nodeLink) client(t *testing.T) (flwrproto.FleetClient, *grpc.ClientConn) {
	t.Helper()
	c := dial(t, l.fleet, l.caFile)
	t.Cleanup(func() { c.Close() })
	return flwrproto.NewFleetClient(c), c
}

// TestPingIntervalCap: a ping_interval above the cap is refused, in
// CreateNode and Ping, with InvalidArgument naming the cap; 30 s (what
// Flower 1.8.0 SuperNodes send) and the cap itself pass.
func TestPingIntervalCap(t *testing.T) {
	l := startNodeLimits(t, NodeLimits{})
	ctx := ctxT(t)
	fleet, _ := l.client(t)
	_, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 1e9})
	wantCode(t, "CreateNode for 31 years", err, codes.InvalidArgument, "ping_interval 1e+09 s is above this SuperLink's limit of 3600 s")
	r, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	_, err = fleet.Ping(ctx, &flwrproto.PingRequest{Node: r.Node, PingInterval: 3600.5})
	wantCode(t, "Ping above the cap", err, codes.InvalidArgument, "Ping: ping_interval 3600.5 s is above")
	if p, err := fleet.Ping(ctx, &flwrproto.PingRequest{Node: r.Node, PingInterval: 3600}); err != nil || !p.Success {
		t.Errorf("Ping at the cap: %v %v", p, err)
	}
	if got := l.sl.NodeLimitStats().Refused[RefusedPingInterval]; got != 2 {
		t.Errorf("%d refusals of the ping interval counted, want 2", got)
	}
	if n, err := l.sl.State().Stats(ctx); err != nil || n.Nodes != 1 {
		t.Errorf("%+v nodes (%v), want 1", n, err)
	}
	if !strings.Contains(l.logs.String(), `level=WARN msg="node registration refused by a limit" reason=max_ping_interval limit="3600 s" peer=127.0.0.1:`) {
		t.Errorf("no warning of the refusal:\n%s", l.logs)
	}
}

// TestNodesPerConnection: one connection holds at most MaxPerConnection
// nodes it created and did not delete; deleting one makes room; another
// connection has its own count; and a connection's count goes once it
// closes.
func TestNodesPerConnection(t *testing.T) {
	l := startNodeLimits(t, NodeLimits{MaxPerConnection: 3})
	ctx := ctxT(t)
	one, conn := l.client(t)
	var ids []*flwrproto.Node
	for range 3 {
		r, err := one.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.Node)
	}
	_, err := one.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	wantCode(t, "a fourth node on one connection", err, codes.ResourceExhausted, "this connection holds 3 nodes it created and did not delete")
	if _, err := one.DeleteNode(ctx, &flwrproto.DeleteNodeRequest{Node: ids[0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := one.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
		t.Errorf("a node after one was deleted: %v", err)
	}
	two, _ := l.client(t)
	for i := range 3 {
		if _, err := two.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
			t.Errorf("node %d on a second connection: %v", i, err)
		}
	}
	if got := l.sl.NodeLimitStats().Refused[RefusedPerConnection]; got != 1 {
		t.Errorf("%d refusals per connection counted, want 1", got)
	}

	// The first connection closed: its entry goes with it.
	conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		l.sl.nodes.connMu.Lock()
		n := len(l.sl.nodes.conns)
		l.sl.nodes.connMu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections counted after one of two closed, want 1", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRegistrationRate: one source address gets Burst registrations at
// once, refused or not, then Rate a second; the refusal names the
// address and the rate, and its warning is logged once however many come.
func TestRegistrationRate(t *testing.T) {
	l := startNodeLimits(t, NodeLimits{Rate: 0.01, Burst: 4, MaxPerConnection: 100})
	ctx := ctxT(t)
	fleet, _ := l.client(t)
	other, _ := l.client(t)
	_, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 1e9}) // refused, and counted
	wantCode(t, "above the cap", err, codes.InvalidArgument, "limit of 3600 s")
	for i := range 3 {
		if _, err := []flwrproto.FleetClient{fleet, other}[i%2].CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
			t.Fatalf("registration %d: %v", i, err)
		}
	}
	for range 5 {
		_, err := other.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
		wantCode(t, "past the burst", err, codes.ResourceExhausted, "too many registrations from 127.0.0.1: this SuperLink takes 4 at once and then 0.01 a second")
	}
	if got := l.sl.NodeLimitStats().Refused[RefusedRate]; got != 5 {
		t.Errorf("%d refusals of the rate counted, want 5", got)
	}
	if n := strings.Count(l.logs.String(), "reason=node_registration_rate"); n != 1 {
		t.Errorf("%d warnings of the rate, want 1:\n%s", n, l.logs)
	}
}

// TestRateLimiter: a bucket refills at the rate up to the burst; a new
// peer when the map is full of peers that did not refill shares one
// overflow bucket, and once a second the refilled ones make room.
func TestRateLimiter(t *testing.T) {
	now := time.Unix(1795638840, 0)
	r := &rateLimiter{rate: 2, burst: 3, buckets: map[string]*bucket{}, now: func() time.Time { return now }}
	takes := func(key string, n int) int {
		got := 0
		for range n {
			if r.take(key) {
				got++
			}
		}
		return got
	}
	if got := takes("a", 5); got != 3 {
		t.Errorf("a took %d at once, want the burst of 3", got)
	}
	now = now.Add(time.Second)
	if got := takes("a", 5); got != 2 {
		t.Errorf("a took %d a second later, want 2 (the rate)", got)
	}
	now = now.Add(time.Hour)
	if got := takes("a", 5); got != 3 {
		t.Errorf("a took %d an hour later, want the burst, no more", got)
	}
	if got := takes("b", 5); got != 3 {
		t.Errorf("b took %d, want its own burst", got)
	}

	for i := len(r.buckets); i < maxBuckets; i++ {
		r.take(fmt.Sprint("peer-", i)) // full, and drained by one
	}
	now = now.Add(100 * time.Millisecond)
	if got := takes("new-1", 2) + takes("new-2", 5); got != 3 {
		t.Errorf("two new peers with the map full took %d, want 3 (one shared bucket)", got)
	}
	if len(r.buckets) != maxBuckets {
		t.Errorf("%d buckets, want %d", len(r.buckets), maxBuckets)
	}
	now = now.Add(2 * time.Second) // the map's buckets refill
	if got := takes("new-3", 5); got != 3 || len(r.buckets) != 1 {
		t.Errorf("after they refilled: a new peer took %d, and %d buckets are left; want 3 and 1", got, len(r.buckets))
	}
}

// TestPeerKey: a peer is its IPv4 address, its IPv6 /64, or its client
// certificate identity.
func TestPeerKey(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.2"), Port: 4242}, "127.0.0.2"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 4242}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 1}, "10.1.2.3"},
	} {
		ctx := peer.NewContext(t.Context(), &peer.Peer{Addr: c.addr})
		if got := peerKey(ctx); got != c.want {
			t.Errorf("peerKey(%v) = %q, want %q", c.addr, got, c.want)
		}
	}
	if got := peerKey(t.Context()); got != "in process" {
		t.Errorf("without a peer: %q", got)
	}
}

// TestMaxNodesRefused: with MaxNodes nodes online, CreateNode gets
// ResourceExhausted naming the limit, counted and logged.
func TestMaxNodesRefused(t *testing.T) {
	l := startNodeLimits(t, NodeLimits{MaxNodes: 2})
	ctx := ctxT(t)
	fleet, _ := l.client(t)
	for range 2 {
		if _, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	wantCode(t, "a third node", err, codes.ResourceExhausted, "the SuperLink holds 2 nodes, all online")
	if got := l.sl.NodeLimitStats().Refused[RefusedMaxNodes]; got != 1 {
		t.Errorf("%d refusals of max_nodes counted, want 1", got)
	}
	if !strings.Contains(l.logs.String(), "reason=max_nodes limit=2") {
		t.Errorf("no warning:\n%s", l.logs)
	}
}

// TestNodesOfRevokedCertificate: under mutual TLS one certificate identity
// holds at most MaxPerIdentity nodes, and the rate limit counts per
// identity; once the CRL that revokes a certificate is loaded, its nodes go
// at once (their tasks answered NODE_UNAVAILABLE, though their ping
// interval has hours to run), the others stay, and a new certificate of
// the same name registers again.
func TestNodesOfRevokedCertificate(t *testing.T) {
	m := startMTLS(t, func(o *Options, m *mtlsLink) {
		o.NodeLimits = NodeLimits{MaxPerIdentity: 2, Burst: 6, Rate: 0.01}
		o.Revocations = func() *x509.RevocationList {
			_, crl := m.src.ClientCAs()
			return crl
		}
	})
	ctx := ctxT(t)
	malConn, mal := m.conn(t, m.link.Fleet, transport.RoleNode, "mallory")
	carolConn, _ := m.conn(t, m.link.Fleet, transport.RoleNode, "carol")
	appConn, _ := m.conn(t, m.link.Driver, transport.RoleServerApp, "app")
	malFleet, carol, driver := flwrproto.NewFleetClient(malConn), flwrproto.NewFleetClient(carolConn), flwrproto.NewDriverClient(appConn)

	var mals []int64
	for range 2 {
		r, err := malFleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 3600})
		if err != nil {
			t.Fatal(err)
		}
		mals = append(mals, r.Node.NodeId)
	}
	_, err := malFleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 3600})
	wantCode(t, "a third node of one certificate", err, codes.ResourceExhausted, "the client certificate sepal:node:mallory holds 2 nodes, all online")
	for range 4 { // 3 more of the burst of 6, then one past it
		_, err = malFleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 3600})
	}
	wantCode(t, "past the burst of one certificate", err, codes.ResourceExhausted, "too many registrations from sepal:node:mallory")
	c, err := carol.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 3600}) // same address, her own bucket
	if err != nil {
		t.Fatal(err)
	}
	run, err := driver.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	now := float64(time.Now().UnixMicro()) / 1e6
	var tasks []string
	for _, n := range append(mals, c.Node.NodeId) {
		r, err := driver.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{taskIns(run.RunId, n, now)}})
		if err != nil {
			t.Fatal(err)
		}
		tasks = append(tasks, r.TaskIds[0])
	}

	m.revoke(t, mal.Leaf.SerialNumber)
	if err := m.src.Reload(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		r, err := driver.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{TaskIds: tasks})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.TaskResList) == 2 {
			for _, res := range r.TaskResList {
				if res.Task.Error.GetCode() != state.NodeUnavailableCode {
					t.Errorf("result %v, want NODE_UNAVAILABLE", res.Task)
				}
			}
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("%d results 5 s after the revocation, want mallory's 2 NODE_UNAVAILABLE", len(r.TaskResList))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("mallory's tasks answered NODE_UNAVAILABLE %v after the CRL was loaded", time.Since(start).Round(time.Millisecond))
	nodes, err := driver.GetNodes(ctx, &flwrproto.GetNodesRequest{RunId: run.RunId})
	if err != nil || len(nodes.Nodes) != 1 || nodes.Nodes[0].NodeId != c.Node.NodeId {
		t.Errorf("GetNodes after the revocation: %v %v, want carol's node alone", nodes, err)
	}
	if got := m.sl.NodeLimitStats().Revoked; got != 2 {
		t.Errorf("%d nodes revoked counted, want 2", got)
	}
	if n := strings.Count(m.logs.String(), "reason=certificate_revoked identity=sepal:node:mallory"); n != 2 {
		t.Errorf("%d lines for the nodes revoked, want 2:\n%s", n, m.logs)
	}

	// A new certificate of the same name: its own serial, and the
	// identity's count starts afresh (its bucket does not).
	newConn, _ := m.conn(t, m.link.Fleet, transport.RoleNode, "mallory")
	_, err = flwrproto.NewFleetClient(newConn).CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	wantCode(t, "the same name's new certificate, its bucket empty", err, codes.ResourceExhausted, "too many registrations from sepal:node:mallory")
	m.sl.nodes.rates.mu.Lock()
	delete(m.sl.nodes.rates.buckets, "sepal:node:mallory")
	m.sl.nodes.rates.mu.Unlock()
	for i := range 2 {
		if _, err := flwrproto.NewFleetClient(newConn).CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
			t.Errorf("node %d of the same name's new certificate: %v", i, err)
		}
	}
}
