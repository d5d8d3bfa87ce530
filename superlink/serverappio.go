package superlink

import (
	"context"
	"log/slog"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
)

// AppTokenHeader carries a ServerApp's token on every ServerAppIo call but
// those of the SuperExec (ListAppsToLaunch, RequestToken, GetRun).
const AppTokenHeader = "flwr-app-token"

// serverAppIo is Flower 1.29.0's ServerAppIo API: SuperExec processes
// find runs to launch and take their tokens; ServerApp processes, each
// holding the token of its run, read their inputs, send messages to
// nodes, pull replies, move objects, push logs and update their run's
// status. A token opens its own run only.
type serverAppIo struct {
	flwr129.UnimplementedServerAppIoServer
	s   state.LinkState
	log *slog.Logger
}

// tokenRun returns the run of the token in ctx's metadata; with want != 0
// it must be that run. Flower's words: Unauthenticated "Authentication
// failed." for a missing or unknown token.
func (a *serverAppIo) tokenRun(ctx context.Context, want uint64) (uint64, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(AppTokenHeader)
	if len(v) != 1 || v[0] == "" {
		return 0, status.Error(codes.Unauthenticated, "Authentication failed.")
	}
	run, ok, err := a.s.RunOfToken(ctx, v[0])
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, status.Error(codes.Unauthenticated, "Authentication failed.")
	}
	if want != 0 && run != want {
		return 0, status.Errorf(codes.PermissionDenied, "the app token is for run %d, not run %d", run, want)
	}
	return run, nil
}

func (a *serverAppIo) ListAppsToLaunch(ctx context.Context, _ *flwr129.ListAppsToLaunchRequest) (*flwr129.ListAppsToLaunchResponse, error) {
	runs, err := a.s.LinkRuns(ctx, 0, state.StatusPending)
	if err != nil {
		return nil, err
	}
	res := &flwr129.ListAppsToLaunchResponse{}
	for _, r := range runs {
		res.RunIds = append(res.RunIds, r.GetRunId())
	}
	return res, nil
}

func (a *serverAppIo) RequestToken(ctx context.Context, r *flwr129.RequestTokenRequest) (*flwr129.RequestTokenResponse, error) {
	tok, err := a.s.RequestToken(ctx, r.GetRunId())
	if err != nil {
		return nil, err
	}
	return &flwr129.RequestTokenResponse{Token: tok}, nil
}

func (a *serverAppIo) GetRun(ctx context.Context, r *flwr129.GetRunRequest) (*flwr129.GetRunResponse, error) {
	run, err := a.s.Run(ctx, r.GetRunId())
	if status.Code(err) == codes.NotFound {
		return &flwr129.GetRunResponse{}, nil // as Flower
	}
	if err != nil {
		return nil, err
	}
	return &flwr129.GetRunResponse{Run: run}, nil
}

func (a *serverAppIo) SendAppHeartbeat(ctx context.Context, r *flwr129.SendAppHeartbeatRequest) (*flwr129.SendAppHeartbeatResponse, error) {
	if _, err := a.tokenRun(ctx, 0); err != nil {
		return nil, err
	}
	ok, err := a.s.AppHeartbeat(ctx, r.GetToken())
	if err != nil {
		return nil, err
	}
	return &flwr129.SendAppHeartbeatResponse{Success: ok}, nil
}

func (a *serverAppIo) PullAppInputs(ctx context.Context, r *flwr129.PullAppInputsRequest) (*flwr129.PullAppInputsResponse, error) {
	run, err := a.tokenRun(ctx, 0)
	if err != nil {
		return nil, err
	}
	if r.GetToken() != "" {
		if own, ok, err := a.s.RunOfToken(ctx, r.GetToken()); err != nil || !ok || own != run {
			return nil, status.Error(codes.PermissionDenied, "Invalid token.")
		}
	}
	c, rr, fab, err := a.s.StartApp(ctx, run)
	if err != nil {
		return nil, err
	}
	return &flwr129.PullAppInputsResponse{Context: c, Run: rr, Fab: fab}, nil
}

func (a *serverAppIo) PushAppOutputs(ctx context.Context, r *flwr129.PushAppOutputsRequest) (*flwr129.PushAppOutputsResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	if err := a.s.SetAppContext(ctx, r.GetRunId(), r.GetContext()); err != nil {
		return nil, err
	}
	return &flwr129.PushAppOutputsResponse{}, nil
}

