package e2e

import (
	"context"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/statetest"
	"github.com/sepal-fl/sepal/superlink"
)

// Limits of TestAttack129Peers' SuperLink, small so that the attacks
// reach them within seconds.
const (
	peersMaxStreams  = 24 // --max-log-streams
	peersStreamsPeer = 4  // --max-log-streams-per-peer
	peersMaxNodes    = 40 // --max-nodes
	peersRegBurst    = 20 // --node-registration-burst
	peersRegRate     = 5  // --node-registration-rate
)

// TestAttack129Peers: four attacks of peers on the Flower 1.29.0 surface,
// against the real flower-superlink (small limits, above), while a
// legitimate Go ServerApp runs rounds of a 1 MiB array with two Go nodes
// on 127.0.0.1:
//
//   - StreamLogs held open by many clients: 8 peers open 6 log streams
//     each on the legitimate run. Each peer holds at most 4, all at most
//     24; the others are refused with ResourceExhausted, and once the
//     attackers close theirs a stream from 127.0.0.1 is served again.
//   - Registration floods with fresh keys: 6 peers register (and most
//     activate) a new key after another for 8 s. Each peer gets at most
//     its burst and rate; the nodes never exceed --max-nodes, and the
//     legitimate nodes keep their places.
//   - Replayed signatures: a node's own signature used twice, the same
//     signature with s replaced by n-s, a legitimate node's signature
//     replayed from another address to pull its messages, and 4 peers
//     replaying for 5 s: every replay is refused (Unauthenticated), and
//     past a peer's --node-auth-failure-burst and rate before its
//     signature is verified (Unavailable).
//   - Heartbeats with out-of-range intervals (0, 9.99, -1, NaN, ±Inf,
//     1800.5, 1e308): refused with InvalidArgument, by SendNodeHeartbeat
//     and ActivateNode alike; the node keeps its interval, and the node
//     activated with none stays unactivated.
//
// Every round of the legitimate run finishes with both nodes' replies.
func TestAttack129Peers(t *testing.T) {
	needE2E(t)
	t.Parallel()
	b := newBed129(t, "--max-log-streams", fmt.Sprint(peersMaxStreams), "--max-log-streams-per-peer", fmt.Sprint(peersStreamsPeer),
		"--max-nodes", fmt.Sprint(peersMaxNodes), "--node-registration-burst", fmt.Sprint(peersRegBurst), "--node-registration-rate", fmt.Sprint(peersRegRate))
	legit := b.startLegit()
	legit.rounds(0, 30*time.Second)
	waitLegit(t, legit, 2, 30*time.Second)

	t.Run("log streams", func(t *testing.T) { attackLogStreams(t, b, legit) })
	t.Run("replayed signatures", func(t *testing.T) { attackReplays(t, b, legit) })
	t.Run("heartbeat intervals", func(t *testing.T) { attackIntervals(t, b, legit) })
	// Last: the flood's nodes, online, hold every place until it ends.
	t.Run("registration flood", func(t *testing.T) { attackRegistrations(t, b, legit) })

	legit.stop()
	rounds, longest, err := legit.report()
	if err != nil {
		t.Fatalf("the legitimate run failed: %v", err)
	}
	t.Logf("legitimate run: %d rounds, the longest %.2f s", rounds, longest.Seconds())
	if rounds < 10 {
		t.Errorf("the legitimate run finished %d rounds during the attacks, want 10 or more", rounds)
	}
}

