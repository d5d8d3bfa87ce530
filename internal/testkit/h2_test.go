package testkit

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

// The head and n zero bytes decode as the PushTaskResRequest described.
func TestPushTaskResHead(t *testing.T) {
	const n = 70000
	head := PushTaskResHead(-5, 42, "6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1", n)
	msg := append(head, make([]byte, n)...)
	var req flwrproto.PushTaskResRequest
	if err := proto.Unmarshal(msg, &req); err != nil {
		t.Fatal(err)
	}
	if len(req.TaskResList) != 1 {
		t.Fatalf("%d TaskRes", len(req.TaskResList))
	}
	r := req.TaskResList[0]
	a := r.GetTask().GetRecordset().GetParameters()["fitres.parameters"].GetDataValues()
	if r.RunId != -5 || r.GetTask().GetProducer().GetNodeId() != 42 || !r.GetTask().GetConsumer().GetAnonymous() ||
		r.GetTask().GetAncestry()[0] != "6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1" || len(a) != 1 || len(a[0].Data) != n || a[0].Dtype != "<f4" {
		t.Fatalf("decoded %v", r)
	}
}

// recordingListener records the remote address of each connection it
// accepts.
type recordingListener struct {
	net.Listener
	mu    sync.Mutex
	peers []string
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.peers = append(l.peers, c.RemoteAddr().String())
		l.mu.Unlock()
	}
	return c, err
}

// healthServer serves gRPC's health service in plaintext on a loopback
// port until the test ends.
func healthServer(t *testing.T) (*grpc.Server, *recordingListener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: l}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(rl)
	t.Cleanup(s.Stop)
	return s, rl
}

// A connection from 127.0.0.2 reaches the server from there; a request
// with the headers given as they are (two content-types) is served by
// grpc-go; a rapid reset and a SETTINGS flood write every frame asked for
// to a server that does not stop them; a GOAWAY is reported with its code.
func TestH2Conn(t *testing.T) {
	srv, l := healthServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := DialH2From(ctx, "127.0.0.2", l.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const method = "/grpc.health.v1.Health/Check"
	fields := append(RequestHeaders(method), hpack.HeaderField{Name: "content-type", Value: "text/plain"})
	s, err := c.OpenHeaders(fields)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(ctx, s, 0, nil, 0, true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("no answer to the health check")
	}
	if r := c.Result(s); !r.Trailers || r.Status != codes.OK || r.Received == 0 {
		t.Errorf("health check with two content-types: %s, %d bytes received; want OK and a response", r.String(), r.Received)
	}
	l.mu.Lock()
	if len(l.peers) != 1 || !strings.HasPrefix(l.peers[0], "127.0.0.2:") {
		t.Errorf("the server saw peers %v, want one from 127.0.0.2", l.peers)
	}
	l.mu.Unlock()

	if n, err := c.RapidReset(ctx, method, 1000); n != 1000 || err != nil {
		t.Errorf("RapidReset wrote %d pairs of 1000: %v", n, err)
	}
	if n, err := c.SettingsFlood(ctx, 1000); n != 1000 || err != nil {
		t.Errorf("SettingsFlood wrote %d frames of 1000: %v", n, err)
	}
	if g := c.GoAway(); g != nil {
		t.Errorf("GOAWAY %v before the server stopped", g.Code)
	}

	srv.GracefulStop()
	select {
	case <-c.Closed():
	case <-ctx.Done():
		t.Fatal("the connection did not end after the server stopped")
	}
	if g := c.GoAway(); g == nil || g.Code != http2.ErrCodeNo {
		t.Errorf("GOAWAY after a graceful stop: %+v, want NO_ERROR", g)
	}
	if n, err := c.RapidReset(ctx, method, 10); n != 0 || err == nil {
		t.Errorf("RapidReset on an ended connection wrote %d pairs (%v)", n, err)
	}
}
