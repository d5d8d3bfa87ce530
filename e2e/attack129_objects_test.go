package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink"
)

// randomID is an object id of nothing: 64 random hex digits.
func randomID() string {
	var b [32]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// bombReply is a reply of n to ins whose tree names objects objects that
// will never be pushed: Message > RecordDict > groups of up to
// MaxTreeChildren leaves.
func bombReply(n *node129, ins *flwr129.Message, objects int) (*flwr129.Message, *flwr129.ObjectTree) {
	md := ins.Metadata
	id := randomID()
	rd := &flwr129.ObjectTree{ObjectId: randomID()}
	for left := objects - 2; left > 0; {
		g := &flwr129.ObjectTree{ObjectId: randomID()}
		left--
		for k := 0; k < min(left, state.MaxTreeChildren-1); k++ {
			g.Children = append(g.Children, &flwr129.ObjectTree{ObjectId: randomID()})
		}
		left -= len(g.Children)
		rd.Children = append(rd.Children, g)
	}
	m := &flwr129.Message{Metadata: &flwr129.Metadata{RunId: md.RunId, MessageId: id, SrcNodeId: n.id, DstNodeId: state.SuperLinkNodeID,
		ReplyToMessageId: md.MessageId, GroupId: md.GroupId, Ttl: 300, MessageType: md.MessageType, CreatedAt: nowSeconds()}, Content: &flwr129.RecordDict{}}
	return m, &flwr129.ObjectTree{ObjectId: id, Children: []*flwr129.ObjectTree{rd}}
}

// tally counts the outcomes of an attacker's calls by code and a word of
// the message.
type tally struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *tally) add(err error, words ...string) {
	k := status.Code(err).String()
	for _, w := range words {
		if err != nil && strings.Contains(status.Convert(err).Message(), w) {
			k += " " + w
			break
		}
	}
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[k]++
	c.mu.Unlock()
}

// total is the number of outcomes counted.
func (c *tally) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

func (c *tally) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

func (c *tally) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ks []string
	for k, v := range c.n {
		ks = append(ks, fmt.Sprintf("%s: %d", k, v))
	}
	sort.Strings(ks)
	return strings.Join(ks, ", ")
}