// superLinkNode checks that an object call names the SuperLink's node, as
// the ServerApp does.
func superLinkNode(n *flwr129.Node) error {
	if n.GetNodeId() != state.SuperLinkNodeID {
		return status.Error(codes.FailedPrecondition, "Unexpected node ID.")
	}
	return nil
}

func (a *serverAppIo) PushObject(ctx context.Context, r *flwr129.PushObjectRequest) (*flwr129.PushObjectResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	if err := superLinkNode(r.GetNode()); err != nil {
		return nil, err
	}
	ok, err := a.s.PushObject(ctx, r.GetRunId(), state.SuperLinkNodeID, r.GetObjectId(), r.GetObjectContent())
	if err != nil {
		return nil, err
	}
	return &flwr129.PushObjectResponse{Stored: ok}, nil
}

func (a *serverAppIo) PullObject(ctx context.Context, r *flwr129.PullObjectRequest) (*flwr129.PullObjectResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	if err := superLinkNode(r.GetNode()); err != nil {
		return nil, err
	}
	b, found, avail, err := a.s.PullObject(ctx, r.GetRunId(), state.SuperLinkNodeID, r.GetObjectId())
	if err != nil {
		return nil, err
	}
	return &flwr129.PullObjectResponse{ObjectFound: found, ObjectAvailable: avail, ObjectContent: b}, nil
}

func (a *serverAppIo) ConfirmMessageReceived(ctx context.Context, r *flwr129.ConfirmMessageReceivedRequest) (*flwr129.ConfirmMessageReceivedResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	if err := a.s.ConfirmMessageReceived(ctx, r.GetRunId(), state.SuperLinkNodeID, r.GetMessageObjectId()); err != nil {
		return nil, err
	}
	return &flwr129.ConfirmMessageReceivedResponse{}, nil
}

func (a *serverAppIo) GetFederationOptions(ctx context.Context, r *flwr129.GetFederationOptionsRequest) (*flwr129.GetFederationOptionsResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	return nil, status.Error(codes.Unimplemented, "GetFederationOptions is to be removed (Flower 1.29.0 does not implement it either)")
}

func (a *serverAppIo) UpdateRunStatus(ctx context.Context, r *flwr129.UpdateRunStatusRequest) (*flwr129.UpdateRunStatusResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	if err := a.s.UpdateRunStatus(ctx, r.GetRunId(), r.GetRunStatus()); err != nil {
		return nil, err
	}
	return &flwr129.UpdateRunStatusResponse{}, nil
}

func (a *serverAppIo) PushLogs(ctx context.Context, r *flwr129.PushLogsRequest) (*flwr129.PushLogsResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	if err := a.s.PushLogs(ctx, r.GetRunId(), strings.Join(r.GetLogs(), "")); err != nil {
		return nil, err
	}
	return &flwr129.PushLogsResponse{}, nil
}

func (a *serverAppIo) PushMessages(ctx context.Context, r *flwr129.PushAppMessagesRequest) (*flwr129.PushAppMessagesResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	for _, t := range r.GetMessageObjectTrees() {
		if err := state.CheckTreeShape(t); err != nil {
			return nil, err
		}
	}
	ids, push, err := a.s.PushInstructions(ctx, r.GetRunId(), r.GetMessagesList(), r.GetMessageObjectTrees())
	if err != nil {
		return nil, err
	}
	return &flwr129.PushAppMessagesResponse{MessageIds: ids, ObjectsToPush: push}, nil
}

func (a *serverAppIo) PullMessages(ctx context.Context, r *flwr129.PullAppMessagesRequest) (*flwr129.PullAppMessagesResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	msgs, trees, err := a.s.PullReplies(ctx, r.GetRunId(), r.GetMessageIds())
	if err != nil {
		return nil, err
	}
	return &flwr129.PullAppMessagesResponse{MessagesList: msgs, MessageObjectTrees: trees}, nil
}

func (a *serverAppIo) GetNodes(ctx context.Context, r *flwr129.GetNodesRequest) (*flwr129.GetNodesResponse, error) {
	if _, err := a.tokenRun(ctx, r.GetRunId()); err != nil {
		return nil, err
	}
	ids, err := a.s.OnlineNodes(ctx, r.GetRunId())
	if err != nil {
		return nil, err
	}
	res := &flwr129.GetNodesResponse{}
	for _, id := range ids {
		res.Nodes = append(res.Nodes, &flwr129.Node{NodeId: id})
	}
	return res, nil
}
