package load

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
)

// appTokenHeader carries a ServerApp's token on its ServerAppIo calls.
const appTokenHeader = "flwr-app-token"

// messageTTL is the TTL of the ServerApp's messages: Flower's DEFAULT_TTL.
const messageTTL = 43200

// fabPyproject is the pyproject.toml of the workload's FAB: what Flower's
// Control API checks of it.
const fabPyproject = `[project]
name = "sepal-load"
version = "1.0.0"
description = "The FedAvg workload of Sepal's load harness"
license = "Apache-2.0"

[tool.flwr.app]
publisher = "sepal"

[tool.flwr.app.components]
serverapp = "sepal_load.server_app:app"
clientapp = "sepal_load.client_app:app"

[tool.flwr.app.config]
num-server-rounds = 2
`

// workloadFab returns the workload's FAB (a zip of its pyproject.toml)
// and its SHA-256.
func workloadFab() ([]byte, string, error) {
	var b bytes.Buffer
	z := zip.NewWriter(&b)
	f, err := z.Create("pyproject.toml")
	if err == nil {
		_, err = f.Write([]byte(fabPyproject))
	}
	if err == nil {
		err = z.Close()
	}
	if err != nil {
		return nil, "", err
	}
	h := sha256.Sum256(b.Bytes())
	return b.Bytes(), hex.EncodeToString(h[:]), nil
}

// serverApp129 is the workload's ServerApp on a run.
type serverApp129 struct {
	w     *world129
	io    flwr129.ServerAppIoClient
	run   uint64
	token string
	self  *flwr129.Node
}

// runServerApp129 starts the workload's run through the Control API (as
// flwr run), takes its token as a SuperExec does (ListAppsToLaunch,
// RequestToken) and runs it as flwr-serverapp with Flower's FedAvg:
// PullAppInputs, a heartbeat every 24 s or so, GetNodes until every node
// is online, then per round a train and an evaluate message per node
// (PushMessages and PushObject), their replies pulled every ServerPoll
// (PullMessages, PullObject, ConfirmMessageReceived), a log line per
// round (PushLogs); at the end PushAppOutputs and UpdateRunStatus
// (finished, completed). roundDone is called at the end of each round.
// It returns how many replies the last round averaged and each round's
// wall time.
func runServerApp129(ctx context.Context, w *world129, s *SuperLink, tlsCreds credentials.TransportCredentials, roundDone func()) (int, []time.Duration, error) {
	cc, err := grpc.NewClient(s.Control, clientOptions(tlsCreds)...)
	if err != nil {
		return 0, nil, err
	}
	defer cc.Close()
	fab, hash, err := workloadFab()
	if err != nil {
		return 0, nil, err
	}
	sr, err := flwr129.NewControlClient(cc).StartRun(ctx, &flwr129.StartRunRequest{Fab: &flwr129.Fab{HashStr: hash, Content: fab}})
	if err != nil {
		return 0, nil, fmt.Errorf("StartRun: %w", err)
	}
	a := &serverApp129{w: w, run: sr.GetRunId(), self: &flwr129.Node{NodeId: 1}}
	ac, err := grpc.NewClient(s.AppIo, clientOptions(insecure.NewCredentials(), grpc.WithChainUnaryInterceptor(a.withToken))...)
	if err != nil {
		return 0, nil, err
	}
	defer ac.Close()
	a.io = flwr129.NewServerAppIoClient(ac)
	if err := a.takeToken(ctx); err != nil {
		return 0, nil, err
	}
	in, err := a.io.PullAppInputs(ctx, &flwr129.PullAppInputsRequest{Token: a.token})
	if err != nil {
		return 0, nil, fmt.Errorf("PullAppInputs: %w", err)
	}
	hctx, stopBeats := context.WithCancel(ctx)
	defer stopBeats()
	go heartbeats(hctx, 30*time.Second, func(c context.Context) {
		_, _ = a.io.SendAppHeartbeat(c, &flwr129.SendAppHeartbeatRequest{Token: a.token})
	})
	nodes, err := a.waitNodes(ctx)
	if err != nil {
		return 0, nil, err
	}

	model := initialModel(w.o.ModelBytes / 4)
	arrays, err := modelRecord(model)
	if err != nil {
		return 0, nil, err
	}
	var times []time.Duration
	averaged := 0
	for round := 1; round <= w.o.Rounds; round++ {
		start := time.Now()
		config, err := inflatable.ConfigRecord(&flwr129.ConfigRecord{Items: []*flwr129.ConfigRecord_Item{
			{Key: "server-round", Value: &flwr129.ConfigRecordValue{Value: &flwr129.ConfigRecordValue_Sint64{Sint64: int64(round)}}},
		}})
		if err != nil {
			return 0, nil, err
		}
		content := inflatable.RecordDict([]string{"arrays", "config"}, []*inflatable.Tree{arrays, config})
		sum := make([]float64, len(model))
		averaged = 0
		err = a.sendAndReceive(ctx, "train", round, nodes, content, func(id string, objs map[string][]byte) error {
			res, err := messageArray(id, objs)
			if err != nil {
				return err
			}
			if len(res.Data) != 4*len(sum) {
				return fmt.Errorf("a train reply of %d bytes, want %d", len(res.Data), 4*len(sum))
			}
			for i := range sum {
				sum[i] += float64(math.Float32frombits(binary.LittleEndian.Uint32(res.Data[4*i:])))
			}
			averaged++
			return nil
		})
		if err != nil {
			return 0, nil, err
		}
		for i := range model {
			model[i] = float32(sum[i] / float64(averaged))
		}
		sum = nil
		if arrays, err = modelRecord(model); err != nil {
			return 0, nil, err
		}
		content = inflatable.RecordDict([]string{"arrays", "config"}, []*inflatable.Tree{arrays, config})
		err = a.sendAndReceive(ctx, "evaluate", round, nodes, content, func(id string, objs map[string][]byte) error { return nil })
		if err != nil {
			return 0, nil, err
		}
		if _, err := a.io.PushLogs(ctx, &flwr129.PushLogsRequest{Node: a.self, RunId: a.run, Logs: []string{fmt.Sprintf("[ROUND %d/%d] aggregate_train: Received %d results and 0 failures\n", round, w.o.Rounds, averaged)}}); err != nil {
			return 0, nil, fmt.Errorf("PushLogs: %w", err)
		}
		times = append(times, time.Since(start))
		roundDone()
		w.o.Logger.Info("round done", "round", round, "averaged", averaged, "seconds", time.Since(start).Seconds())
	}
	if _, err := a.io.PushAppOutputs(ctx, &flwr129.PushAppOutputsRequest{Token: a.token, RunId: a.run, Context: in.GetContext()}); err != nil {
		return 0, nil, fmt.Errorf("PushAppOutputs: %w", err)
	}
	if _, err := a.io.UpdateRunStatus(ctx, &flwr129.UpdateRunStatusRequest{RunId: a.run, RunStatus: &flwr129.RunStatus{Status: "finished", SubStatus: "completed"}}); err != nil {
		return 0, nil, fmt.Errorf("UpdateRunStatus: %w", err)
	}
	return averaged, times, nil
}

