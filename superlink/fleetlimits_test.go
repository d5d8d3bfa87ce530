package superlink

import (
	"context"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// fleetFrom is a Fleet client of l connecting from the loopback address
// src.
func (l *link129) fleetFrom(t *testing.T, src string) flwr129.FleetClient {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	cc, err := grpc.NewClient(l.addr, append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return flwr129.NewFleetClient(cc)
}

// fakeClock is a clock for a rate limiter that moves only when told.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Unix(1795638840, 0).UnixNano())
	return c
}

func (c *fakeClock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) add(d time.Duration) { c.ns.Add(int64(d)) }

// clockOf gives r a fake clock, before any call uses it.
func clockOf(r *rateLimiter) *fakeClock {
	c := newFakeClock()
	r.now = c.now
	return c
}

func heartbeat(t *testing.T, fleet flwr129.FleetClient, s *signer, id uint64) error {
	_, err := fleet.SendNodeHeartbeat(s.ctx(t), &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: id}, HeartbeatInterval: 30})
	return err
}

func wantRefused(t *testing.T, what string, err error, msg string) {
	t.Helper()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("%s: %v, want Unavailable with %q", what, err, msg)
	}
}

// TestAuthFailureRate: bad signatures from one address take that
// address's tokens; past them its signed calls are refused with
// Unavailable unverified, a valid one too, while a node calling from
// another address goes on; a key of no node activating counts as a
// failure; the tokens come back at the rate.
func TestAuthFailureRate(t *testing.T) {
	l := serveLink129(t, Options{NodeLimits: NodeLimits{AuthFailureBurst: 3, AuthFailureRate: 0.5}})
	clock := clockOf(l.sl.nodes.failures)
	good := newSigner(t)
	id := l.join(t, good)
	bad := newSigner(t)
	bad.pem = good.pem
	evil := l.fleetFrom(t, "127.0.0.2")
	for i := range 3 {
		if err := heartbeat(t, evil, bad, id); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("bad signature %d: %v, want Unauthenticated", i, err)
		}
	}
	wantRefused(t, "a fourth bad signature", heartbeat(t, evil, bad, id), "too many calls from 127.0.0.2 failed node authentication")
	// Refused before verifying: the node's own valid signature from the
	// attacker's address is refused too.
	wantRefused(t, "a valid signature from the address", heartbeat(t, evil, good, id), "failed node authentication")
	for i := range 5 {
		if err := heartbeat(t, l.fleet, good, id); err != nil {
			t.Fatalf("heartbeat %d of the node from 127.0.0.1: %v", i, err)
		}
	}
	clock.add(2 * time.Second)
	if err := heartbeat(t, evil, good, id); err != nil {
		t.Fatalf("a valid call from 127.0.0.2 once a token came back: %v", err)
	}
	if err := heartbeat(t, evil, bad, id); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a bad signature once a token came back: %v, want it verified and Unauthenticated", err)
	}
	wantRefused(t, "the next bad signature", heartbeat(t, evil, bad, id), "failed node authentication")

	// A key of no node has no business activating.
	stranger, other := newSigner(t), l.fleetFrom(t, "127.0.0.3")
	for i := range 3 {
		_, err := other.ActivateNode(stranger.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: stranger.pem, HeartbeatInterval: 30})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("ActivateNode %d of a key of no node: %v, want FailedPrecondition", i, err)
		}
	}
	_, err := other.ActivateNode(stranger.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: stranger.pem, HeartbeatInterval: 30})
	wantRefused(t, "a fourth ActivateNode of a key of no node", err, "failed node authentication")
	if got := l.sl.NodeLimitStats().Refused[RefusedAuthFailures]; got != 4 {
		t.Errorf("%d refusals of %s counted, want 4", got, RefusedAuthFailures)
	}
}

