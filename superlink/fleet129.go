package superlink

import (
	"bytes"
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// fleet129 is Flower 1.29.0's Fleet API (SuperNodes), served beside the
// 1.8.0 Fleet methods under the one service name flwr.proto.Fleet. Every
// call is signed by the node's key (nodeAuth); every call but
// RegisterNode and ActivateNode names a node id, which must be the node
// that holds that key.
type fleet129 struct {
	flwr129.UnimplementedFleetServer
	s    state.LinkState
	auth nodeAuth
	log  *slog.Logger
	// g limits the registrations of each peer, with those of 1.8.0.
	g *nodeGuard
	// keysOnly refuses RegisterNode and UnregisterNode through the Fleet
	// API: keys are registered through the Control API only
	// (--enable-supernode-auth).
	keysOnly bool
}

// sameKey checks that a request's public key is the one that signed it.
func sameKey(signed, asked []byte) error {
	if !bytes.Equal(bytes.TrimSpace(signed), bytes.TrimSpace(asked)) {
		return status.Error(codes.Unauthenticated, "the request's public key is not the key that signed it")
	}
	return nil
}

func (f *fleet129) RegisterNode(ctx context.Context, r *flwr129.RegisterNodeFleetRequest) (*flwr129.RegisterNodeFleetResponse, error) {
	if err := f.g.rate(ctx, "RegisterNode"); err != nil {
		return nil, err
	}
	pk, err := f.admit(ctx, "RegisterNode", false, 0, 1)
	if err != nil {
		return nil, err
	}
	if err := sameKey(pk, r.GetPublicKey()); err != nil {
		return nil, err
	}
	if f.keysOnly {
		return nil, status.Error(codes.FailedPrecondition, "SuperNode authentication is enabled. All SuperNodes must be registered via the CLI.")
	}
	id, err := f.s.RegisterNode(ctx, r.GetPublicKey(), 0)
	if err != nil {
		f.g.stateRefusal(ctx, err)
		return nil, err
	}
	return &flwr129.RegisterNodeFleetResponse{NodeId: id}, nil
}

func (f *fleet129) ActivateNode(ctx context.Context, r *flwr129.ActivateNodeRequest) (*flwr129.ActivateNodeResponse, error) {
	pk, err := f.admit(ctx, "ActivateNode", false, 0, 1)
	if err != nil {
		return nil, err
	}
	if err := sameKey(pk, r.GetPublicKey()); err != nil {
		return nil, err
	}
	id, err := f.s.ActivateNode(ctx, r.GetPublicKey(), r.GetHeartbeatInterval())
	if err != nil {
		return nil, err
	}
	return &flwr129.ActivateNodeResponse{NodeId: id}, nil
}

func (f *fleet129) DeactivateNode(ctx context.Context, r *flwr129.DeactivateNodeRequest) (*flwr129.DeactivateNodeResponse, error) {
	if _, err := f.admit(ctx, "DeactivateNode", true, r.GetNodeId(), 1); err != nil {
		return nil, err
	}
	if err := f.s.DeactivateNode(ctx, r.GetNodeId()); err != nil {
		return nil, err
	}
	return &flwr129.DeactivateNodeResponse{}, nil
}

func (f *fleet129) UnregisterNode(ctx context.Context, r *flwr129.UnregisterNodeFleetRequest) (*flwr129.UnregisterNodeFleetResponse, error) {
	if _, err := f.admit(ctx, "UnregisterNode", true, r.GetNodeId(), 1); err != nil {
		return nil, err
	}
	if f.keysOnly {
		return nil, status.Error(codes.FailedPrecondition, "SuperNode authentication is enabled. All SuperNodes must be unregistered via the CLI.")
	}
	if err := f.s.UnregisterNode(ctx, r.GetNodeId()); err != nil {
		return nil, err
	}
	return &flwr129.UnregisterNodeFleetResponse{}, nil
}

func (f *fleet129) SendNodeHeartbeat(ctx context.Context, r *flwr129.SendNodeHeartbeatRequest) (*flwr129.SendNodeHeartbeatResponse, error) {
	if _, err := f.admit(ctx, "SendNodeHeartbeat", true, r.GetNode().GetNodeId(), 1); err != nil {
		return nil, err
	}
	ok, err := f.s.NodeHeartbeat(ctx, r.GetNode().GetNodeId(), r.GetHeartbeatInterval())
	if err != nil {
		return nil, err
	}
	return &flwr129.SendNodeHeartbeatResponse{Success: ok}, nil
}

func (f *fleet129) PullMessages(ctx context.Context, r *flwr129.PullMessagesRequest) (*flwr129.PullMessagesResponse, error) {
	id := r.GetNode().GetNodeId()
	if _, err := f.admit(ctx, "PullMessages", true, id, 1); err != nil {
		return nil, err
	}
	m, tree, err := f.s.PullInstruction(ctx, id)
	if err != nil || m == nil {
		return &flwr129.PullMessagesResponse{}, err
	}
	return &flwr129.PullMessagesResponse{MessagesList: []*flwr129.Message{m}, MessageObjectTrees: []*flwr129.ObjectTree{tree}}, nil
}

func (f *fleet129) PushMessages(ctx context.Context, r *flwr129.PushMessagesRequest) (*flwr129.PushMessagesResponse, error) {
	id := r.GetNode().GetNodeId()
	if _, err := f.admit(ctx, "PushMessages", true, id, pushCost(r)); err != nil {
		return nil, err
	}
	// A SuperNode pushes one reply at a time (Flower reads only the
	// first); its tree is checked before the state sees it.
	if n := len(r.GetMessagesList()); n > 1 {
		return nil, status.Errorf(codes.InvalidArgument, "Malformed PushMessages: %d messages: a SuperNode pushes one reply per call", n)
	}
	for _, t := range r.GetMessageObjectTrees() {
		if err := state.CheckTreeShape(t); err != nil {
			return nil, err
		}
	}
	var runtime float64
	if l := r.GetClientappRuntimeList(); len(l) > 0 && l[0] > 0 && l[0] < 1e9 {
		runtime = l[0]
	}
	ids, push, err := f.s.PushReplies(ctx, id, r.GetMessagesList(), r.GetMessageObjectTrees(), runtime)
	if err != nil {
		return nil, err
	}
	res := &flwr129.PushMessagesResponse{Reconnect: &flwr129.Reconnect{Reconnect: reconnectSeconds}, Results: map[string]uint32{}, ObjectsToPush: push}
	for _, id := range ids {
		res.Results[id] = 0
	}
	return res, nil
}

// runningRun returns a running run, for a node.
func (f *fleet129) runningRun(ctx context.Context, runID uint64) (*flwr129.Run, error) {
	run, err := f.s.Run(ctx, runID)
	if err != nil {
		return nil, err
	}
	if run.GetStatus().GetStatus() != state.StatusRunning {
		msg := map[string]string{state.StatusPending: "Run is pending.", state.StatusStarting: "Run is starting.", state.StatusFinished: "Run is finished."}[run.GetStatus().GetStatus()]
		if run.GetStatus().GetSubStatus() == state.SubStatusStopped {
			msg += " Stopped by user."
		}
		return nil, status.Error(codes.PermissionDenied, msg)
	}
	return run, nil
}

func (f *fleet129) GetRun(ctx context.Context, r *flwr129.GetRunRequest) (*flwr129.GetRunResponse, error) {
	if _, err := f.admit(ctx, "GetRun", true, r.GetNode().GetNodeId(), 1); err != nil {
		return nil, err
	}
	run, err := f.runningRun(ctx, r.GetRunId())
	if err != nil {
		return nil, err
	}
	return &flwr129.GetRunResponse{Run: run}, nil
}

func (f *fleet129) GetFab(ctx context.Context, r *flwr129.GetFabRequest) (*flwr129.GetFabResponse, error) {
	if _, err := f.admit(ctx, "GetFab", true, r.GetNode().GetNodeId(), 1); err != nil {
		return nil, err
	}
	run, err := f.runningRun(ctx, r.GetRunId())
	if err != nil {
		return nil, err
	}
	if r.GetHashStr() != run.GetFabHash() {
		return nil, status.Errorf(codes.PermissionDenied, "Requested FAB hash %.80s does not match run FAB hash %s.", r.GetHashStr(), run.GetFabHash())
	}
	fab, err := f.s.Fab(ctx, r.GetHashStr())
	if err != nil {
		return nil, err
	}
	return &flwr129.GetFabResponse{Fab: fab}, nil
}

func (f *fleet129) PushObject(ctx context.Context, r *flwr129.PushObjectRequest) (*flwr129.PushObjectResponse, error) {
	id := r.GetNode().GetNodeId()
	if _, err := f.admit(ctx, "PushObject", true, id, 1); err != nil {
		return nil, err
	}
	ok, err := f.s.PushObject(ctx, r.GetRunId(), id, r.GetObjectId(), r.GetObjectContent())
	if err != nil {
		return nil, err
	}
	return &flwr129.PushObjectResponse{Stored: ok}, nil
}

func (f *fleet129) PullObject(ctx context.Context, r *flwr129.PullObjectRequest) (*flwr129.PullObjectResponse, error) {
	id := r.GetNode().GetNodeId()
	if _, err := f.admit(ctx, "PullObject", true, id, 1); err != nil {
		return nil, err
	}
	b, found, avail, err := f.s.PullObject(ctx, r.GetRunId(), id, r.GetObjectId())
	if err != nil {
		return nil, err
	}
	return &flwr129.PullObjectResponse{ObjectFound: found, ObjectAvailable: avail, ObjectContent: b}, nil
}

func (f *fleet129) ConfirmMessageReceived(ctx context.Context, r *flwr129.ConfirmMessageReceivedRequest) (*flwr129.ConfirmMessageReceivedResponse, error) {
	if _, err := f.admit(ctx, "ConfirmMessageReceived", true, r.GetNode().GetNodeId(), 1); err != nil {
		return nil, err
	}
	if err := f.s.ConfirmMessageReceived(ctx, r.GetRunId(), r.GetNode().GetNodeId(), r.GetMessageObjectId()); err != nil {
		return nil, err
	}
	return &flwr129.ConfirmMessageReceivedResponse{}, nil
}
