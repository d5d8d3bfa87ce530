package superlink

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
)

// reconnectSeconds is what 1.8.0 answers in every PushTaskResResponse.
const reconnectSeconds = 5

// fleet is the Fleet API: SuperNodes register, ping, pull TaskIns and push
// TaskRes.
type fleet struct {
	flwrproto.UnimplementedFleetServer
	s state.State
	g *nodeGuard
}

func (f *fleet) CreateNode(ctx context.Context, r *flwrproto.CreateNodeRequest) (*flwrproto.CreateNodeResponse, error) {
	conn, err := f.g.admit(ctx, r.GetPingInterval())
	if err != nil {
		return nil, err
	}
	var id int64
	if conn != nil {
		defer func() { conn.done(id) }()
	}
	identity := peerIdentity(ctx)
	nid, err := f.s.CreateNode(ctx, state.NewNode{PingInterval: r.GetPingInterval(), Identity: identity, Certificate: peerCertificate(ctx),
		MaxNodes: f.g.l.MaxNodes, MaxPerIdentity: f.g.l.MaxPerIdentity})
	if err != nil {
		f.g.stateRefusal(ctx, err)
		return nil, err
	}
	// A certificate revoked while its node was being created: the
	// revocation may have missed the node, so it goes now.
	if err := recheck(ctx); err != nil {
		if derr := f.s.DeleteNode(ctx, nid, identity); derr != nil {
			return nil, derr
		}
		return nil, err
	}
	id = nid
	return &flwrproto.CreateNodeResponse{Node: &flwrproto.Node{NodeId: id}}, nil
}

func (f *fleet) DeleteNode(ctx context.Context, r *flwrproto.DeleteNodeRequest) (*flwrproto.DeleteNodeResponse, error) {
	n := r.GetNode()
	if n == nil {
		return nil, status.Error(codes.InvalidArgument, "DeleteNode: node is missing: pass the node from CreateNode")
	}
	if n.Anonymous {
		return &flwrproto.DeleteNodeResponse{}, nil // as 1.8.0
	}
	if err := f.s.DeleteNode(ctx, n.NodeId, peerIdentity(ctx)); err != nil {
		return nil, err
	}
	if c := f.g.conn(ctx); c != nil {
		c.deleted(n.NodeId)
	}
	return &flwrproto.DeleteNodeResponse{}, nil
}

func (f *fleet) Ping(ctx context.Context, r *flwrproto.PingRequest) (*flwrproto.PingResponse, error) {
	n := r.GetNode()
	if n == nil {
		return nil, status.Error(codes.InvalidArgument, "Ping: node is missing: pass the node from CreateNode")
	}
	if err := f.g.pingInterval(ctx, "Ping", r.GetPingInterval()); err != nil {
		return nil, err
	}
	ok, err := f.s.Ping(ctx, n.NodeId, r.GetPingInterval(), peerIdentity(ctx))
	if err != nil {
		return nil, err
	}
	return &flwrproto.PingResponse{Success: ok}, nil
}

func (f *fleet) PullTaskIns(ctx context.Context, r *flwrproto.PullTaskInsRequest) (*flwrproto.PullTaskInsResponse, error) {
	n := r.GetNode()
	if n == nil || n.Anonymous {
		return &flwrproto.PullTaskInsResponse{}, nil // no anonymous tasks exist
	}
	list, err := f.s.PullTaskIns(ctx, n.NodeId, peerIdentity(ctx))
	if err != nil {
		return nil, err
	}
	return &flwrproto.PullTaskInsResponse{TaskInsList: list}, nil
}

func (f *fleet) PushTaskRes(ctx context.Context, r *flwrproto.PushTaskResRequest) (*flwrproto.PushTaskResResponse, error) {
	results, err := f.s.PushTaskRes(ctx, r.GetTaskResList(), peerIdentity(ctx))
	if err != nil {
		return nil, err
	}
	return &flwrproto.PushTaskResResponse{
		Reconnect: &flwrproto.Reconnect{Reconnect: reconnectSeconds},
		Results:   results,
	}, nil
}

// driver is the Driver API: ServerApps create runs, list nodes, push
// TaskIns and pull TaskRes.
type driver struct {
	flwrproto.UnimplementedDriverServer
	s state.State
}

func (d *driver) CreateRun(ctx context.Context, _ *flwrproto.CreateRunRequest) (*flwrproto.CreateRunResponse, error) {
	id, err := d.s.CreateRun(ctx)
	if err != nil {
		return nil, err
	}
	return &flwrproto.CreateRunResponse{RunId: id}, nil
}

func (d *driver) GetNodes(ctx context.Context, r *flwrproto.GetNodesRequest) (*flwrproto.GetNodesResponse, error) {
	nodes, err := d.s.GetNodes(ctx, r.GetRunId())
	if err != nil {
		return nil, err
	}
	return &flwrproto.GetNodesResponse{Nodes: nodes}, nil
}

func (d *driver) PushTaskIns(ctx context.Context, r *flwrproto.PushTaskInsRequest) (*flwrproto.PushTaskInsResponse, error) {
	ids, err := d.s.PushTaskIns(ctx, r.GetTaskInsList())
	if err != nil {
		return nil, err
	}
	return &flwrproto.PushTaskInsResponse{TaskIds: ids}, nil
}

func (d *driver) PullTaskRes(ctx context.Context, r *flwrproto.PullTaskResRequest) (*flwrproto.PullTaskResResponse, error) {
	list, err := d.s.PullTaskRes(ctx, r.GetTaskIds())
	if err != nil {
		return nil, err
	}
	return &flwrproto.PullTaskResResponse{TaskResList: fitResults(list, MaxMessageSize)}, nil
}
