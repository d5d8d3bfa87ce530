package superlink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// link129 is a SuperLink serving the Fleet, ServerAppIo and Control APIs
// in plaintext on loopback, on a state in memory.
type link129 struct {
	sl      *SuperLink
	addr    string // the Fleet API's
	st      *memstate.State
	fleet   flwr129.FleetClient
	appIo   flwr129.ServerAppIoClient
	control flwr129.ControlClient
}

func serveLink129(t *testing.T, o Options) *link129 {
	t.Helper()
	return serveLink129On(t, o, memstate.Options{})
}

// serveLink129On is serveLink129 on a state in memory of options mo.
func serveLink129On(t *testing.T, o Options, mo memstate.Options) *link129 {
	t.Helper()
	mo.Logger = slog.New(slog.DiscardHandler)
	st := memstate.New(mo)
	o.State, o.Logger = st, slog.New(slog.DiscardHandler)
	sl := New(o)
	var lis [3]net.Listener
	for i := range lis {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[i] = l
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sl.Serve(ctx, Listeners{Fleet: lis[0], ServerAppIo: lis[1], Control: lis[2]}) }()
	t.Cleanup(func() { cancel(); <-done })
	dial := func(l net.Listener) *grpc.ClientConn {
		cc, err := grpc.NewClient(l.Addr().String(), append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	return &link129{sl: sl, addr: lis[0].Addr().String(), st: st, fleet: flwr129.NewFleetClient(dial(lis[0])), appIo: flwr129.NewServerAppIoClient(dial(lis[1])),
		control: flwr129.NewControlClient(dial(lis[2]))}
}

// join registers and activates a node of key s.
func (l *link129) join(t *testing.T, s *signer) uint64 {
	t.Helper()
	if _, err := l.fleet.RegisterNode(s.ctx(t), &flwr129.RegisterNodeFleetRequest{PublicKey: s.pem}); err != nil {
		t.Fatal(err)
	}
	r, err := l.fleet.ActivateNode(s.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: s.pem, HeartbeatInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetNodeId()
}

// running starts a run through the state and its ServerApp through
// ServerAppIo, and returns the run and the ServerApp's context.
func (l *link129) running(t *testing.T) (uint64, context.Context) {
	t.Helper()
	ctx := context.Background()
	fab := []byte("fab")
	run, err := l.st.CreateLinkRun(ctx, state.NewRun{Fab: &flwr129.Fab{HashStr: statetest.Hex256(fab), Content: fab}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := l.appIo.RequestToken(ctx, &flwr129.RequestTokenRequest{RunId: run})
	if err != nil {
		t.Fatal(err)
	}
	app := metadata.AppendToOutgoingContext(ctx, AppTokenHeader, tok.GetToken())
	if _, err := l.appIo.PullAppInputs(app, &flwr129.PullAppInputsRequest{Token: tok.GetToken()}); err != nil {
		t.Fatal(err)
	}
	return run, app
}

// TestFleet129Replay: a node's signed metadata, captured and sent again
// within Flower's 300 s window, on the same call or another, or with its
// signature changed to (r, n-s), which verifies too, is refused with
// Unauthenticated, and nothing of the call is done; a SuperNode, which
// signs each call, passes.
func TestFleet129Replay(t *testing.T) {
	l := serveLink129(t, Options{})
	node := newSigner(t)
	id := l.join(t, node)
	captured := node.ctx(t)
	beat := &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: id}, HeartbeatInterval: 30}
	if _, err := l.fleet.SendNodeHeartbeat(captured, beat); err != nil {
		t.Fatal(err)
	}
	md, _ := metadata.FromOutgoingContext(captured)
	sig := md.Get(SignatureHeader)[0]
	other := metadata.AppendToOutgoingContext(context.Background(), PublicKeyHeader, md.Get(PublicKeyHeader)[0],
		TimestampHeader, md.Get(TimestampHeader)[0], SignatureHeader, string(statetest.Malleate(t, []byte(sig))))
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"the same call again", func() error { _, err := l.fleet.SendNodeHeartbeat(captured, beat); return err }},
		{"on another call", func() error {
			_, err := l.fleet.PullMessages(captured, &flwr129.PullMessagesRequest{Node: &flwr129.Node{NodeId: id}})
			return err
		}},
		{"with (r, n-s)", func() error {
			_, err := l.fleet.DeactivateNode(other, &flwr129.DeactivateNodeRequest{NodeId: id})
			return err
		}},
	} {
		err := tc.call()
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "replay") {
			t.Errorf("replayed signature, %s: %v, want Unauthenticated naming a replay", tc.name, err)
		}
	}
	nodes, _ := l.st.LinkNodes(context.Background())
	if len(nodes) != 1 || nodes[0].Status != state.NodeOnline {
		t.Fatalf("a replayed DeactivateNode took effect: %v", nodes)
	}
	for range 3 {
		if _, err := l.fleet.SendNodeHeartbeat(node.ctx(t), beat); err != nil {
			t.Fatalf("a heartbeat signed anew: %v", err)
		}
	}
}

