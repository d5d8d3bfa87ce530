package superlink

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/statetest"
	"github.com/sepal-fl/sepal/superlink/internal/wire"
	"github.com/sepal-fl/sepal/transport"
)

// startLimited runs a SuperLink with limits l over TLS and returns the
// fixture, as start does.
func startLimited(t testing.TB, l Limits) *fixture { return startLimitedWith(t, l, nil) }

// startLimitedWith is startLimited with the wire layer's configuration
// changed by tweak (the guard's waits, shortened for a test).
func startLimitedWith(t testing.TB, l Limits, tweak func(*wire.Config)) *fixture {
	t.Helper()
	creds, caFile := testCerts(t)
	logs := &testkit.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sl := New(Options{State: memstate.New(memstate.Options{Logger: log}), Logger: log, Limits: l, wireTest: tweak})
	link := testkit.Serve(t, serveOn(sl, creds))
	clock := &statetest.Clock{}
	clock.Set(time.Now())
	f := &fixture{sl: sl, logs: logs, fleetAddr: link.Fleet, driverAddr: link.Driver, caFile: caFile, clock: clock}
	f.fleetConn = dial(t, f.fleetAddr, caFile)
	f.driverConn = dial(t, f.driverAddr, caFile)
	f.fleet = flwrproto.NewFleetClient(f.fleetConn)
	f.driver = flwrproto.NewDriverClient(f.driverConn)
	t.Cleanup(func() {
		f.fleetConn.Close()
		f.driverConn.Close()
	})
	return f
}

// padded returns m with an unknown field of n bytes appended, so that a
// request of a small method can be made as large as wanted.
func padded[M proto.Message](m M, n int) M {
	b := protowire.AppendTag(nil, 999, protowire.BytesType)
	b = protowire.AppendBytes(b, make([]byte, n))
	m.ProtoReflect().SetUnknown(b)
	return m
}

// tlsConfig is a client TLS config trusting the fixture's CA.
func (f *fixture) tlsConfig(t testing.TB) *tls.Config {
	t.Helper()
	cfg, err := transport.ClientConfig(transport.ClientOptions{RootCertificates: f.caFile})
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "localhost"
	return cfg
}