// attackLogStreams opens 6 log streams from each of 8 peers.
func attackLogStreams(t *testing.T, b *bed129, legit *legit129) {
	m := startMeter(t, b.pid)
	const peers, each = 8, 6
	var (
		mu      sync.Mutex
		refused = map[int]int{} // by peer
		other   []error
		cancels []context.CancelFunc
	)
	var wg sync.WaitGroup
	for p := range peers {
		cc := b.controlFrom(attackerIP(p))
		for range each {
			sctx, cancel := context.WithCancel(context.Background())
			cancels = append(cancels, cancel)
			st, err := cc.StreamLogs(sctx, &flwr129.StreamLogsRequest{RunId: legit.app.run})
			if err != nil {
				t.Fatalf("StreamLogs from %s: %v", attackerIP(p), err)
			}
			wg.Go(func() {
				for {
					_, err := st.Recv()
					if err == nil {
						continue
					}
					mu.Lock()
					switch {
					case sctx.Err() != nil:
					case status.Code(err) == codes.ResourceExhausted:
						refused[p]++
					default:
						other = append(other, err)
					}
					mu.Unlock()
					return
				}
			})
		}
	}
	// A refusal comes at once; wait for every one.
	time.Sleep(2 * time.Second)
	mu.Lock()
	total := 0
	for p := range peers {
		total += refused[p]
		if open := each - refused[p]; open > peersStreamsPeer {
			t.Errorf("peer %s holds %d log streams open, want at most %d", attackerIP(p), open, peersStreamsPeer)
		}
	}
	open := peers*each - total
	errs := other
	mu.Unlock()
	c := m.read(t)
	for _, err := range errs {
		t.Errorf("a log stream ended with %v, want ResourceExhausted or still open", err)
	}
	if open != peersMaxStreams {
		t.Errorf("%d log streams open of %d asked, want --max-log-streams %d", open, peers*each, peersMaxStreams)
	}
	summary129(t, "StreamLogs held open by many clients", c, legitRounds(legit), longestRound(legit),
		fmt.Sprintf("%d streams asked from %d peers, %d open, %d refused (ResourceExhausted)", peers*each, peers, open, total))
	for _, cancel := range cancels {
		cancel()
	}
	wg.Wait()
	// The slots are given back: a stream from 127.0.0.1 is served.
	deadline := time.Now().Add(5 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := b.controlFrom("127.0.0.1").StreamLogs(sctx, &flwr129.StreamLogsRequest{RunId: legit.app.run})
		if err == nil {
			_, err = st.Recv()
		}
		cancel()
		if status.Code(err) == codes.DeadlineExceeded || err == nil {
			break // served: open until the deadline, or the run's logs
		}
		if time.Now().After(deadline) {
			t.Errorf("a log stream from 127.0.0.1 once the attackers closed theirs: %v", err)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// attackRegistrations registers fresh keys from 6 peers for 8 s.
func attackRegistrations(t *testing.T, b *bed129, legit *legit129) {
	m := startMeter(t, b.pid)
	const peers = 6
	const d = 8 * time.Second
	ctx, stop := attackFor(d)
	defer stop()
	var regs tally
	accepted := make([]int, peers)
	var wg sync.WaitGroup
	began := time.Now()
	for p := range peers {
		fleet := b.node(attackerIP(10 + p)).fleet
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				n := nodeOn(t, fleet)
				_, err := n.fleet.RegisterNode(n.signed(ctx), &flwr129.RegisterNodeFleetRequest{PublicKey: n.pem})
				if ctx.Err() != nil {
					return
				}
				regs.add(err, "too many registrations", "every place for a node is taken")
				if err != nil {
					continue
				}
				accepted[p]++
				if i%5 != 0 { // most activate: online, they hold their place
					_, err = n.fleet.ActivateNode(n.signed(ctx), &flwr129.ActivateNodeRequest{PublicKey: n.pem, HeartbeatInterval: 60})
					if ctx.Err() == nil {
						regs.add(err, "every place for a node is taken")
					}
				}
			}
		})
	}
	peak := 0
	cc := b.controlFrom("127.0.0.1")
	for ctx.Err() == nil {
		peak = max(peak, countNodes(t, cc, legit))
		time.Sleep(500 * time.Millisecond)
	}
	wg.Wait()
	took := time.Since(began)
	peak = max(peak, countNodes(t, cc, legit))
	c := m.read(t)
	if peak > peersMaxNodes {
		t.Errorf("%d nodes registered at once, want at most --max-nodes %d", peak, peersMaxNodes)
	}
	most := peersRegBurst + int(math.Ceil(peersRegRate*took.Seconds()))
	for p, n := range accepted {
		if n > most {
			t.Errorf("peer %s registered %d nodes in %.1f s, want at most %d (burst %d, %d a second)", attackerIP(10+p), n, took.Seconds(), most, peersRegBurst, peersRegRate)
		}
	}
	if regs.get("ResourceExhausted too many registrations") == 0 {
		t.Errorf("no registration refused for its peer's rate: %s", &regs)
	}
	summary129(t, "registration floods with fresh keys", c, legitRounds(legit), longestRound(legit),
		fmt.Sprintf("%d s from %d peers, nodes at most %d at once; %s", int(d.Seconds()), peers, peak, &regs))
}

