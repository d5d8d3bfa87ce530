package flwr129_test

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
)

// unimplemented129 gives the second embedded Unimplemented server a field
// name of its own.
type unimplemented129 = flwr129.UnimplementedFleetServer

type bothFleets struct {
	flwrproto.UnimplementedFleetServer
	unimplemented129
}

func (bothFleets) GetRun(_ context.Context, r *flwr129.GetRunRequest) (*flwr129.GetRunResponse, error) {
	return &flwr129.GetRunResponse{Run: &flwr129.Run{RunId: r.GetRunId() + 1}}, nil
}

func (bothFleets) CreateNode(context.Context, *flwrproto.CreateNodeRequest) (*flwrproto.CreateNodeResponse, error) {
	return &flwrproto.CreateNodeResponse{Node: &flwrproto.Node{NodeId: 42}}, nil
}

// TestOneFleetServiceBothGenerations serves Flower 1.8.0's and 1.29.0's
// Fleet methods as one flwr.proto.Fleet service in one binary (both
// packages' messages registered), and checks that clients reach each by
// Flower's path and that interceptors see Flower's path.
func TestOneFleetServiceBothGenerations(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		mu.Lock()
		seen = append(seen, info.FullMethod)
		mu.Unlock()
		return h(ctx, req)
	}))
	desc := flwr129.FlowerService(&flwr129.Fleet_ServiceDesc)
	if desc.ServiceName != flwrproto.Fleet_ServiceDesc.ServiceName {
		t.Fatalf("service name %q, want Flower's %q", desc.ServiceName, flwrproto.Fleet_ServiceDesc.ServiceName)
	}
	desc.Methods = append(desc.Methods, flwrproto.Fleet_ServiceDesc.Methods...)
	desc.HandlerType = (*interface {
		flwrproto.FleetServer
		flwr129.FleetServer
	})(nil)
	srv.RegisterService(&desc, bothFleets{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()

	cc, err := grpc.NewClient(lis.Addr().String(), append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx := context.Background()
	r, err := flwr129.NewFleetClient(cc).GetRun(ctx, &flwr129.GetRunRequest{RunId: 6})
	if err != nil || r.GetRun().GetRunId() != 7 {
		t.Fatalf("1.29 GetRun: %v, %v", r, err)
	}
	n, err := flwrproto.NewFleetClient(cc).CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil || n.GetNode().GetNodeId() != 42 {
		t.Fatalf("1.8 CreateNode: %v, %v", n, err)
	}
	// Without ClientOptions the generated client calls our package's path,
	// which nobody serves.
	plain, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := flwr129.NewFleetClient(plain).GetRun(ctx, &flwr129.GetRunRequest{}); err == nil {
		t.Fatal("a call to /sepal.flwr129.Fleet/GetRun was served")
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"/flwr.proto.Fleet/GetRun", "/flwr.proto.Fleet/CreateNode"}
	if len(seen) != 2 || seen[0] != want[0] || seen[1] != want[1] {
		t.Fatalf("interceptors saw %v, want %v", seen, want)
	}
}

func TestFlowerPath(t *testing.T) {
	for in, want := range map[string]string{
		flwr129.Control_StreamLogs_FullMethodName: "/flwr.proto.Control/StreamLogs",
		"/flwr.proto.Fleet/Ping":                  "/flwr.proto.Fleet/Ping",
		"/grpc.health.v1.Health/Check":            "/grpc.health.v1.Health/Check",
	} {
		if got := flwr129.FlowerPath(in); got != want {
			t.Errorf("FlowerPath(%q) = %q, want %q", in, got, want)
		}
	}
}
