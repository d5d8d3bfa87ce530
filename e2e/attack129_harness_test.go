package e2e

// The attack tests of the Flower 1.29.0 surface (attack129_*_test.go) run
// the real flower-superlink with a legitimate run beside the attacks, and
// log one SUMMARY line per attack: the SuperLink's peak RSS growth and CPU
// seconds, and the rounds the legitimate run finished and the longest.
// Both sides are Go: SuperNodes and a ServerApp that speak the 1.29
// protocol directly (signed Fleet calls, messages as object trees,
// objects pushed and pulled, ServerAppIo), so that the run can address
// the attacker's nodes and the tests stay fast; TestFlower129 runs stock
// Flower 1.29.0.
//
// This is their harness.

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/statetest"
	"github.com/sepal-fl/sepal/superlink"
)

// bed129 is a flower-superlink serving Flower 1.29.0 over TLS (flower-certs'
// certificates), its ServerAppIo on the Driver API's port, with
// --isolation process: the test's Go ServerApp takes the runs' tokens.
type bed129 struct {
	t                     *testing.T
	link                  *superLink
	pid                   int
	fleet, appIo, control string
}

// newBed129 starts the SuperLink (startSuperLink) with extra flags, and
// its metrics on a loopback address.
func newBed129(t *testing.T, extra ...string) *bed129 {
	t.Helper()
	b := &bed129{t: t, appIo: freeAddr(t), control: freeAddr(t)}
	args := append([]string{"--serverappio-api-address", b.appIo, "--control-api-address", b.control, "--isolation", "process"}, extra...)
	b.link = startSuperLink(t, linkOptions{certs: true, metrics: true, args: args, fleetFlag: "--fleet-api-address", driver: b.appIo})
	b.fleet, b.pid = b.link.fleet, b.link.cmd.Process.Pid
	return b
}

// dial opens a connection to addr from the loopback address src, over
// TLS unless plain, closed when the test ends.
func (b *bed129) dial(addr, src string, plain bool) *grpc.ClientConn {
	b.t.Helper()
	creds := credentials.NewTLS(b.link.tls)
	if plain {
		creds = insecure.NewCredentials()
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	cc, err := grpc.NewClient(addr, append(flwr129.ClientOptions(), grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))...)
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() { cc.Close() })
	return cc
}

// controlFrom is a Control API client from src.
func (b *bed129) controlFrom(src string) flwr129.ControlClient {
	return flwr129.NewControlClient(b.dial(b.control, src, false))
}

// node129 is a SuperNode of the test: an EC key and a Fleet connection.
type node129 struct {
	t     testing.TB
	key   *ecdsa.PrivateKey
	pem   []byte
	id    uint64
	fleet flwr129.FleetClient
}

// node returns a new node connecting from src (not yet registered).
func (b *bed129) node(src string) *node129 {
	k, p := statetest.NodeKey(b.t)
	return &node129{t: b.t, key: k, pem: p, fleet: flwr129.NewFleetClient(b.dial(b.fleet, src, false))}
}

// nodeOn returns a node of a new key on an existing Fleet connection.
func nodeOn(t testing.TB, fleet flwr129.FleetClient) *node129 {
	k, p := statetest.NodeKey(t)
	return &node129{t: t, key: k, pem: p, fleet: fleet}
}

// signed returns ctx with the node's signature metadata, as Flower's
// NodeAuthClientInterceptor adds to every call.
func (n *node129) signed(ctx context.Context) context.Context {
	ts, sig := n.sign()
	return n.withSignature(ctx, ts, sig)
}

// sign signs the time now, as Flower's SuperNodes sign each call.
func (n *node129) sign() (ts string, sig []byte) { return statetest.SignTime(n.t, n.key, time.Now()) }

// withSignature returns ctx with the node's key, ts and sig as metadata.
func (n *node129) withSignature(ctx context.Context, ts string, sig []byte) context.Context {
	return metadata.AppendToOutgoingContext(ctx, superlink.PublicKeyHeader, string(n.pem), superlink.TimestampHeader, ts, superlink.SignatureHeader, string(sig))
}

// join registers the node and activates it with a heartbeat interval.
func (n *node129) join(ctx context.Context, interval float64) error {
	if _, err := n.fleet.RegisterNode(n.signed(ctx), &flwr129.RegisterNodeFleetRequest{PublicKey: n.pem}); err != nil {
		return err
	}
	r, err := n.fleet.ActivateNode(n.signed(ctx), &flwr129.ActivateNodeRequest{PublicKey: n.pem, HeartbeatInterval: interval})
	if err != nil {
		return err
	}
	n.id = r.GetNodeId()
	return nil
}

func (n *node129) self() *flwr129.Node { return &flwr129.Node{NodeId: n.id} }