// countNodes returns the nodes registered (ListNodes, not unregistered)
// and fails the test unless the legitimate nodes are among them, online.
func countNodes(t *testing.T, cc flwr129.ControlClient, legit *legit129) int {
	t.Helper()
	r, err := cc.ListNodes(context.Background(), &flwr129.ListNodesRequest{})
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	n := 0
	status := map[uint64]string{}
	for _, ni := range r.GetNodesInfo() {
		status[ni.GetNodeId()] = ni.GetStatus()
		if ni.GetStatus() != state.NodeUnregistered {
			n++
		}
	}
	for _, l := range legit.nodes {
		if status[l.id] != state.NodeOnline {
			t.Errorf("legitimate node %d is %q, want %q", l.id, status[l.id], state.NodeOnline)
		}
	}
	return n
}

// attackReplays replays signatures: the attacker's own, malleated, and a
// legitimate node's.
func attackReplays(t *testing.T, b *bed129, legit *legit129) {
	m := startMeter(t, b.pid)
	ctx := context.Background()
	a := b.node(attackerIP(20))
	if err := a.join(ctx, 30); err != nil {
		t.Fatal(err)
	}
	var replays tally
	replayed := func(what string, err error) {
		t.Helper()
		replays.add(err, "failed node authentication")
		if status.Code(err) != codes.Unauthenticated && !(status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "failed node authentication")) {
			t.Errorf("%s: %v, want Unauthenticated (or, past the peer's --node-auth-failure-burst, Unavailable unverified)", what, err)
		}
	}
	// Its own signature, twice.
	ts, sig := a.sign()
	if _, err := a.fleet.SendNodeHeartbeat(a.withSignature(ctx, ts, sig), &flwr129.SendNodeHeartbeatRequest{Node: a.self(), HeartbeatInterval: 30}); err != nil {
		t.Fatalf("a heartbeat signed once: %v", err)
	}
	_, err := a.fleet.PullMessages(a.withSignature(ctx, ts, sig), &flwr129.PullMessagesRequest{Node: a.self()})
	replayed("a signature used again", err)
	// The same with s replaced by n-s: as valid, without the key.
	_, err = a.fleet.PullMessages(a.withSignature(ctx, ts, statetest.Malleate(t, sig)), &flwr129.PullMessagesRequest{Node: a.self()})
	replayed("a signature used again as (r, n-s)", err)
	// A legitimate node's signature, leaked once used, replayed from the
	// attacker's address to take the node's messages.
	victim := &node129{t: t, key: legit.nodes[0].key, pem: legit.nodes[0].pem, id: legit.nodes[0].id, fleet: a.fleet}
	vts, vsig := victim.sign()
	if _, err := legit.nodes[0].fleet.SendNodeHeartbeat(victim.withSignature(ctx, vts, vsig), &flwr129.SendNodeHeartbeatRequest{Node: victim.self(), HeartbeatInterval: 30}); err != nil {
		t.Fatalf("the legitimate node's heartbeat: %v", err)
	}
	_, err = a.fleet.PullMessages(victim.withSignature(ctx, vts, vsig), &flwr129.PullMessagesRequest{Node: victim.self()})
	replayed("a legitimate node's signature replayed from another address", err)
	// 4 peers replay both for 5 s.
	rctx, stop := attackFor(5 * time.Second)
	defer stop()
	var wg sync.WaitGroup
	for p := range 4 {
		fleet := b.node(attackerIP(21 + p)).fleet
		wg.Go(func() {
			for i := 0; rctx.Err() == nil; i++ {
				n, ts, sig := a, ts, sig
				if i%2 == 1 {
					n, ts, sig = victim, vts, vsig
				}
				_, err := fleet.PullMessages(n.withSignature(rctx, ts, sig), &flwr129.PullMessagesRequest{Node: n.self()})
				if rctx.Err() == nil {
					replayed("a replay", err)
				}
			}
		})
	}
	wg.Wait()
	c := m.read(t)
	summary129(t, "replayed signatures", c, legitRounds(legit), longestRound(legit), fmt.Sprintf("replays: %s", &replays))
	// Each replaying peer gets its burst of failures verified, then its
	// rate: the rest are refused before the signature is checked.
	verified := replays.get("Unauthenticated")
	if most := 3 + 4*int(superlink.DefaultAuthFailureBurst+superlink.DefaultAuthFailureRate*c.took.Seconds()); verified > most {
		t.Errorf("%d replays verified, want at most %d: 3 from the node's address, and 4 peers' --node-auth-failure-burst %d and rate %d for %.1f s",
			verified, most, superlink.DefaultAuthFailureBurst, superlink.DefaultAuthFailureRate, c.took.Seconds())
	}
	if n := b.callsRefused(superlink.RefusedAuthFailures); replays.get("Unavailable failed node authentication") == 0 || n < float64(replays.get("Unavailable failed node authentication")) {
		t.Errorf("replays refused unverified: %s; counted by sepal_node_calls_refused_total{reason=%q}: %.0f; want some, all counted", &replays, superlink.RefusedAuthFailures, n)
	}
}