// withToken adds the run's token to every ServerAppIo call once there is
// one, as Flower's AppIoTokenClientInterceptor.
func (a *serverApp129) withToken(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if a.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, appTokenHeader, a.token)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// takeToken waits for the run to be listed to launch and takes its token.
func (a *serverApp129) takeToken(ctx context.Context) error {
	for {
		l, err := a.io.ListAppsToLaunch(ctx, &flwr129.ListAppsToLaunchRequest{})
		if err != nil {
			return fmt.Errorf("ListAppsToLaunch: %w", err)
		}
		for _, id := range l.GetRunIds() {
			if id != a.run {
				continue
			}
			t, err := a.io.RequestToken(ctx, &flwr129.RequestTokenRequest{RunId: id})
			if err != nil {
				return fmt.Errorf("RequestToken: %w", err)
			}
			if t.GetToken() != "" {
				a.token = t.GetToken()
				return nil
			}
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitNodes returns the nodes online once there are as many as the
// workload's.
func (a *serverApp129) waitNodes(ctx context.Context) ([]uint64, error) {
	for {
		r, err := a.io.GetNodes(ctx, &flwr129.GetNodesRequest{RunId: a.run})
		if err != nil {
			return nil, fmt.Errorf("GetNodes: %w", err)
		}
		if len(r.GetNodes()) >= a.w.o.Nodes {
			ids := make([]uint64, len(r.GetNodes()))
			for i, n := range r.GetNodes() {
				ids[i] = n.GetNodeId()
			}
			return ids, nil
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// sendAndReceive sends a message of content to every node (Flower's
// Grid.send_and_receive) and gives each reply's objects to onReply as it
// comes, once they are pulled and confirmed.
func (a *serverApp129) sendAndReceive(ctx context.Context, typ string, round int, nodes []uint64, content *inflatable.Tree, onReply func(string, map[string][]byte) error) error {
	msgs := make([]*flwr129.Message, len(nodes))
	trees := make([]*inflatable.Tree, len(nodes))
	protos := make([]*flwr129.ObjectTree, len(nodes))
	now := secondsNow()
	for i, n := range nodes {
		md := &flwr129.Metadata{RunId: a.run, SrcNodeId: 1, DstNodeId: n, GroupId: fmt.Sprint(round), Ttl: messageTTL, MessageType: typ, CreatedAt: now}
		t, err := inflatable.Message(md, content, nil)
		if err != nil {
			return err
		}
		md.MessageId = t.ID
		msgs[i], trees[i], protos[i] = &flwr129.Message{Metadata: md, Content: &flwr129.RecordDict{}}, t, t.Proto()
	}
	r, err := a.io.PushMessages(ctx, &flwr129.PushAppMessagesRequest{RunId: a.run, MessagesList: msgs, MessageObjectTrees: protos})
	if err != nil {
		return fmt.Errorf("PushMessages: %w", err)
	}
	toPush := map[string]bool{}
	for _, id := range r.GetObjectsToPush() {
		toPush[id] = true
	}
	for _, t := range trees {
		a.w.held.message(t, toPush)
	}
	// The messages share their content: its objects are pushed once.
	all := &inflatable.Tree{Children: trees}
	push := func(ctx context.Context, id string, c []byte) (*flwr129.PushObjectResponse, error) {
		return a.io.PushObject(ctx, &flwr129.PushObjectRequest{Node: a.self, RunId: a.run, ObjectId: id, ObjectContent: c})
	}
	if err := pushObjects(ctx, a.w, &a.w.appIo, all, r.GetObjectsToPush(), push); err != nil {
		return err
	}
	pending := map[string]bool{}
	var ids []string
	for _, id := range r.GetMessageIds() {
		if id == "" {
			return fmt.Errorf("PushMessages stored not every %s message", typ)
		}
		pending[id] = true
		ids = append(ids, id)
	}
	for len(pending) > 0 {
		pr, err := a.io.PullMessages(ctx, &flwr129.PullAppMessagesRequest{RunId: a.run, MessageIds: ids})
		if err != nil {
			return fmt.Errorf("PullMessages: %w", err)
		}
		for i, m := range pr.GetMessagesList() {
			md := m.GetMetadata()
			if m.GetError() != nil {
				return fmt.Errorf("a %s reply is an error: %v", typ, m.GetError())
			}
			if i >= len(pr.GetMessageObjectTrees()) || !pending[md.GetReplyToMessageId()] {
				return fmt.Errorf("PullMessages: an unexpected reply %s (to %s)", md.GetMessageId(), md.GetReplyToMessageId())
			}
			objs, err := pullObjects(ctx, a.w, &a.w.appIo, treeIDs(pr.GetMessageObjectTrees()[i]), func(ctx context.Context, id string) (*flwr129.PullObjectResponse, error) {
				return a.io.PullObject(ctx, &flwr129.PullObjectRequest{Node: a.self, RunId: a.run, ObjectId: id})
			})
			if err != nil {
				return err
			}
			a.w.held.confirm(md.GetMessageId())
			if _, err := a.io.ConfirmMessageReceived(ctx, &flwr129.ConfirmMessageReceivedRequest{Node: a.self, RunId: a.run, MessageObjectId: md.GetMessageId()}); err != nil {
				return fmt.Errorf("ConfirmMessageReceived: %w", err)
			}
			if err := onReply(md.GetMessageId(), objs); err != nil {
				return fmt.Errorf("%s reply of node %d: %w", typ, md.GetSrcNodeId(), err)
			}
			delete(pending, md.GetReplyToMessageId())
		}
		ids = ids[:0]
		for id := range pending {
			ids = append(ids, id)
		}
		if len(pending) > 0 && sleepCtx(ctx, a.w.o.ServerPoll) != nil {
			return ctx.Err()
		}
	}
	return nil
}

// initialModel is the model the ServerApp starts from: values that make
// every chunk of it differ, as a real model's do.
func initialModel(n int) []float32 {
	m := make([]float32, n)
	for i := range m {
		m[i] = float32(i%1000003) * 1e-6
	}
	return m
}

// modelRecord is the ArrayRecord of a model: one float32 array, .npy
// encoded as Flower's NumPy arrays are.
func modelRecord(model []float32) (*inflatable.Tree, error) {
	data := make([]byte, 4*len(model))
	for i, v := range model {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	npy, err := app.EncodeNPY(app.Array{DType: "float32", Shape: []int{len(model)}, Data: data})
	if err != nil {
		return nil, err
	}
	return inflatable.ArrayRecord([]string{"0"}, []*inflatable.Tree{inflatable.Array("float32", []int{len(model)}, "numpy.ndarray", npy)}), nil
}