// pull pulls a message for the node and the objects of its tree, and
// confirms it; nil when there is none.
func (n *node129) pull(ctx context.Context) (*flwr129.Message, error) {
	r, err := n.fleet.PullMessages(n.signed(ctx), &flwr129.PullMessagesRequest{Node: n.self()})
	if err != nil || len(r.GetMessagesList()) == 0 {
		return nil, err
	}
	m := r.GetMessagesList()[0]
	for _, id := range treeIDs(r.GetMessageObjectTrees()[0]) {
		o, err := n.fleet.PullObject(n.signed(ctx), &flwr129.PullObjectRequest{Node: n.self(), RunId: m.Metadata.RunId, ObjectId: id})
		if err != nil {
			return nil, err
		}
		if !o.GetObjectAvailable() {
			return nil, fmt.Errorf("object %s of message %s is not available", id, m.Metadata.MessageId)
		}
	}
	_, err = n.fleet.ConfirmMessageReceived(n.signed(ctx), &flwr129.ConfirmMessageReceivedRequest{Node: n.self(), RunId: m.Metadata.RunId, MessageObjectId: m.Metadata.MessageId})
	return m, err
}

// replyTo builds a reply of the node to ins holding one array of update.
func (n *node129) replyTo(ins *flwr129.Message, update []byte) statetest.FlowerMessage {
	md := ins.Metadata
	return statetest.NewFlowerArrayMessage(&flwr129.Metadata{RunId: md.RunId, SrcNodeId: n.id, DstNodeId: state.SuperLinkNodeID,
		ReplyToMessageId: md.MessageId, GroupId: md.GroupId, Ttl: 300, MessageType: md.MessageType, CreatedAt: nowSeconds()}, update)
}

// push pushes a reply and the objects the SuperLink asks for; pushed, if
// set, is called in between.
func (n *node129) push(ctx context.Context, m statetest.FlowerMessage, pushed func()) error {
	r, err := n.fleet.PushMessages(n.signed(ctx), &flwr129.PushMessagesRequest{Node: n.self(),
		MessagesList: []*flwr129.Message{m.Message}, MessageObjectTrees: []*flwr129.ObjectTree{m.Tree}})
	if err != nil {
		return err
	}
	if pushed != nil {
		pushed()
	}
	for _, id := range r.GetObjectsToPush() {
		if _, err := n.fleet.PushObject(n.signed(ctx), &flwr129.PushObjectRequest{Node: n.self(), RunId: m.Message.Metadata.RunId,
			ObjectId: id, ObjectContent: m.Objects[id]}); err != nil {
			return err
		}
	}
	return nil
}

// serve is a legitimate SuperNode until ctx ends: it heartbeats, pulls
// each message, and answers it with an array of update (calling replied,
// if set, once the reply is pushed and before its objects are). It
// returns the first error of a call.
func (n *node129) serve(ctx context.Context, update []byte, replied func(ins *flwr129.Message, rep statetest.FlowerMessage)) error {
	beat, poll := time.NewTicker(10*time.Second), time.NewTicker(100*time.Millisecond)
	defer beat.Stop()
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
			if _, err := n.fleet.SendNodeHeartbeat(n.signed(ctx), &flwr129.SendNodeHeartbeatRequest{Node: n.self(), HeartbeatInterval: 30}); err != nil && ctx.Err() == nil {
				return fmt.Errorf("heartbeat: %w", err)
			}
		case <-poll.C:
			m, err := n.pull(ctx)
			if err == nil && m != nil {
				rep := n.replyTo(m, update)
				var hook func()
				if replied != nil {
					hook = func() { replied(m, rep) }
				}
				err = n.push(ctx, rep, hook)
			}
			if err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}

// callsRefused is what the SuperLink's metrics count of signed calls
// refused for reason (superlink.NodeCallRefusalReasons).
func (b *bed129) callsRefused(reason string) float64 {
	b.t.Helper()
	return testkit.Scrape(b.t, "http://"+b.link.metrics+"/metrics").Sum("sepal_node_calls_refused_total", "reason", reason)
}

func nowSeconds() float64 { return float64(time.Now().UnixNano()) / 1e9 }

// treeIDs lists the ids of a tree.
func treeIDs(t *flwr129.ObjectTree) []string {
	ids := []string{t.GetObjectId()}
	for _, c := range t.GetChildren() {
		ids = append(ids, treeIDs(c)...)
	}
	return ids
}

// app129 is a ServerApp of the test, holding its run's token.
type app129 struct {
	io  flwr129.ServerAppIoClient
	run uint64
	ctx context.Context // with the token
}