// attackIntervals sends heartbeats and activations with intervals out of
// Flower's bounds.
func attackIntervals(t *testing.T, b *bed129, legit *legit129) {
	m := startMeter(t, b.pid)
	ctx := context.Background()
	a := b.node(attackerIP(30))
	if err := a.join(ctx, 30); err != nil {
		t.Fatal(err)
	}
	fresh := nodeOn(t, a.fleet)
	if _, err := fresh.fleet.RegisterNode(fresh.signed(ctx), &flwr129.RegisterNodeFleetRequest{PublicKey: fresh.pem}); err != nil {
		t.Fatal(err)
	}
	var refused tally
	bad := []float64{0, state.HeartbeatMinInterval - 0.01, -1, math.NaN(), math.Inf(1), math.Inf(-1), state.HeartbeatMaxInterval + 0.5, 1e308}
	for _, iv := range bad {
		_, err := a.fleet.SendNodeHeartbeat(a.signed(ctx), &flwr129.SendNodeHeartbeatRequest{Node: a.self(), HeartbeatInterval: iv})
		refused.add(err)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("SendNodeHeartbeat with interval %v: %v, want InvalidArgument", iv, err)
		}
		_, err = fresh.fleet.ActivateNode(fresh.signed(ctx), &flwr129.ActivateNodeRequest{PublicKey: fresh.pem, HeartbeatInterval: iv})
		refused.add(err)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("ActivateNode with interval %v: %v, want InvalidArgument", iv, err)
		}
	}
	r, err := b.controlFrom("127.0.0.1").ListNodes(ctx, &flwr129.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, ni := range r.GetNodesInfo() {
		switch ni.GetNodeId() {
		case a.id:
			seen++
			if ni.GetHeartbeatInterval() != 30 || ni.GetOnlineUntil() > nowSeconds()+2*state.HeartbeatMaxInterval {
				t.Errorf("the attacker's node: interval %v, online until %v (now %v): want 30 and the time of its last good heartbeat's",
					ni.GetHeartbeatInterval(), ni.GetOnlineUntil(), nowSeconds())
			}
		default:
			if string(ni.GetPublicKey()) == string(fresh.pem) {
				seen++
				if ni.GetStatus() != state.NodeRegistered {
					t.Errorf("the node activated only with intervals out of bounds is %q, want %q", ni.GetStatus(), state.NodeRegistered)
				}
			}
		}
	}
	if seen != 2 {
		t.Errorf("ListNodes shows %d of the attacker's 2 nodes", seen)
	}
	c := m.read(t)
	summary129(t, "heartbeats with out-of-range intervals", c, legitRounds(legit), longestRound(legit),
		fmt.Sprintf("%d intervals out of bounds, by heartbeat and activation: %s", len(bad), strings.TrimSpace(refused.String())))
}