// TestAttack129Objects: three attacks on objects, against the real
// flower-superlink (--push-timeout 10s), while a legitimate Go ServerApp
// runs rounds of a 1 MiB array with two Go nodes on 127.0.0.1, and
// addresses five attacker nodes (127.0.0.2) too:
//
//   - Objects named and never pushed: each attacker answers every message
//     with a tree of 16,374 objects it never pushes. A node owes at most
//     16,384 (its next replies are refused unread), a run 65,536 (the
//     node that owes the most makes room, or the reply is refused), and
//     10 s without a push forgets its reply and what it owed. Each such
//     push costs the node 16,375 call units (--node-call-rate, defaults):
//     past its burst and rate the node's calls are refused with
//     Unavailable before their signature is verified, so the pushes the
//     SuperLink takes up (verifies, and the state checks and holds) are
//     bounded.
//   - Objects pushed where the node has no business: into a run that sent
//     it nothing, objects of a legitimate node's reply (their ids leaked
//     to it), a confirmation of a legitimate node's message: all refused,
//     nothing stored, the legitimate replies intact.
//   - Trees that name millions of children: an object of 16,385 children,
//     a tree 5,000 deep, two replies in one push (InvalidArgument before
//     the state, or Unavailable before the signature once the node spent
//     its call units on such trees), trees of 100,000 and a million
//     children (past a reply's 2 MiB: refused unread).
//
// Every round of the legitimate run finishes with both nodes' replies.
func TestAttack129Objects(t *testing.T) {
	needE2E(t)
	t.Parallel()
	b := newBed129(t, "--push-timeout", "10s")
	legit := b.startLegit()
	ctx := context.Background()
	var attackers []*node129
	var ids []uint64
	for range 5 {
		n := b.node(attackerIP(0))
		if err := n.join(ctx, 30); err != nil {
			t.Fatal(err)
		}
		attackers = append(attackers, n)
		ids = append(ids, n.id)
	}
	legit.address(ids...)
	legit.rounds(0, 30*time.Second)
	waitLegit(t, legit, 2, 30*time.Second)

	// What the legitimate run costs alone, a round: the attackers' cost
	// is what the SuperLink spends above it.
	m := startMeter(t, b.pid)
	quiet := legitRounds(legit)
	time.Sleep(5 * time.Second)
	c := m.read(t)
	quiet = legitRounds(legit) - quiet
	perRound := c.cpu.Seconds() / float64(max(quiet, 1))

	// 1. Objects named and never pushed.
	m = startMeter(t, b.pid)
	began := legitRounds(legit)
	var bombs tally
	actx, stop := attackFor(25 * time.Second)
	var wg sync.WaitGroup
	for _, a := range attackers {
		wg.Go(func() {
			for actx.Err() == nil {
				ins, err := a.pull(actx)
				if err != nil || ins == nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				msg, tree := bombReply(a, ins, state.MaxTreeObjects-10)
				_, err = a.fleet.PushMessages(a.signed(actx), &flwr129.PushMessagesRequest{Node: a.self(), MessagesList: []*flwr129.Message{msg}, MessageObjectTrees: []*flwr129.ObjectTree{tree}})
				if actx.Err() == nil {
					bombs.add(err, state.LimitPendingPerNode, state.LimitPendingPerRun, "made too many calls")
				}
			}
		})
	}
	wg.Wait()
	stop()
	before := legitRounds(legit)
	c = m.read(t)
	attackCPU := c.cpu.Seconds() - perRound*float64(before-began)
	t.Logf("replies of 16,374 objects never pushed, 5 nodes for 25 s: %s", &bombs)
	if bombs.get("OK") == 0 || bombs.get("ResourceExhausted "+state.LimitPendingPerNode) == 0 {
		t.Errorf("want some replies taken and the next of a node refused for %s: %s", state.LimitPendingPerNode, &bombs)
	}
	if forgot := strings.Count(b.link.out.String(), "their objects were not pushed in time"); forgot == 0 {
		t.Error("no message forgotten for objects not pushed within --push-timeout")
	}
	refused := b.callsRefused(superlink.RefusedCallRate)
	summary129(t, "objects named and never pushed", c, before, longestRound(legit), fmt.Sprintf("%s; calls refused by %s: %.0f; the attackers' CPU %.2f s "+
		"(the legitimate run alone %.3f s a round, %d rounds in 5 s)", &bombs, superlink.RefusedCallRate, refused, attackCPU, perRound, quiet))
	if c.grew > 128*mib {
		t.Errorf("peak RSS grew %d MiB, want under 128 MiB: the run's bound of 65,536 owed objects (about 32 MiB) and the garbage of the trees", c.grew/mib)
	}
	// The pushes taken up (verified, then answered by the state) are
	// bounded by the nodes' call units: each costs 16,375 of a burst of
	// 65,536 and 200 a second.
	bombCost := state.MaxTreeObjects - 10 + 1
	perNode := int((superlink.DefaultNodeCallBurst + superlink.DefaultNodeCallRate*c.took.Seconds()) / float64(bombCost))
	rateRefused := bombs.get("Unavailable made too many calls")
	if taken := bombs.total() - rateRefused; taken > len(attackers)*perNode {
		t.Errorf("%d pushes of 16,374 objects taken up from %d nodes in %.1f s, want at most %d each (--node-call-burst %d, --node-call-rate %d): %s",
			taken, len(attackers), c.took.Seconds(), perNode, superlink.DefaultNodeCallBurst, superlink.DefaultNodeCallRate, &bombs)
	}
	if rateRefused == 0 || refused < float64(rateRefused) {
		t.Errorf("%d pushes refused by the call rate, %.0f counted by sepal_node_calls_refused_total{reason=%q}: want some, all counted", rateRefused, refused, superlink.RefusedCallRate)
	}
	// The CPU the attackers cost is logged, not asserted: what is left of
	// it (about 60% of a core here, 77% with --node-call-rate 0) is
	// mostly what any node the run addresses costs (a 1 MiB message pulled
	// every round, 8 signed calls) and the decoding of the pushes refused,
	// which comes before any limit can look at a request; on this shared
	// machine the difference is within the noise of one run.

	// 2. Objects pushed where the node has no business. The attacker
	// drained its call units above: 2 s give it 400 back, more than this
	// needs.
	time.Sleep(2 * time.Second)
	m = startMeter(t, b.pid)
	var cross tally
	other := b.startApp("other")
	a := attackers[0]
	leaked := make(chan legitReply, 16)
	legit.leak(leaked)
	deadline := time.After(20 * time.Second)
	for done := 0; done < 3; {
		var r legitReply
		select {
		case r = <-leaked:
		case <-deadline:
			t.Fatalf("no legitimate reply leaked within 20 s; attacks so far: %s", &cross)
		}
		for id, content := range r.objects {
			_, err := a.fleet.PushObject(a.signed(ctx), &flwr129.PushObjectRequest{Node: a.self(), RunId: other.run, ObjectId: id, ObjectContent: content})
			cross.add(err, "no message in run")
			_, err = a.fleet.PushObject(a.signed(ctx), &flwr129.PushObjectRequest{Node: a.self(), RunId: r.run, ObjectId: id, ObjectContent: content})
			if err == nil {
				// The node pushed it first: harmless, the same bytes.
				cross.add(err)
				continue
			}
			cross.add(err, "not one that node")
		}
		_, err := a.fleet.ConfirmMessageReceived(a.signed(ctx), &flwr129.ConfirmMessageReceivedRequest{Node: a.self(), RunId: r.run, MessageObjectId: r.ins})
		cross.add(err, "not one run")
		_, _, err = pullAs(ctx, a, other.run, r.ins)
		cross.add(err, "no message in run")
		done++
	}
	legit.leak(nil)
	c = m.read(t)
	t.Logf("pushes, pulls and confirmations where the node has no business: %s", &cross)
	for _, k := range []string{"PermissionDenied no message in run", "PermissionDenied not one run"} {
		if cross.get(k) == 0 {
			t.Errorf("want %q among the answers: %s", k, &cross)
		}
	}
	if cross.get("NotFound not one that node")+cross.get("OK") == 0 {
		t.Errorf("the leaked objects' pushes got neither NotFound nor stored-already: %s", &cross)
	}
	for k := range cross.n {
		if !strings.HasPrefix(k, "PermissionDenied") && !strings.HasPrefix(k, "NotFound") && k != "OK" {
			t.Errorf("an answer %q: want PermissionDenied, NotFound or (an object pushed already) OK", k)
		}
	}
	summary129(t, "objects pushed where the node has no business", c, legitRounds(legit), longestRound(legit), cross.String())

	// 3. Trees that name millions of children.
	m = startMeter(t, b.pid)
	var trees tally
	bombTrees := map[string]*flwr129.ObjectTree{}
	wide := &flwr129.ObjectTree{}
	for range state.MaxTreeChildren + 1 {
		wide.Children = append(wide.Children, &flwr129.ObjectTree{ObjectId: randomID()})
	}
	bombTrees["an object of 16,385 children"] = wide
	wider := &flwr129.ObjectTree{}
	for range 100000 {
		wider.Children = append(wider.Children, &flwr129.ObjectTree{ObjectId: randomID()})
	}
	bombTrees["an object of 100,000 children"] = wider
	deep := &flwr129.ObjectTree{}
	for t, i := deep, 0; i < 5000; i++ {
		t.Children = []*flwr129.ObjectTree{{ObjectId: randomID()}}
		t = t.Children[0]
	}
	bombTrees["a tree 5,000 deep"] = deep
	huge := &flwr129.ObjectTree{Children: make([]*flwr129.ObjectTree, 1000000)}
	leaf := &flwr129.ObjectTree{ObjectId: randomID()}
	for i := range huge.Children {
		huge.Children[i] = leaf
	}
	bombTrees["a tree of a million children"] = huge
	actx, stop = attackFor(15 * time.Second)
	calls := 0
	var mu sync.Mutex
	for _, a := range attackers {
		wg.Go(func() {
			for actx.Err() == nil {
				for name, tree := range bombTrees {
					msg, _ := bombReply(a, &flwr129.Message{Metadata: &flwr129.Metadata{RunId: legit.app.run, MessageId: randomID(), MessageType: "train"}}, 3)
					_, err := a.fleet.PushMessages(a.signed(actx), &flwr129.PushMessagesRequest{Node: a.self(), MessagesList: []*flwr129.Message{msg}, MessageObjectTrees: []*flwr129.ObjectTree{tree}})
					if actx.Err() != nil {
						return
					}
					trees.add(err, "children", "too deep", "too large", "request of", "made too many calls")
					if c := status.Code(err); c != codes.InvalidArgument && c != codes.ResourceExhausted && c != codes.Unavailable {
						t.Errorf("PushMessages of %s: %v, want InvalidArgument (or ResourceExhausted for the request size, Unavailable past the node's call units)", name, err)
					}
				}
				msg, tree := bombReply(a, &flwr129.Message{Metadata: &flwr129.Metadata{RunId: legit.app.run, MessageId: randomID(), MessageType: "train"}}, 3)
				_, err := a.fleet.PushMessages(a.signed(actx), &flwr129.PushMessagesRequest{Node: a.self(), MessagesList: []*flwr129.Message{msg, msg},
					MessageObjectTrees: []*flwr129.ObjectTree{tree, tree}})
				trees.add(err, "one reply per call")
				mu.Lock()
				calls += len(bombTrees) + 1
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	stop()
	c = m.read(t)
	t.Logf("tree bombs, %d calls in 15 s from 5 nodes: %s", calls, &trees)
	summary129(t, "trees that name millions of children", c, legitRounds(legit), longestRound(legit), trees.String())
	if c.grew > 128*mib {
		t.Errorf("peak RSS grew %d MiB under tree bombs, want under 128 MiB: replies of at most 2 MiB, refused before the state", c.grew/mib)
	}

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

// pullAs pulls object id of run as node a.
func pullAs(ctx context.Context, a *node129, run uint64, id string) ([]byte, bool, error) {
	o, err := a.fleet.PullObject(a.signed(ctx), &flwr129.PullObjectRequest{Node: a.self(), RunId: run, ObjectId: id})
	return o.GetObjectContent(), o.GetObjectAvailable(), err
}

// waitLegit waits until the legitimate run finished n rounds.
func waitLegit(t *testing.T, l *legit129, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for legitRounds(l) < n {
		if _, _, err := l.report(); err != nil {
			t.Fatalf("the legitimate run failed: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the legitimate run finished %d rounds in %v, want %d", legitRounds(l), d, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func legitRounds(l *legit129) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.times)
}

func longestRound(l *legit129) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var d time.Duration
	for _, x := range l.times {
		d = max(d, x)
	}
	return d
}