// waitInflight waits until the budget holds want bytes.
func waitInflight(t testing.TB, sl *SuperLink, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := sl.LimitStats().InflightBytes
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("in-flight bytes = %d, want %d", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Requests of methods without parameters are refused past 1 MiB with
// ResourceExhausted and a message naming the limit, on the same
// connection as calls that go on working (the client's HPACK decoder stays
// in step with the guard's answers); at 1 MiB they pass.
func TestSmallMethodsRefusedPastLimit(t *testing.T) {
	f := startLimited(t, Limits{})
	ctx := ctxT(t)
	big := SmallMessageSize + 1
	for round := range 3 {
		_, err := f.fleet.CreateNode(ctx, padded(&flwrproto.CreateNodeRequest{PingInterval: 30}, big))
		wantCode(t, "CreateNode", err, codes.ResourceExhausted, "CreateNode takes at most 1 MiB")
		_, err = f.fleet.Ping(ctx, padded(&flwrproto.PingRequest{}, big))
		wantCode(t, "Ping", err, codes.ResourceExhausted, "Ping takes at most 1 MiB")
		_, err = f.fleet.PullTaskIns(ctx, padded(&flwrproto.PullTaskInsRequest{}, big))
		wantCode(t, "PullTaskIns", err, codes.ResourceExhausted, "PullTaskIns takes at most 1 MiB")
		_, err = f.fleet.DeleteNode(ctx, padded(&flwrproto.DeleteNodeRequest{}, big))
		wantCode(t, "DeleteNode", err, codes.ResourceExhausted, "only PushTaskRes and PushTaskIns carry parameters")
		_, err = f.driver.CreateRun(ctx, padded(&flwrproto.CreateRunRequest{}, big))
		wantCode(t, "CreateRun", err, codes.ResourceExhausted, "CreateRun takes at most 1 MiB")
		_, err = f.driver.GetNodes(ctx, padded(&flwrproto.GetNodesRequest{}, big))
		wantCode(t, "GetNodes", err, codes.ResourceExhausted, "GetNodes takes at most 1 MiB")
		_, err = f.driver.PullTaskRes(ctx, padded(&flwrproto.PullTaskResRequest{}, big))
		wantCode(t, "PullTaskRes", err, codes.ResourceExhausted, "PullTaskRes takes at most 1 MiB")
		// The same connections still serve, headers and all.
		n, err := f.fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
		if err != nil {
			t.Fatalf("round %d: CreateNode after the refusals: %v", round, err)
		}
		// Exactly the limit passes (the unknown field is skipped).
		req := &flwrproto.PingRequest{Node: n.Node, PingInterval: 30}
		base := proto.Size(req) + protowire.SizeTag(999)
		pad := SmallMessageSize - base - protowire.SizeVarint(uint64(SmallMessageSize-base))
		req = padded(req, pad)
		if s := proto.Size(req); s != SmallMessageSize {
			t.Fatalf("test request is %d bytes", s)
		}
		if r, err := f.fleet.Ping(ctx, req); err != nil || !r.Success {
			t.Fatalf("a Ping of exactly 1 MiB: %v %v", r, err)
		}
		f.healthy(t)
	}
	if st := f.sl.LimitStats(); st.Refused[RefusedTooLarge] != 21 || st.InflightBytes != 0 {
		t.Errorf("stats after the refusals: %+v", st)
	}
	if n := strings.Count(f.logs.String(), `level=WARN msg="request refused by a limit"`); n != 2 {
		t.Errorf("%d warnings, want one per connection (2):\n%s", n, f.logs.String())
	}
}

// h2 dials the fixture's Fleet API with the raw HTTP/2 client.
func (f *fixture) h2(t testing.TB, addr string) *testkit.H2Conn {
	t.Helper()
	c, err := testkit.DialH2(ctxT(t), addr, f.tlsConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// sendPart starts a message on a new stream of method declaring declared
// bytes and sends sent bytes of it (zeros).
func sendPart(t testing.TB, c *testkit.H2Conn, method string, declared uint32, sent int64) *testkit.H2Stream {
	t.Helper()
	s, err := c.Open(method)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctxT(t), s, declared, nil, sent, false); err != nil {
		t.Fatalf("sending on stream %d: %v", s.ID, err)
	}
	return s
}

// waitDone waits for the server to end s and returns what it answered.
func waitDone(t testing.TB, c *testkit.H2Conn, s *testkit.H2Stream) testkit.H2Stream {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("stream %d: no answer", s.ID)
	}
	return c.Result(s)
}

// The budget holds the declared size of the requests being received from
// their prefix on: a push that does not fit beside one in progress within
// the peer's share (three quarters) is refused at once (retry), one larger
// than a peer may ever send is refused as such, and once the first is
// answered the budget is free again. Pings still pass in the headroom kept
// for small requests.
func TestBudgetAdmitsByDeclaredSize(t *testing.T) {
	f := startLimited(t, Limits{MaxInflightBytes: 64 << 20})
	c := f.h2(t, f.fleetAddr)
	a := sendPart(t, c, mPushTaskRes, 40<<20, 1<<20)
	waitInflight(t, f.sl, 40<<20)

	b := sendPart(t, c, mPushTaskRes, 30<<20, 100)
	r := waitDone(t, c, b)
	if r.Status != codes.ResourceExhausted || !strings.Contains(r.Message, "refused for now: this peer's requests hold 40 MiB") || !strings.Contains(r.Message, "in-flight budget of 64 MiB, its share") {
		t.Fatalf("a push beside one in progress, past the peer's share: %s", r.String())
	}
	big := sendPart(t, c, mPushTaskRes, 49<<20, 100)
	if r := waitDone(t, c, big); r.Status != codes.ResourceExhausted || !strings.Contains(r.Message, "takes requests of at most 48 MiB from one peer") {
		t.Fatalf("a push larger than the budget allows: %s", r.String())
	}
	// Small requests use the headroom: 23 MiB are left of the 64, all of
	// them for small requests only.
	ctx := ctxT(t)
	for range 3 {
		if _, err := f.fleet.Ping(ctx, &flwrproto.PingRequest{Node: &flwrproto.Node{NodeId: 1}, PingInterval: 30}); err != nil {
			t.Fatalf("a Ping while the budget is taken: %v", err)
		}
	}
	if st := f.sl.LimitStats(); st.InflightBytes != 40<<20 || st.Refused[RefusedPeerShare] != 1 || st.Refused[RefusedTooLarge] != 1 || st.MaxInflightBytes != 64<<20 {
		t.Fatalf("stats: %+v", st)
	}
	// The rest of the first push: 40 MiB of zeros are no PushTaskRes, the
	// handler refuses it, and the budget is free.
	if err := c.Continue(ctx, a, 39<<20, true); err != nil {
		t.Fatal(err)
	}
	if r := waitDone(t, c, a); r.Status == codes.ResourceExhausted || !r.Trailers {
		t.Fatalf("the admitted push: %s", r.String())
	}
	waitInflight(t, f.sl, 0)
	c2 := sendPart(t, c, mPushTaskRes, 45<<20, 100)
	waitInflight(t, f.sl, 45<<20)
	if err := c.Reset(c2); err != nil {
		t.Fatal(err)
	}
	waitInflight(t, f.sl, 0) // cut short: released at once
	f.healthy(t)
}

// waitClosed waits for the server to close c.
func waitClosed(t testing.TB, c *testkit.H2Conn, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for c.Err() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the connection is still open after %v", d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A request admitted into the budget that then receives nothing for the
// stall timeout costs its connection, and the budget is free again; a
// connection that ends releases what it held.
func TestStalledRequestClosesConnection(t *testing.T) {
	f := startLimited(t, Limits{StallTimeout: 300 * time.Millisecond})
	c := f.h2(t, f.fleetAddr)
	sendPart(t, c, mPushTaskRes, 10<<20, 1<<20)
	waitInflight(t, f.sl, 10<<20)
	begin := time.Now()
	waitClosed(t, c, 5*time.Second)
	if took := time.Since(begin); took < 200*time.Millisecond {
		t.Errorf("closed after %v, before the stall timeout", took)
	}
	waitInflight(t, f.sl, 0)
	if st := f.sl.LimitStats(); closedTotal(st) != 1 {
		t.Errorf("stats: %+v", st)
	}
	if !strings.Contains(f.logs.String(), "received nothing for 300ms") {
		t.Errorf("no log line saying why:\n%s", f.logs.String())
	}

	// A peer that goes away mid-request.
	c2 := f.h2(t, f.fleetAddr)
	sendPart(t, c2, mPushTaskRes, 10<<20, 1<<20)
	waitInflight(t, f.sl, 10<<20)
	c2.Close()
	waitInflight(t, f.sl, 0)
	f.healthy(t)
}

// A second message in one unary call starting mid-frame cannot be
// withheld: when it is too large the connection is closed; when it fits,
// gRPC answers its cardinality error. Other connections are untouched.
func TestSecondMessageInUnaryCall(t *testing.T) {
	f := startLimited(t, Limits{})
	msg := func(declared uint32, body int) []byte {
		m := make([]byte, 5+body)
		binary.BigEndian.PutUint32(m[1:], declared)
		return m
	}
	c := f.h2(t, f.fleetAddr)
	s, err := c.Open(mCreateNode)
	if err != nil {
		t.Fatal(err)
	}
	second := msg(9, 9)
	second[5] = 0x09 // ping_interval, a double: 0
	if err := c.WriteRaw(s, append(msg(0, 0), second...), true); err != nil {
		t.Fatal(err)
	}
	if r := waitDone(t, c, s); r.Status != codes.Internal || !strings.Contains(r.Message, "cardinality") {
		t.Fatalf("two small messages: %s", r.String())
	}
	s, err = c.Open(mCreateNode)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRaw(s, append(msg(0, 0), msg(2<<20, 100)...), false); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c, 5*time.Second)
	if !strings.Contains(f.logs.String(), "a second message in one CreateNode call had to be refused") {
		t.Errorf("no log line saying why:\n%s", f.logs.String())
	}
	waitInflight(t, f.sl, 0)
	f.healthy(t)
}

// Each API holds at most MaxConnections connections: the next one waits
// (its handshake does not complete) until one closes.
func TestMaxConnections(t *testing.T) {
	f := startLimited(t, Limits{MaxConnections: 3})
	// The fixture's gRPC clients hold one connection to each API.
	f.healthy(t)
	c1 := f.h2(t, f.fleetAddr)
	c2 := f.h2(t, f.fleetAddr)
	_ = c2
	if st := f.sl.LimitStats(); st.Connections != 4 {
		t.Fatalf("connections: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if c, err := testkit.DialH2(ctx, f.fleetAddr, f.tlsConfig(t)); err == nil {
		c.Close()
		t.Fatal("a fourth connection to the Fleet API completed its handshake")
	}
	c1.Close()
	c3 := f.h2(t, f.fleetAddr)
	s, err := c3.Open("/grpc.health.v1.Health/Check")
	if err != nil {
		t.Fatal(err)
	}
	if err := c3.Send(ctxT(t), s, 0, nil, 0, true); err != nil {
		t.Fatal(err)
	}
	if r := waitDone(t, c3, s); r.Status != codes.OK {
		t.Fatalf("health check on the connection that waited: %s", r.String())
	}
}

// A connection without a call for IdleTimeout is closed (gRPC sends
// GOAWAY), and one that does not finish its TLS handshake within
// HandshakeTimeout too.
func TestIdleAndHandshakeTimeouts(t *testing.T) {
	f := startLimited(t, Limits{IdleTimeout: 300 * time.Millisecond, HandshakeTimeout: 300 * time.Millisecond})
	c := f.h2(t, f.fleetAddr)
	waitClosed(t, c, 5*time.Second)

	raw, err := net.Dial("tcp", f.fleetAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	begin := time.Now()
	if _, err := raw.Read(make([]byte, 1)); err == nil || time.Since(begin) > 3*time.Second {
		t.Fatalf("a connection that never sends its ClientHello: read %v after %v, want the server to close it", err, time.Since(begin))
	}
}

// closedTotal is the number of connections closed by a limit.
func closedTotal(st LimitStats) uint64 {
	var n uint64
	for _, v := range st.Closed {
		n += v
	}
	return n
}
