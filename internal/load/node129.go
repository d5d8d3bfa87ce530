package load

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
)

// Flower 1.29.0's node signature headers (py/flwr/common/constant.py).
const (
	publicKeyHeader = "flwr-public-key-bin"
	timestampHeader = "flwr-timestamp"
	signatureHeader = "flwr-signature-bin"
)

// signer signs every call of a SuperNode's Fleet client as Flower
// 1.29.0's NodeAuthClientInterceptor: the node's public key (PEM), the
// time (ISO 8601, microseconds) and an ECDSA-SHA256 signature of it.
type signer struct {
	key   *ecdsa.PrivateKey
	pem   []byte
	calls func()
}

func newSigner(calls func()) (*signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, err
	}
	return &signer{key: k, pem: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), calls: calls}, nil
}

func (s *signer) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ts := time.Now().UTC().Format("2006-01-02T15:04:05.000000+00:00")
	h := sha256.Sum256([]byte(ts))
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, h[:])
	if err != nil {
		return err
	}
	s.calls()
	ctx = metadata.AppendToOutgoingContext(ctx, publicKeyHeader, string(s.pem), timestampHeader, ts, signatureHeader, string(sig))
	return invoker(ctx, method, req, reply, cc, opts...)
}

// node129 is a SuperNode of the Flower 1.29.0 workload.
type node129 struct {
	w     *world129
	index int
	fleet flwr129.FleetClient
	self  *flwr129.Node
	runs  map[uint64]bool // runs whose Run and FAB it fetched
	fits  int
}