// instruct has the ServerApp of run (its context app) send node id a
// small instruction, which the node pulls.
func (l *link129) instruct(t *testing.T, run uint64, app context.Context, node *signer, id uint64) statetest.FlowerMessage {
	t.Helper()
	ins := statetest.NewFlowerMessage(&flwr129.Metadata{RunId: run, SrcNodeId: state.SuperLinkNodeID, DstNodeId: id, Ttl: 3600, MessageType: "train",
		CreatedAt: float64(time.Now().Unix())}, []byte("m"))
	pr, err := l.appIo.PushMessages(app, &flwr129.PushAppMessagesRequest{RunId: run, MessagesList: []*flwr129.Message{ins.Message}, MessageObjectTrees: []*flwr129.ObjectTree{ins.Tree}})
	if err != nil {
		t.Fatal(err)
	}
	for _, oid := range pr.GetObjectsToPush() {
		if _, err := l.appIo.PushObject(app, &flwr129.PushObjectRequest{Node: &flwr129.Node{NodeId: state.SuperLinkNodeID}, RunId: run, ObjectId: oid, ObjectContent: ins.Objects[oid]}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.fleet.PullMessages(node.ctx(t), &flwr129.PullMessagesRequest{Node: &flwr129.Node{NodeId: id}}); err != nil {
		t.Fatal(err)
	}
	return ins
}

// TestFleet129TreeBounds: PushMessages of a SuperNode holding more than
// one reply, or a tree past the bounds (children per object, depth,
// objects), and of a ServerApp with such a tree, are refused with
// InvalidArgument before the state sees them: nothing is stored.
func TestFleet129TreeBounds(t *testing.T) {
	l := serveLink129(t, Options{})
	node := newSigner(t)
	id := l.join(t, node)
	run, app := l.running(t)
	now := float64(time.Now().Unix())
	ins := l.instruct(t, run, app, node, id)
	reply := statetest.NewFlowerMessage(&flwr129.Metadata{RunId: run, SrcNodeId: id, DstNodeId: state.SuperLinkNodeID, ReplyToMessageId: ins.Message.Metadata.MessageId,
		Ttl: 600, MessageType: "train", CreatedAt: now}, []byte("r"))
	leaf := func(i int) *flwr129.ObjectTree { return &flwr129.ObjectTree{ObjectId: fmt.Sprintf("%064x", i)} }
	wide := &flwr129.ObjectTree{ObjectId: reply.Tree.ObjectId}
	for i := range state.MaxTreeChildren + 1 {
		wide.Children = append(wide.Children, leaf(i))
	}
	deep := &flwr129.ObjectTree{ObjectId: reply.Tree.ObjectId}
	for t, i := deep, 0; i < state.MaxTreeDepth; i++ {
		t.Children = []*flwr129.ObjectTree{leaf(i)}
		t = t.Children[0]
	}
	bushy := &flwr129.ObjectTree{ObjectId: reply.Tree.ObjectId}
	for i := range 5 {
		c := leaf(i)
		for j := range state.MaxTreeObjects / 5 {
			c.Children = append(c.Children, leaf(1000000+j))
		}
		bushy.Children = append(bushy.Children, c)
	}
	before, _ := l.st.LinkStats(context.Background())
	for _, tc := range []struct {
		name  string
		msgs  []*flwr129.Message
		trees []*flwr129.ObjectTree
		want  string
	}{
		{"two replies", []*flwr129.Message{reply.Message, reply.Message}, []*flwr129.ObjectTree{reply.Tree, reply.Tree}, "one reply per call"},
		{"an object of too many children", []*flwr129.Message{reply.Message}, []*flwr129.ObjectTree{wide}, "children"},
		{"a tree too deep", []*flwr129.Message{reply.Message}, []*flwr129.ObjectTree{deep}, "too deep"},
		{"a tree of too many objects", []*flwr129.Message{reply.Message}, []*flwr129.ObjectTree{bushy}, "too large"},
	} {
		_, err := l.fleet.PushMessages(node.ctx(t), &flwr129.PushMessagesRequest{Node: &flwr129.Node{NodeId: id}, MessagesList: tc.msgs, MessageObjectTrees: tc.trees})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("PushMessages of %s: %v, want InvalidArgument saying %q", tc.name, err, tc.want)
		}
	}
	_, err := l.appIo.PushMessages(app, &flwr129.PushAppMessagesRequest{RunId: run, MessagesList: []*flwr129.Message{ins.Message}, MessageObjectTrees: []*flwr129.ObjectTree{wide}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("the ServerApp's PushMessages of a tree too wide: %v, want InvalidArgument", err)
	}
	if after, _ := l.st.LinkStats(context.Background()); after.Objects != before.Objects || after.Messages != before.Messages {
		t.Errorf("refused pushes changed the state: %+v, before %+v", after, before)
	}
	// The reply itself passes.
	if _, err := l.fleet.PushMessages(node.ctx(t), &flwr129.PushMessagesRequest{Node: &flwr129.Node{NodeId: id},
		MessagesList: []*flwr129.Message{reply.Message}, MessageObjectTrees: []*flwr129.ObjectTree{reply.Tree}}); err != nil {
		t.Fatal(err)
	}
}

// TestControlLimits: StartRun past a peer's burst is refused; log streams
// past the limit per peer are refused; a stream sends a long log in
// chunks of at most LogChunk and ends when its run is stopped, which
// frees its place.
func TestControlLimits(t *testing.T) {
	l := serveLink129(t, Options{Flower129: Flower129Options{RunBurst: 3, RunRate: 0.001, MaxLogStreamsPerPeer: 2}})
	ctx := context.Background()
	var runs []uint64
	for i := range 4 {
		r, err := l.control.StartRun(ctx, &flwr129.StartRunRequest{Fab: statetest.FlwrFab(t, fmt.Sprint("app", i))})
		if i == 3 {
			if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "too many runs") {
				t.Fatalf("a fourth StartRun, the burst 3: %v, want ResourceExhausted", err)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r.GetRunId())
	}
	line := strings.Repeat("x", 1000) + "\n"
	for range 1000 { // 1 MB of log
		if err := l.st.PushLogs(ctx, runs[0], line); err != nil {
			t.Fatal(err)
		}
	}
	var streams []flwr129.Control_StreamLogsClient
	got, largest := 0, 0
	for range 2 {
		s, err := l.control.StreamLogs(ctx, &flwr129.StreamLogsRequest{RunId: runs[0]})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
		r, err := s.Recv() // the stream is open on the server
		if err != nil {
			t.Fatal(err)
		}
		if len(streams) == 1 {
			got, largest = len(r.GetLogOutput()), len(r.GetLogOutput())
		}
	}
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	third, _ := l.control.StreamLogs(tctx, &flwr129.StreamLogsRequest{RunId: runs[1]})
	if _, err := third.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a third log stream of a peer, 2 allowed: %v, want ResourceExhausted", err)
	}
	for got < 1000*len(line) {
		r, err := streams[0].Recv()
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		got += len(r.GetLogOutput())
		largest = max(largest, len(r.GetLogOutput()))
	}
	if largest > LogChunk {
		t.Errorf("a response of %d bytes of log, want at most %d", largest, LogChunk)
	}
	if _, err := l.st.StopRun(ctx, runs[0]); err != nil {
		t.Fatal(err)
	}
	for i, s := range streams {
		for {
			_, err := s.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("stream %d after its run stopped: %v", i, err)
			}
		}
	}
	s, err := l.control.StreamLogs(ctx, &flwr129.StreamLogsRequest{RunId: runs[0]})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatalf("a log stream once the others ended: %v", err)
	}
}

// TestRegister129Rate: Flower 1.29.0 registrations, through the Fleet
// API with fresh keys and through the Control API, share a peer's rate
// limit with CreateNode.
func TestRegister129Rate(t *testing.T) {
	l := serveLink129(t, Options{NodeLimits: NodeLimits{Burst: 3, Rate: 0.001}})
	for i := range 4 {
		s := newSigner(t)
		var err error
		if i%2 == 0 {
			_, err = l.fleet.RegisterNode(s.ctx(t), &flwr129.RegisterNodeFleetRequest{PublicKey: s.pem})
		} else {
			_, err = l.control.RegisterNode(context.Background(), &flwr129.RegisterNodeRequest{PublicKey: s.pem})
		}
		if i < 3 && err != nil {
			t.Fatalf("registration %d: %v", i, err)
		}
		if i == 3 && (status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "too many registrations")) {
			t.Fatalf("a fourth registration, the burst 3: %v", err)
		}
	}
	if nodes, _ := l.st.LinkNodes(context.Background()); len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(nodes))
	}
}
