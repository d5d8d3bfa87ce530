package superlink

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
)

// reconnectSeconds is what 1.8.0 answers in every PushTaskResResponse.
const reconnectSeconds = 5

// fleet is the Fleet API: SuperNodes register, ping, pull TaskIns and push
// TaskRes.
type fleet struct {
	flwrproto.UnimplementedFleetServer
	s *state
}

func (f *fleet) CreateNode(_ context.Context, r *flwrproto.CreateNodeRequest) (*flwrproto.CreateNodeResponse, error) {
	id, err := f.s.createNode(r.GetPingInterval())
	if err != nil {
		return nil, err
	}
	return &flwrproto.CreateNodeResponse{Node: &flwrproto.Node{NodeId: id}}, nil
}

func (f *fleet) DeleteNode(_ context.Context, r *flwrproto.DeleteNodeRequest) (*flwrproto.DeleteNodeResponse, error) {
	n := r.GetNode()
	if n == nil {
		return nil, status.Error(codes.InvalidArgument, "superlink: DeleteNode: node is missing: pass the node from CreateNode")
	}
	if n.Anonymous {
		return &flwrproto.DeleteNodeResponse{}, nil // as 1.8.0
	}
	if err := f.s.deleteNode(n.NodeId); err != nil {
		return nil, err
	}
	return &flwrproto.DeleteNodeResponse{}, nil
}

func (f *fleet) Ping(_ context.Context, r *flwrproto.PingRequest) (*flwrproto.PingResponse, error) {
	n := r.GetNode()
	if n == nil {
		return nil, status.Error(codes.InvalidArgument, "superlink: Ping: node is missing: pass the node from CreateNode")
	}
	ok, err := f.s.ping(n.NodeId, r.GetPingInterval())
	if err != nil {
		return nil, err
	}
	return &flwrproto.PingResponse{Success: ok}, nil
}

func (f *fleet) PullTaskIns(_ context.Context, r *flwrproto.PullTaskInsRequest) (*flwrproto.PullTaskInsResponse, error) {
	n := r.GetNode()
	if n == nil || n.Anonymous {
		return &flwrproto.PullTaskInsResponse{}, nil // no anonymous tasks exist
	}
	return &flwrproto.PullTaskInsResponse{TaskInsList: f.s.pullTaskIns(n.NodeId)}, nil
}

func (f *fleet) PushTaskRes(_ context.Context, r *flwrproto.PushTaskResRequest) (*flwrproto.PushTaskResResponse, error) {
	results, err := f.s.pushTaskRes(r.GetTaskResList())
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
	s *state
}

func (d *driver) CreateRun(context.Context, *flwrproto.CreateRunRequest) (*flwrproto.CreateRunResponse, error) {
	id, err := d.s.createRun()
	if err != nil {
		return nil, err
	}
	return &flwrproto.CreateRunResponse{RunId: id}, nil
}

func (d *driver) GetNodes(_ context.Context, r *flwrproto.GetNodesRequest) (*flwrproto.GetNodesResponse, error) {
	return &flwrproto.GetNodesResponse{Nodes: d.s.getNodes(r.GetRunId())}, nil
}

func (d *driver) PushTaskIns(_ context.Context, r *flwrproto.PushTaskInsRequest) (*flwrproto.PushTaskInsResponse, error) {
	ids, err := d.s.pushTaskIns(r.GetTaskInsList())
	if err != nil {
		return nil, err
	}
	return &flwrproto.PushTaskInsResponse{TaskIds: ids}, nil
}

func (d *driver) PullTaskRes(_ context.Context, r *flwrproto.PullTaskResRequest) (*flwrproto.PullTaskResResponse, error) {
	list, err := d.s.pullTaskRes(r.GetTaskIds())
	if err != nil {
		return nil, err
	}
	return &flwrproto.PullTaskResResponse{TaskResList: list}, nil
}
