package superlink

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/state/statetest"
	"github.com/sepal-fl/sepal/superlink/internal/codec"
)

// signer signs Fleet calls as a Flower 1.29.0 SuperNode does, with a
// timestamp skewed by skew.
type signer struct {
	key  *ecdsa.PrivateKey
	pem  []byte
	skew time.Duration
	by   *ecdsa.PrivateKey // signs instead of key when set
}

func newSigner(t *testing.T) *signer {
	k, pem := statetest.NodeKey(t)
	return &signer{key: k, pem: pem}
}

func (s *signer) ctx(t *testing.T) context.Context {
	k := s.key
	if s.by != nil {
		k = s.by
	}
	ts, sig := statetest.SignTime(t, k, time.Now().Add(s.skew))
	return metadata.AppendToOutgoingContext(context.Background(), PublicKeyHeader, string(s.pem), TimestampHeader, ts, SignatureHeader, string(sig))
}

// TestFleet129Signatures serves the SuperLink's Fleet API and checks
// Flower 1.29.0's node authentication: a node registers and heartbeats
// with its key, and a signature too old, from the future, by another key
// or for another node's id is refused with Unauthenticated.
func TestFleet129Signatures(t *testing.T) {
	sl := New(Options{State: memstate.New(memstate.Options{})})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sl.Serve(ctx, Listeners{Fleet: lis}) }()
	defer func() { cancel(); <-done }()
	cc, err := grpc.NewClient(lis.Addr().String(), append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	fleet := flwr129.NewFleetClient(cc)

	join := func(s *signer) uint64 {
		t.Helper()
		if _, err := fleet.RegisterNode(s.ctx(t), &flwr129.RegisterNodeFleetRequest{PublicKey: s.pem}); err != nil {
			t.Fatal(err)
		}
		r, err := fleet.ActivateNode(s.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: s.pem, HeartbeatInterval: 30})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetNodeId()
	}
	a, b := newSigner(t), newSigner(t)
	idA, idB := join(a), join(b)
	beat := func(s *signer, id uint64) error {
		r, err := fleet.SendNodeHeartbeat(s.ctx(t), &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: id}, HeartbeatInterval: 30})
		if err == nil && !r.GetSuccess() {
			t.Fatalf("heartbeat of node %d: success false", id)
		}
		return err
	}
	if err := beat(a, idA); err != nil {
		t.Fatalf("a signed heartbeat: %v", err)
	}
	for _, tc := range []struct {
		name string
		s    *signer
		id   uint64
		msg  string
	}{
		{"signed 306 s ago", &signer{key: a.key, pem: a.pem, skew: -306 * time.Second}, idA, "Invalid timestamp"},
		{"signed 6 s in the future", &signer{key: a.key, pem: a.pem, skew: 6 * time.Second}, idA, "Invalid timestamp"},
		{"signed by another key", &signer{key: a.key, pem: a.pem, by: b.key}, idA, "Invalid signature"},
		{"for another node's id", a, idB, "Invalid node ID"},
	} {
		err := beat(tc.s, tc.id)
		if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != tc.msg {
			t.Errorf("heartbeat %s: %v, want Unauthenticated %q", tc.name, err, tc.msg)
		}
	}
	if _, err := fleet.SendNodeHeartbeat(context.Background(), &flwr129.SendNodeHeartbeatRequest{Node: &flwr129.Node{NodeId: idA}, HeartbeatInterval: 30}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("an unsigned heartbeat: %v", err)
	}
	// A request's public key must be the one that signed it.
	if _, err := fleet.ActivateNode(a.ctx(t), &flwr129.ActivateNodeRequest{PublicKey: b.pem, HeartbeatInterval: 30}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("ActivateNode of another node's key: %v", err)
	}
	// Within the window, a little drift either way passes.
	for _, skew := range []time.Duration{-300 * time.Second, 4 * time.Second} {
		if err := beat(&signer{key: a.key, pem: a.pem, skew: skew}, idA); err != nil {
			t.Errorf("heartbeat signed %v off: %v", skew, err)
		}
	}
}

// TestCodec129Objects sends a 5 MiB object, the largest Flower 1.29.0
// moves, through the SuperLink's codec both ways.
func TestCodec129Objects(t *testing.T) {
	content := bytes.Repeat([]byte{7, 1, 3}, 5<<20/3)
	in := &flwr129.PushObjectRequest{Node: &flwr129.Node{NodeId: 9}, RunId: 3, ObjectId: "ab", ObjectContent: content}
	c := codec.New(codec.Options{})
	buf, err := c.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(in)
	if !bytes.Equal(buf.Materialize(), want) {
		t.Fatal("the codec's bytes differ from protobuf's")
	}
	out := &flwr129.PushObjectRequest{}
	if err := c.Unmarshal(buf, out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Fatal("the object changed through the codec")
	}
}
