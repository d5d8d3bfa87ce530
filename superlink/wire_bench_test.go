package superlink

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink/internal/codec"
	"github.com/sepal-fl/sepal/transport"
)

// BenchmarkGuard measures what the frame guard costs large transfers:
// PushTaskIns (client to SuperLink, through the guard's read side) and
// PullTaskIns (SuperLink to client, through its write side) of one task
// carrying N MiB of parameters, over real TLS on loopback, with the guard
// ("guarded", as Serve runs) and without it ("plain", gRPC alone), and
// with gRPC's ServeHTTP behind net/http's HTTP/2 server ("servehttp", the
// other way to see a request's size before gRPC reads it). Both
// ends run in this process; the client uses the SuperLink's codec so that
// it copies as little as the server. Compare the two with benchstat:
//
//	go test ./superlink -run '^$' -bench 'Guard$' -count 6 | tee guard.txt
//	benchstat -col /guard guard.txt
func BenchmarkGuard(b *testing.B) {
	for _, mib := range []int{32, 256} {
		for _, dir := range []string{"PushTaskIns", "PullTaskIns"} {
			for _, mode := range []string{"plain", "guarded", "servehttp"} {
				b.Run(fmt.Sprintf("dir=%s/MiB=%d/guard=%s", dir, mib, mode), func(b *testing.B) {
					benchTransfer(b, dir, mib, mode)
				})
			}
		}
	}
}

func benchTransfer(b *testing.B, dir string, mib int, mode string) {
	pki := testkit.NewPKI(b, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	creds, caFile := transport.ServerCredentials(pki.Source()), pki.CAFile
	sl := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), State: memstate.New(memstate.Options{})})
	var opts []grpc.ServerOption
	switch mode {
	case "guarded":
		opts = sl.serverOptions(creds)
	case "plain", "servehttp":
		opts = []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageSize), grpc.MaxSendMsgSize(MaxMessageSize), grpc.ForceServerCodecV2(sl.codec)}
		if mode == "plain" {
			opts = append(opts, grpc.Creds(creds)) // net/http does TLS and HTTP/2 for servehttp
		}
	}
	srv := grpc.NewServer(opts...)
	flwrproto.RegisterFleetServer(srv, sl.Fleet())
	flwrproto.RegisterDriverServer(srv, sl.Driver())
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if mode == "servehttp" {
		// The other way to see a request's size before gRPC reads it:
		// gRPC's ServeHTTP behind net/http's HTTP/2 server.
		hs := &http.Server{Handler: srv, TLSConfig: transport.ServerConfig(pki.Source())}
		go hs.ServeTLS(lis, "", "")
		defer hs.Close()
	} else {
		go srv.Serve(lis)
		defer srv.Stop()
	}
	conn := dial(b, lis.Addr().String(), caFile)
	defer conn.Close()
	fleet, drv := flwrproto.NewFleetClient(conn), flwrproto.NewDriverClient(conn)
	ctx := context.Background()
	codecOpt := grpc.ForceCodecV2(codec.New(codec.Options{}))

	node, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 3600})
	if err != nil {
		b.Fatal(err)
	}
	run, err := drv.CreateRun(ctx, &flwrproto.CreateRunRequest{})
	if err != nil {
		b.Fatal(err)
	}
	params := benchModel(mib)
	ins := func() *flwrproto.PushTaskInsRequest {
		ti := taskIns(run.RunId, node.Node.NodeId, float64(time.Now().UnixMicro())/1e6)
		ti.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"fitins.parameters": params}}
		return &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ti}}
	}
	b.SetBytes(int64(mib) << 20)
	b.ResetTimer()
	for range b.N {
		switch dir {
		case "PushTaskIns":
			if _, err := drv.PushTaskIns(ctx, ins(), codecOpt); err != nil {
				b.Fatal(err)
			}
		case "PullTaskIns":
			b.StopTimer()
			if _, err := drv.PushTaskIns(ctx, ins(), codecOpt); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			r, err := fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: node.Node}, codecOpt)
			if err != nil || len(r.TaskInsList) != 1 {
				b.Fatalf("PullTaskIns: %v", err)
			}
		}
	}
}
