package superlink

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/state/statetest"
)

// TestFlower129OnDatabase: a SuperLink on a SQL state (flower-superlink
// --database) keeps the 1.29 generation in it: a node registered through
// the Fleet API and a 5 MiB object pushed through ServerAppIo are there
// for the SuperLink started again on the same database, and the object
// reaches the node byte for byte.
func TestFlower129OnDatabase(t *testing.T) {
	quiet := sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}
	t.Run("SQLite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "state.db")
		flower129Restart(t, func() *sqlstate.State {
			s, err := sqlstate.OpenSQLite(context.Background(), path, sqlstate.SQLiteOptions{Options: quiet})
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
	t.Run("PostgreSQL", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		flower129Restart(t, func() *sqlstate.State {
			s, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{Options: quiet})
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
}

// served is a SuperLink serving Fleet and ServerAppIo in plaintext on
// loopback.
type served struct {
	fleet flwr129.FleetClient
	appIo flwr129.ServerAppIoClient
	stop  func()
}

func serve129(t *testing.T, st *sqlstate.State) *served {
	t.Helper()
	sl := New(Options{State: st, Logger: slog.New(slog.DiscardHandler)})
	if sl.LinkState() != state.LinkState(st) {
		t.Fatal("the SuperLink does not keep the 1.29 generation in its State")
	}
	fl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	al, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sl.Serve(ctx, Listeners{Fleet: fl, ServerAppIo: al}) }()
	dial := func(addr string) *grpc.ClientConn {
		cc, err := grpc.NewClient(addr, append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))...)
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	fc, ac := dial(fl.Addr().String()), dial(al.Addr().String())
	return &served{fleet: flwr129.NewFleetClient(fc), appIo: flwr129.NewServerAppIoClient(ac), stop: func() {
		fc.Close()
		ac.Close()
		cancel()
		<-done
	}}
}

func flower129Restart(t *testing.T, open func() *sqlstate.State) {
	ctx := context.Background()
	st := open()
	s := serve129(t, st)
	node := newSigner(t)
	if _, err := s.fleet.RegisterNode(node.ctx(t), &flwr129.RegisterNodeFleetRequest{PublicKey: node.pem}); err != nil {
		t.Fatal(err)
	}
	r, err := s.fleet.ActivateNode(node.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: node.pem, HeartbeatInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	nodeID := r.GetNodeId()
	fab := []byte("fab")
	run, err := st.CreateLinkRun(ctx, state.NewRun{Fab: &flwr129.Fab{HashStr: statetest.Hex256(fab), Content: fab}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.appIo.RequestToken(ctx, &flwr129.RequestTokenRequest{RunId: run})
	if err != nil || tok.GetToken() == "" {
		t.Fatalf("RequestToken: %v %v", tok, err)
	}
	app := metadata.AppendToOutgoingContext(ctx, AppTokenHeader, tok.GetToken())
	if _, err := s.appIo.PullAppInputs(app, &flwr129.PullAppInputsRequest{Token: tok.GetToken()}); err != nil {
		t.Fatal(err)
	}
	chunk := statetest.Chunk(5<<20, 7)
	m := statetest.NewFlowerArrayMessage(&flwr129.Metadata{RunId: run, SrcNodeId: state.SuperLinkNodeID, DstNodeId: nodeID,
		Ttl: 3600, MessageType: "train", CreatedAt: float64(time.Now().Unix())}, chunk)
	pr, err := s.appIo.PushMessages(app, &flwr129.PushAppMessagesRequest{RunId: run, MessagesList: []*flwr129.Message{m.Message}, MessageObjectTrees: []*flwr129.ObjectTree{m.Tree}})
	if err != nil || len(pr.GetObjectsToPush()) != len(m.Objects) {
		t.Fatalf("PushMessages: %v %v", pr, err)
	}
	for _, id := range pr.GetObjectsToPush() {
		if _, err := s.appIo.PushObject(app, &flwr129.PushObjectRequest{Node: &flwr129.Node{NodeId: state.SuperLinkNodeID}, RunId: run, ObjectId: id, ObjectContent: m.Objects[id]}); err != nil {
			t.Fatal(err)
		}
	}
	s.stop()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = open()
	defer st.Close()
	s = serve129(t, st)
	defer s.stop()
	hb, err := s.fleet.SendNodeHeartbeat(node.ctx(t), &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: nodeID}, HeartbeatInterval: 30})
	if err != nil || !hb.GetSuccess() {
		t.Fatalf("the node's heartbeat after the restart: %v %v", hb, err)
	}
	pm, err := s.fleet.PullMessages(node.ctx(t), &flwr129.PullMessagesRequest{Node: &flwr129.Node{NodeId: nodeID}})
	if err != nil || len(pm.GetMessagesList()) != 1 || pm.MessagesList[0].GetMetadata().GetMessageId() != m.Message.Metadata.MessageId {
		t.Fatalf("PullMessages after the restart: %v %v", pm, err)
	}
	for id, want := range m.Objects {
		o, err := s.fleet.PullObject(node.ctx(t), &flwr129.PullObjectRequest{Node: &flwr129.Node{NodeId: nodeID}, RunId: run, ObjectId: id})
		if err != nil || !o.GetObjectAvailable() || !bytes.Equal(o.GetObjectContent(), want) {
			t.Fatalf("PullObject %s after the restart: available %v, %d bytes, %v", id, o.GetObjectAvailable(), len(o.GetObjectContent()), err)
		}
	}
}
