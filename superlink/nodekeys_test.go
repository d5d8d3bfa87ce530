package superlink

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

// keysOnly is a SuperLink serving Fleet and Control with
// Flower129Options.KeysOnly (flower-superlink --enable-supernode-auth),
// in plaintext on loopback.
type keysOnly struct {
	fleet   flwr129.FleetClient
	control flwr129.ControlClient
	stop    func()
}

func serveKeysOnly(t *testing.T, st state.State) *keysOnly {
	t.Helper()
	sl := New(Options{State: st, Logger: slog.New(slog.DiscardHandler), Flower129: Flower129Options{KeysOnly: true}})
	var lis [2]net.Listener
	for i := range lis {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lis[i] = l
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sl.Serve(ctx, Listeners{Fleet: lis[0], Control: lis[1]}) }()
	var ccs []*grpc.ClientConn
	for _, l := range lis {
		cc, err := grpc.NewClient(l.Addr().String(), append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		ccs = append(ccs, cc)
	}
	k := &keysOnly{fleet: flwr129.NewFleetClient(ccs[0]), control: flwr129.NewControlClient(ccs[1])}
	k.stop = func() {
		for _, cc := range ccs {
			cc.Close()
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(func() {
		select {
		case <-ctx.Done():
		default:
			k.stop()
		}
	})
	return k
}

// wantStatus fails t unless err has code c and Flower's message msg.
func wantStatus(t *testing.T, what string, err error, c codes.Code, msg string) {
	t.Helper()
	if s := status.Convert(err); s.Code() != c || s.Message() != msg {
		t.Errorf("%s: %v, want %v %q", what, err, c, msg)
	}
}

// TestRegisteredNodeKeys checks flower-superlink --enable-supernode-auth
// as Flower 1.29.0 has it: SuperNodes cannot register themselves, only a
// key registered through the Control API (flwr supernode register) may
// activate, and a node unregistered there (flwr supernode unregister) is
// refused at its next call; each refusal with Flower's code and words,
// which its SuperNode reports. On PostgreSQL the keys are registered
// through one SuperLink and used through another, and outlive a restart.
func TestRegisteredNodeKeys(t *testing.T) {
	t.Run("memory", func(t *testing.T) {
		s := serveKeysOnly(t, memstate.New(memstate.Options{Logger: slog.New(slog.DiscardHandler)}))
		registeredKeys(t, s, s)
	})
	t.Run("PostgreSQL", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		open := func() *sqlstate.State {
			st, err := sqlstate.OpenPostgres(context.Background(), dsn, sqlstate.PostgresOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		}
		a, b := serveKeysOnly(t, open()), serveKeysOnly(t, open())
		registeredKeys(t, a, b)

		// A key registered through a is known to a SuperLink started
		// after a stopped.
		node := newSigner(t)
		r, err := a.control.RegisterNode(context.Background(), &flwr129.RegisterNodeRequest{PublicKey: node.pem})
		if err != nil {
			t.Fatal(err)
		}
		a.stop()
		c := serveKeysOnly(t, open())
		if got, err := c.fleet.ActivateNode(node.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: node.pem, HeartbeatInterval: 30}); err != nil || got.GetNodeId() != r.GetNodeId() {
			t.Fatalf("ActivateNode after a restart: %v %v, want node %d", got, err, r.GetNodeId())
		}
	})
}

// registeredKeys runs the life of a registered key: keys are registered,
// listed and unregistered through a's Control API and used through b's
// Fleet API (a and b may be one SuperLink).
func registeredKeys(t *testing.T, a, b *keysOnly) {
	ctx := context.Background()
	node := newSigner(t)
	activate := func() (uint64, error) {
		r, err := b.fleet.ActivateNode(node.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: node.pem, HeartbeatInterval: 30})
		return r.GetNodeId(), err
	}
	listed := func() *flwr129.NodeInfo {
		t.Helper()
		r, err := a.control.ListNodes(ctx, &flwr129.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range r.GetNodesInfo() {
			if string(n.GetPublicKey()) == string(node.pem) {
				return n
			}
		}
		t.Fatalf("ListNodes does not list the node's key: %v", r.GetNodesInfo())
		return nil
	}

	// Not registered: refused, as Flower refuses it.
	_, err := b.fleet.RegisterNode(node.ctx(t), &flwr129.RegisterNodeFleetRequest{PublicKey: node.pem})
	wantStatus(t, "Fleet RegisterNode", err, codes.FailedPrecondition, "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.")
	_, err = activate()
	wantStatus(t, "ActivateNode of a key not registered", err, codes.FailedPrecondition, "No SuperNode found with the given public key.")

	// Keys flwr would not send are refused.
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(edPub)
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string][]byte{
		"no key":          nil,
		"not PEM":         []byte("ecdsa-sha2-nistp384 AAAA"),
		"an Ed25519 key":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		"a truncated key": node.pem[:len(node.pem)/2],
	} {
		_, err := a.control.RegisterNode(ctx, &flwr129.RegisterNodeRequest{PublicKey: key})
		wantStatus(t, "Control RegisterNode of "+name, err, codes.FailedPrecondition, "The provided public key is not valid")
	}

	r, err := a.control.RegisterNode(ctx, &flwr129.RegisterNodeRequest{PublicKey: node.pem})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetNodeId()
	if id == 0 || id == state.SuperLinkNodeID {
		t.Fatalf("RegisterNode gave node id %d", id)
	}
	_, err = b.control.RegisterNode(ctx, &flwr129.RegisterNodeRequest{PublicKey: node.pem})
	wantStatus(t, "Control RegisterNode of a key in use", err, codes.FailedPrecondition, "Public key already in use")
	if n := listed(); n.GetNodeId() != id || n.GetStatus() != state.NodeRegistered {
		t.Fatalf("listed %v, want node %d registered", n, id)
	}

	// Registered: it joins, and works.
	if got, err := activate(); err != nil || got != id {
		t.Fatalf("ActivateNode of a registered key: node %d, %v; want node %d", got, err, id)
	}
	if n := listed(); n.GetStatus() != state.NodeOnline {
		t.Fatalf("listed %v, want online", n)
	}
	hb, err := a.fleet.SendNodeHeartbeat(node.ctx(t), &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: id}, HeartbeatInterval: 30})
	if err != nil || !hb.GetSuccess() {
		t.Fatalf("heartbeat: %v %v", hb, err)
	}
	if _, err := b.fleet.PullMessages(node.ctx(t), &flwr129.PullMessagesRequest{Node: &flwr129.Node{NodeId: id}}); err != nil {
		t.Fatalf("PullMessages: %v", err)
	}
	// The node cannot unregister itself: only the Control API can.
	_, err = b.fleet.UnregisterNode(node.ctx(t), &flwr129.UnregisterNodeFleetRequest{NodeId: id})
	wantStatus(t, "Fleet UnregisterNode", err, codes.FailedPrecondition, "SuperNode authentication is enabled. All SuperNodes must be unregistered via the CLI.")

	// Unregistered while it runs: cut off at its next call.
	if _, err := a.control.UnregisterNode(ctx, &flwr129.UnregisterNodeRequest{NodeId: id}); err != nil {
		t.Fatal(err)
	}
	_, err = b.fleet.PullMessages(node.ctx(t), &flwr129.PullMessagesRequest{Node: &flwr129.Node{NodeId: id}})
	wantStatus(t, "PullMessages once unregistered", err, codes.Unauthenticated, "Invalid node ID")
	_, err = b.fleet.SendNodeHeartbeat(node.ctx(t), &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: id}, HeartbeatInterval: 30})
	wantStatus(t, "heartbeat once unregistered", err, codes.Unauthenticated, "Invalid node ID")
	_, err = b.fleet.DeactivateNode(node.ctx(t), &flwr129.DeactivateNodeRequest{NodeId: id})
	wantStatus(t, "DeactivateNode once unregistered", err, codes.Unauthenticated, "Invalid node ID")
	_, err = activate()
	wantStatus(t, "ActivateNode once unregistered", err, codes.FailedPrecondition, "No SuperNode found with the given public key.")
	if n := listed(); n.GetStatus() != state.NodeUnregistered || n.GetUnregisteredAt() == "" {
		t.Fatalf("listed %v, want unregistered", n)
	}
	_, err = b.control.UnregisterNode(ctx, &flwr129.UnregisterNodeRequest{NodeId: id})
	wantStatus(t, "Control UnregisterNode twice", err, codes.NotFound, "Node ID not found for account")
	// As in Flower, a key once unregistered stays used up.
	_, err = a.control.RegisterNode(ctx, &flwr129.RegisterNodeRequest{PublicKey: node.pem})
	wantStatus(t, "Control RegisterNode of an unregistered key", err, codes.FailedPrecondition, "Public key already in use")
}