// TestNodeCallRate: a node's verified calls take its tokens (by node id,
// not address); past them its calls are refused with Unavailable, another
// node's are not, and calls that claim its id without its key take none;
// the tokens come back at the rate.
func TestNodeCallRate(t *testing.T) {
	l := serveLink129(t, Options{NodeLimits: NodeLimits{CallBurst: 5, CallRate: 1}})
	clock := clockOf(l.sl.nodes.calls)
	a, b := newSigner(t), newSigner(t)
	ida, idb := l.join(t, a), l.join(t, b) // ActivateNode took 1 each
	// Calls that claim a's id with another key's signatures, from
	// another address: refused, and a's tokens untouched.
	mallory := newSigner(t)
	evil := l.fleetFrom(t, "127.0.0.2")
	for range 10 {
		if err := heartbeat(t, evil, mallory, ida); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("a call claiming node a's id: %v, want Unauthenticated", err)
		}
	}
	for i := range 4 {
		if err := heartbeat(t, l.fleet, a, ida); err != nil {
			t.Fatalf("call %d of node a: %v", i, err)
		}
	}
	wantRefused(t, "node a past its burst", heartbeat(t, l.fleet, a, ida), "made too many calls")
	if err := heartbeat(t, l.fleet, b, idb); err != nil {
		t.Fatalf("node b, on the same address, while a is refused: %v", err)
	}
	clock.add(time.Second)
	if err := heartbeat(t, l.fleet, a, ida); err != nil {
		t.Fatalf("node a a second later: %v", err)
	}
	wantRefused(t, "node a again", heartbeat(t, l.fleet, a, ida), "made too many calls")
	if got := l.sl.NodeLimitStats().Refused[RefusedCallRate]; got != 2 {
		t.Errorf("%d refusals of %s counted, want 2", got, RefusedCallRate)
	}

	// A push costs 1 and the objects its tree names, at most the burst:
	// it passes once the bucket is full, and empties it.
	clock.add(time.Minute)
	tree := &flwr129.ObjectTree{ObjectId: "m", Children: []*flwr129.ObjectTree{{ObjectId: "r", Children: []*flwr129.ObjectTree{{ObjectId: "a"}, {ObjectId: "b"}}}}}
	if got := pushCost(&flwr129.PushMessagesRequest{MessageObjectTrees: []*flwr129.ObjectTree{tree}}); got != 5 {
		t.Errorf("the cost of a push naming 4 objects is %d, want 5", got)
	}
	_, err := l.fleet.PushMessages(a.ctx(t), &flwr129.PushMessagesRequest{Node: &flwr129.Node{NodeId: ida}, MessagesList: []*flwr129.Message{{}},
		MessageObjectTrees: []*flwr129.ObjectTree{{ObjectId: "m", Children: []*flwr129.ObjectTree{tree, tree}}}})
	if status.Code(err) == codes.Unavailable {
		t.Fatalf("a push costing more than the burst, the bucket full: %v", err)
	}
	wantRefused(t, "a call after it", heartbeat(t, l.fleet, a, ida), "made too many calls")
}

// TestRateLimiterCost: takeN takes n tokens, at most the burst; holds
// tells without taking, and holds for a key without a bucket; a rate of
// +Inf never refuses.
func TestRateLimiterCost(t *testing.T) {
	c := newFakeClock()
	r := newRateLimiter(10, 100, 0)
	r.now = c.now
	if !r.holds("a", 100) || !r.takeN("a", 60) || r.holds("a", 41) || !r.holds("a", 40) || r.takeN("a", 41) {
		t.Fatal("a bucket of 100 after taking 60 should hold 40 and no more")
	}
	if !r.holds("b", 1e9) || !r.takeN("b", 1e9) || r.holds("b", 1) {
		t.Fatal("a cost above the burst should pass on a full bucket and empty it")
	}
	c.add(time.Second)
	if !r.holds("b", 10) || r.holds("b", 11) || !r.takeN("b", 10) || r.takeN("b", 1) {
		t.Fatal("a second refills 10 tokens")
	}
	if len(r.buckets) != 2 {
		t.Errorf("%d buckets, want 2: holds makes none", len(r.buckets))
	}
	off := newRateLimiter(math.Inf(1), 1, 0)
	for range 10 {
		if !off.takeN("a", 5) || !off.holds("a", 5) {
			t.Fatal("a rate of +Inf refused")
		}
	}
}

// TestRefusalReasonsCounted: the node guard has a counter for every
// reason it counts.
func TestRefusalReasonsCounted(t *testing.T) {
	if len(refusalReasons) != nReasons {
		t.Fatalf("%d refusal reasons, %d counters: set nReasons", len(refusalReasons), nReasons)
	}
}
