package superlink

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
)

// TestServeHealthAndSeparation: each port answers the standard health
// service for its own API only; the Driver API is not reachable on the
// Fleet port, nor the Fleet API on the Driver port.
func TestServeHealthAndSeparation(t *testing.T) {
	f := start(t)
	ctx := ctxT(t)
	check := func(name string, c healthpb.HealthClient, service string, want codes.Code) {
		t.Helper()
		r, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if status.Code(err) != want {
			t.Errorf("%s health %q: %v %v, want %v", name, service, r, err, want)
		}
		if want == codes.OK && r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s health %q: %v", name, service, r.Status)
		}
	}
	fh, dh := healthpb.NewHealthClient(f.fleetConn), healthpb.NewHealthClient(f.driverConn)
	check("fleet", fh, "", codes.OK)
	check("fleet", fh, "flwr.proto.Fleet", codes.OK)
	check("fleet", fh, "flwr.proto.Driver", codes.NotFound)
	check("driver", dh, "", codes.OK)
	check("driver", dh, "flwr.proto.Driver", codes.OK)
	check("driver", dh, "flwr.proto.Fleet", codes.NotFound)

	_, err := flwrproto.NewDriverClient(f.fleetConn).CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("CreateRun on the Fleet port: %v, want Unimplemented", err)
	}
	_, err = flwrproto.NewFleetClient(f.driverConn).CreateNode(ctx, &flwrproto.CreateNodeRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("CreateNode on the Driver port: %v, want Unimplemented", err)
	}
}

// TestServeStops: Serve returns nil soon after its context ends, even with
// a client connected, and the ports are closed.
func TestServeStops(t *testing.T) {
	creds, caFile := testCerts(t)
	fl, _ := net.Listen("tcp", "127.0.0.1:0")
	dl, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	sl := New(Options{State: memstate.New(memstate.Options{}), ShutdownGrace: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go func() { done <- sl.Serve(ctx, Listeners{Fleet: fl, Driver: dl, FleetCreds: creds, DriverCreds: creds}) }()
	conn := dial(t, fl.Addr().String(), caFile)
	defer conn.Close()
	if _, err := flwrproto.NewFleetClient(conn).CreateNode(ctxT(t), &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	for _, a := range []net.Addr{fl.Addr(), dl.Addr()} {
		if c, err := net.DialTimeout("tcp", a.String(), time.Second); err == nil {
			c.Close()
			t.Errorf("%s still accepts connections after Serve returned", a)
		}
	}
	if err := sl.Serve(context.Background(), Listeners{}); err == nil {
		t.Error("Serve without a listener did not fail")
	}
	plain := New(Options{State: plainState{memstate.New(memstate.Options{})}})
	cl, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := plain.Serve(context.Background(), Listeners{Control: cl}); err == nil || !strings.Contains(err.Error(), "state.LinkState") {
		t.Errorf("Control on a state of 1.8.0 only: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("New without a State did not panic")
		}
	}()
	New(Options{})
}

// TestRecoverInterceptor: a handler that panics answers Internal and the
// panic is logged, instead of the process dying.
func TestRecoverInterceptor(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	ic := recoverInterceptor(slog.New(slog.NewTextHandler(logs, nil)))
	_, err := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/flwr.proto.Fleet/Ping"}, func(context.Context, any) (any, error) {
		var m map[string]int
		//lint:ignore SA5000 the panic is the point
		m["x"] = 1 // panics
		return nil, nil
	})
	if status.Code(err) != codes.Internal || !strings.Contains(logs.String(), "handler panicked") {
		t.Fatalf("got %v, log %q", err, logs)
	}
}

// TestOptionsState: the SuperLink serves the state it is given, and finds
// arrays in it through the optional state.BlobFinder.
func TestOptionsState(t *testing.T) {
	var st *memstate.State
	f := startWith(t, func(_ testing.TB, now func() time.Time, log *slog.Logger) state.State {
		st = memstate.New(memstate.Options{Now: now, Logger: log})
		return st
	})
	r, err := f.fleet.CreateNode(ctxT(t), &flwrproto.CreateNodeRequest{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := st.Nodes(ctxT(t))
	if err != nil || len(nodes) != 1 || nodes[0].ID != r.Node.NodeId {
		t.Fatalf("the given state holds %+v %v, want node %d", nodes, err, r.Node.NodeId)
	}
	if f.sl.LinkState() != state.LinkState(st) {
		t.Error("the Flower 1.29.0 services do not use the given state")
	}
}

// plainState is a state of Flower 1.8.0 only.
type plainState struct{ state.State }