// runNode129 runs SuperNode index until ctx ends, as Flower 1.29.0's
// flower-supernode: it registers its key, activates, heartbeats every
// 24 s or so, and pulls a message every NodePoll while none comes; for
// each message it pulls the objects, confirms it received them, answers
// as the ClientApp and pushes the reply with the objects the SuperLink
// asks for. Once ctx ends it deactivates and unregisters.
func runNode129(ctx context.Context, w *world129, addr string, creds credentials.TransportCredentials, index int) error {
	sg, err := newSigner(func() { w.fleetCalls.Add(1) })
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(addr, clientOptions(creds, grpc.WithChainUnaryInterceptor(sg.intercept))...)
	if err != nil {
		return err
	}
	defer conn.Close()
	n := &node129{w: w, index: index, fleet: flwr129.NewFleetClient(conn), runs: map[uint64]bool{}}
	if _, err := n.fleet.RegisterNode(ctx, &flwr129.RegisterNodeFleetRequest{PublicKey: sg.pem}); err != nil {
		return fmt.Errorf("RegisterNode: %w", err)
	}
	r, err := n.fleet.ActivateNode(ctx, &flwr129.ActivateNodeRequest{PublicKey: sg.pem, HeartbeatInterval: 30})
	if err != nil {
		return fmt.Errorf("ActivateNode: %w", err)
	}
	n.self = &flwr129.Node{NodeId: r.GetNodeId()}
	defer func() {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = n.fleet.DeactivateNode(c, &flwr129.DeactivateNodeRequest{NodeId: n.self.NodeId})
		_, _ = n.fleet.UnregisterNode(c, &flwr129.UnregisterNodeFleetRequest{NodeId: n.self.NodeId})
	}()
	w.o.Logger.Info("node joined", "node", index, "node_id", n.self.NodeId)
	go heartbeats(ctx, 30*time.Second, func(c context.Context) {
		_, _ = n.fleet.SendNodeHeartbeat(c, &flwr129.SendNodeHeartbeatRequest{Node: n.self, HeartbeatInterval: 30})
	})
	for ctx.Err() == nil {
		got, err := n.once(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if !got && sleepCtx(ctx, w.o.NodePoll) != nil {
			return nil
		}
	}
	return nil
}

// once pulls a message and, if one came, answers it.
func (n *node129) once(ctx context.Context) (bool, error) {
	r, err := n.fleet.PullMessages(ctx, &flwr129.PullMessagesRequest{Node: n.self})
	if err != nil {
		return false, fmt.Errorf("PullMessages: %w", err)
	}
	if len(r.GetMessagesList()) == 0 {
		return false, nil
	}
	if len(r.GetMessageObjectTrees()) == 0 {
		return false, errors.New("PullMessages: a message without its object tree")
	}
	m, tree := r.GetMessagesList()[0], r.GetMessageObjectTrees()[0]
	md := m.GetMetadata()
	run := md.GetRunId()
	if !n.runs[run] {
		rr, err := n.fleet.GetRun(ctx, &flwr129.GetRunRequest{Node: n.self, RunId: run})
		if err != nil {
			return false, fmt.Errorf("GetRun: %w", err)
		}
		if _, err := n.fleet.GetFab(ctx, &flwr129.GetFabRequest{Node: n.self, HashStr: rr.GetRun().GetFabHash(), RunId: run}); err != nil {
			return false, fmt.Errorf("GetFab: %w", err)
		}
		n.runs[run] = true
	}
	objs, err := pullObjects(ctx, n.w, &n.w.fleet, treeIDs(tree), func(ctx context.Context, id string) (*flwr129.PullObjectResponse, error) {
		return n.fleet.PullObject(ctx, &flwr129.PullObjectRequest{Node: n.self, RunId: run, ObjectId: id})
	})
	if err != nil {
		return false, err
	}
	n.w.held.confirm(md.GetMessageId())
	if _, err := n.fleet.ConfirmMessageReceived(ctx, &flwr129.ConfirmMessageReceivedRequest{Node: n.self, RunId: run, MessageObjectId: md.GetMessageId()}); err != nil {
		return false, fmt.Errorf("ConfirmMessageReceived: %w", err)
	}
	started := time.Now()
	content, err := n.answer(md, tree.GetObjectId(), objs)
	if err != nil {
		return false, fmt.Errorf("%s message %s: %w", md.GetMessageType(), md.GetMessageId(), err)
	}
	now := secondsNow()
	rmd := &flwr129.Metadata{
		RunId: run, SrcNodeId: n.self.NodeId, DstNodeId: 1, ReplyToMessageId: md.GetMessageId(),
		GroupId: md.GetGroupId(), MessageType: md.GetMessageType(), CreatedAt: now,
		Ttl: md.GetCreatedAt() + md.GetTtl() - now,
	}
	reply, err := inflatable.Message(rmd, content, nil)
	if err != nil {
		return false, err
	}
	rmd.MessageId = reply.ID
	pm := &flwr129.Message{Metadata: rmd, Content: &flwr129.RecordDict{}}
	pr, err := n.fleet.PushMessages(ctx, &flwr129.PushMessagesRequest{
		Node: n.self, MessagesList: []*flwr129.Message{pm}, MessageObjectTrees: []*flwr129.ObjectTree{reply.Proto()},
		ClientappRuntimeList: []float64{time.Since(started).Seconds()},
	})
	if err != nil {
		return false, fmt.Errorf("PushMessages: %w", err)
	}
	toPush := map[string]bool{}
	for _, id := range pr.GetObjectsToPush() {
		toPush[id] = true
	}
	n.w.held.message(reply, toPush)
	err = pushObjects(ctx, n.w, &n.w.fleet, reply, pr.GetObjectsToPush(), func(ctx context.Context, id string, c []byte) (*flwr129.PushObjectResponse, error) {
		return n.fleet.PushObject(ctx, &flwr129.PushObjectRequest{Node: n.self, RunId: run, ObjectId: id, ObjectContent: c})
	})
	return true, err
}

// answer is the ClientApp: train returns the model it got changed by a
// little that differs per node and round (so that no two replies share
// a chunk, as trained models do not) with its metrics; evaluate returns
// metrics.
func (n *node129) answer(md *flwr129.Metadata, msgID string, objs map[string][]byte) (*inflatable.Tree, error) {
	eval, err := evalMetrics(10, 0.25)
	if err != nil {
		return nil, err
	}
	switch md.GetMessageType() {
	case "evaluate":
		return inflatable.RecordDict([]string{"metrics"}, []*inflatable.Tree{eval}), nil
	case "train":
	default:
		return nil, fmt.Errorf("unexpected message type %q", md.GetMessageType())
	}
	model, err := messageArray(msgID, objs)
	if err != nil {
		return nil, err
	}
	n.fits++
	delta := float32(n.index+1)/64 + float32(n.fits)/4096
	for i := 0; i+4 <= len(model.Data); i += 4 {
		v := math.Float32frombits(binary.LittleEndian.Uint32(model.Data[i:])) + delta
		binary.LittleEndian.PutUint32(model.Data[i:], math.Float32bits(v))
	}
	data, err := app.EncodeNPY(model)
	if err != nil {
		return nil, err
	}
	metrics, err := inflatable.MetricRecord(&flwr129.MetricRecord{Items: []*flwr129.MetricRecord_Item{
		{Key: "train_loss", Value: &flwr129.MetricRecordValue{Value: &flwr129.MetricRecordValue_Double{Double: 0.5}}},
		{Key: "num-examples", Value: &flwr129.MetricRecordValue{Value: &flwr129.MetricRecordValue_Sint64{Sint64: 10}}},
	}})
	if err != nil {
		return nil, err
	}
	arrays := inflatable.ArrayRecord([]string{"0"}, []*inflatable.Tree{inflatable.Array(model.DType, model.Shape, "numpy.ndarray", data)})
	return inflatable.RecordDict([]string{"arrays", "metrics"}, []*inflatable.Tree{arrays, metrics}), nil
}

// evalMetrics is an evaluate reply's MetricRecord.
func evalMetrics(examples int64, loss float64) (*inflatable.Tree, error) {
	return inflatable.MetricRecord(&flwr129.MetricRecord{Items: []*flwr129.MetricRecord_Item{
		{Key: "eval_loss", Value: &flwr129.MetricRecordValue{Value: &flwr129.MetricRecordValue_Double{Double: loss}}},
		{Key: "num-examples", Value: &flwr129.MetricRecordValue{Value: &flwr129.MetricRecordValue_Sint64{Sint64: examples}}},
	}})
}

// messageArray reads the one array of a message's "arrays" record, from
// the message's objects.
func messageArray(msgID string, objs map[string][]byte) (app.Array, error) {
	get := func(id string) []byte { return objs[id] }
	_, kids, err := inflatable.Parse(get(msgID))
	if err != nil || len(kids) != 1 {
		return app.Array{}, fmt.Errorf("the message object: %v (children %d, want its RecordDict)", err, len(kids))
	}
	records, err := inflatable.Refs(get(kids[0]), "RecordDict")
	if err != nil {
		return app.Array{}, err
	}
	arrays, err := inflatable.Refs(get(records["arrays"]), "ArrayRecord")
	if err != nil {
		return app.Array{}, fmt.Errorf("record %q: %w", "arrays", err)
	}
	if len(arrays) != 1 {
		return app.Array{}, fmt.Errorf("the ArrayRecord holds %d arrays, want 1", len(arrays))
	}
	for _, id := range arrays {
		meta, data, err := inflatable.ArrayData(get(id), get)
		if err != nil {
			return app.Array{}, err
		}
		a, err := app.DecodeNPY(data)
		if err != nil {
			return app.Array{}, err
		}
		if a.DType != meta.DType || a.DType != "float32" {
			return app.Array{}, fmt.Errorf("an array of %s (Array says %s), want float32", a.DType, meta.DType)
		}
		return a, nil
	}
	panic("unreachable")
}