// startApp starts a run through the Control API (from 127.0.0.1, as flwr
// run), takes its token as a SuperExec does and starts its ServerApp,
// which sends heartbeats until the test ends.
func (b *bed129) startApp(name string) *app129 {
	b.t.Helper()
	ctx := context.Background()
	r, err := b.controlFrom("127.0.0.1").StartRun(ctx, &flwr129.StartRunRequest{Fab: statetest.FlwrFab(b.t, name)})
	if err != nil {
		b.t.Fatal(err)
	}
	a := &app129{io: flwr129.NewServerAppIoClient(b.dial(b.appIo, "127.0.0.1", true)), run: r.GetRunId()}
	tok, err := a.io.RequestToken(ctx, &flwr129.RequestTokenRequest{RunId: a.run})
	if err != nil || tok.GetToken() == "" {
		b.t.Fatalf("RequestToken of run %d: %v %v", a.run, tok, err)
	}
	a.ctx = metadata.AppendToOutgoingContext(ctx, superlink.AppTokenHeader, tok.GetToken())
	if _, err := a.io.PullAppInputs(a.ctx, &flwr129.PullAppInputsRequest{Token: tok.GetToken()}); err != nil {
		b.t.Fatal(err)
	}
	hctx, stop := context.WithCancel(a.ctx)
	b.t.Cleanup(stop)
	go func() {
		for t := time.NewTicker(10 * time.Second); ; {
			select {
			case <-hctx.Done():
				t.Stop()
				return
			case <-t.C:
				a.io.SendAppHeartbeat(hctx, &flwr129.SendAppHeartbeatRequest{Token: tok.GetToken()})
			}
		}
	}()
	return a
}

// round sends a message with one array of payload to each node of to,
// and waits until each node of wait replied (their replies' objects
// pulled and confirmed), or ctx ends. It returns the replies' ids by node.
func (a *app129) round(ctx context.Context, to, wait []uint64, payload []byte) (map[uint64]string, error) {
	var msgs []*flwr129.Message
	var trees []*flwr129.ObjectTree
	objs := map[string][]byte{}
	for _, dst := range to {
		m := statetest.NewFlowerArrayMessage(&flwr129.Metadata{RunId: a.run, SrcNodeId: state.SuperLinkNodeID, DstNodeId: dst,
			GroupId: "round", Ttl: 600, MessageType: "train", CreatedAt: nowSeconds()}, payload)
		msgs, trees = append(msgs, m.Message), append(trees, m.Tree)
		for id, c := range m.Objects {
			objs[id] = c
		}
	}
	r, err := a.io.PushMessages(a.ctx, &flwr129.PushAppMessagesRequest{RunId: a.run, MessagesList: msgs, MessageObjectTrees: trees})
	if err != nil {
		return nil, err
	}
	for _, id := range r.GetObjectsToPush() {
		if _, err := a.io.PushObject(a.ctx, &flwr129.PushObjectRequest{Node: &flwr129.Node{NodeId: state.SuperLinkNodeID}, RunId: a.run, ObjectId: id, ObjectContent: objs[id]}); err != nil {
			return nil, err
		}
	}
	var ask []string
	byIns := map[string]uint64{}
	for i, dst := range to {
		if slices.Contains(wait, dst) {
			ask = append(ask, r.GetMessageIds()[i])
			byIns[r.GetMessageIds()[i]] = dst
		}
	}
	got := map[uint64]string{}
	for len(got) < len(wait) {
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("%d of %d replies: %w", len(got), len(wait), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		res, err := a.io.PullMessages(a.ctx, &flwr129.PullAppMessagesRequest{RunId: a.run, MessageIds: ask})
		if err != nil {
			return got, err
		}
		for i, m := range res.GetMessagesList() {
			dst := byIns[m.Metadata.ReplyToMessageId]
			if _, ok := got[dst]; ok {
				continue
			}
			if m.GetError() != nil {
				return got, fmt.Errorf("node %d's reply is an error: %v", dst, m.GetError())
			}
			for _, id := range treeIDs(res.GetMessageObjectTrees()[i]) {
				o, err := a.io.PullObject(a.ctx, &flwr129.PullObjectRequest{Node: &flwr129.Node{NodeId: state.SuperLinkNodeID}, RunId: a.run, ObjectId: id})
				if err != nil || !o.GetObjectAvailable() {
					return got, fmt.Errorf("object %s of node %d's reply: %v %v", id, dst, o, err)
				}
			}
			if _, err := a.io.ConfirmMessageReceived(a.ctx, &flwr129.ConfirmMessageReceivedRequest{RunId: a.run, MessageObjectId: m.Metadata.MessageId}); err != nil {
				return got, err
			}
			got[dst] = m.Metadata.MessageId
		}
	}
	return got, nil
}

// legit129 is a legitimate run of the test: two Go nodes on 127.0.0.1
// and a Go ServerApp sending rounds of a 1 MiB array, each answered with
// a 256 KiB update.
type legit129 struct {
	app    *app129
	nodes  []*node129
	cancel context.CancelFunc
	errs   chan error

	mu     sync.Mutex
	times  []time.Duration // of the rounds finished
	to     []uint64        // the nodes the rounds also address (attackers')
	fail   error
	done   chan struct{}
	leakTo chan<- legitReply
}

// legitReply is what a legitimate node's reply leaks to an attacker (as a
// proxy that logs requests would): its run, the message it answers, and
// its objects.
type legitReply struct {
	run     uint64
	ins     string
	objects map[string][]byte
}

// leak sends every reply of the legitimate nodes to ch (nil: none) once
// it is pushed and 100 ms before its objects are.
func (l *legit129) leak(ch chan<- legitReply) {
	l.mu.Lock()
	l.leakTo = ch
	l.mu.Unlock()
}

// replied is the legitimate nodes' hook: it leaks the reply, if asked to.
func (l *legit129) replied(ins *flwr129.Message, rep statetest.FlowerMessage) {
	l.mu.Lock()
	ch := l.leakTo
	l.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- legitReply{run: ins.Metadata.RunId, ins: ins.Metadata.MessageId, objects: rep.Objects}:
		time.Sleep(100 * time.Millisecond)
	default:
	}
}

// startLegit joins two nodes and starts their loops; rounds start with
// legit.rounds.
func (b *bed129) startLegit() *legit129 {
	b.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &legit129{app: b.startApp("legit"), cancel: cancel, errs: make(chan error, 2)}
	b.t.Cleanup(cancel)
	for i := range 2 {
		n := b.node("127.0.0.1")
		if err := n.join(ctx, 30); err != nil {
			b.t.Fatal(err)
		}
		l.nodes = append(l.nodes, n)
		update := statetest.Chunk(256<<10, byte(i))
		go func() { l.errs <- n.serve(ctx, update, l.replied) }()
	}
	return l
}

// address makes the next rounds address the nodes ids too, without
// waiting for their replies.
func (l *legit129) address(ids ...uint64) {
	l.mu.Lock()
	l.to = append(l.to, ids...)
	l.mu.Unlock()
}

// rounds runs n rounds in the background (0: until stop), each given
// timeout; wait for them with finish.
func (l *legit129) rounds(n int, timeout time.Duration) {
	l.done = make(chan struct{})
	payload := statetest.Chunk(1<<20, 9)
	go func() {
		defer close(l.done)
		var wait []uint64
		for _, nd := range l.nodes {
			wait = append(wait, nd.id)
		}
		for i := 0; n == 0 || i < n; i++ {
			l.mu.Lock()
			to := append(slices.Clone(wait), l.to...)
			stopped := l.fail != nil
			l.mu.Unlock()
			if stopped {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			began := time.Now()
			_, err := l.app.round(ctx, to, wait, payload)
			cancel()
			l.mu.Lock()
			if err != nil {
				l.fail = fmt.Errorf("round %d: %w", i+1, err)
			} else {
				l.times = append(l.times, time.Since(began))
			}
			l.mu.Unlock()
		}
	}()
}

// stop ends the rounds after the one running.
func (l *legit129) stop() {
	l.mu.Lock()
	if l.fail == nil {
		l.fail = errStopped
	}
	l.mu.Unlock()
	<-l.done
}

var errStopped = fmt.Errorf("stopped")

// report returns the rounds finished, their longest time, and the first
// failure (of a round or a node).
func (l *legit129) report() (int, time.Duration, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.fail
	if err == errStopped {
		err = nil
	}
	select {
	case e := <-l.errs:
		if e != nil && err == nil {
			err = fmt.Errorf("a legitimate node: %w", e)
		}
	default:
	}
	longest := time.Duration(0)
	for _, d := range l.times {
		longest = max(longest, d)
	}
	return len(l.times), longest, err
}

// summary129 logs an attack's SUMMARY line.
func summary129(t *testing.T, attack string, c cost, rounds int, longest time.Duration, more string) {
	t.Helper()
	t.Logf("SUMMARY %s: peak RSS growth %d MiB, SuperLink CPU %.2f s, legitimate rounds finished %d (longest %.2f s); %s",
		attack, c.grew/mib, c.cpu.Seconds(), rounds, longest.Seconds(), more)
}

// attackFor returns a context cancelled after d: an attack's time. Not a
// deadline, which gRPC would send along: the SuperLink's DeadlineExceeded
// would then count among its answers.
func attackFor(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := context.WithCancel(context.Background())
	time.AfterFunc(d, stop)
	return ctx, stop
}
