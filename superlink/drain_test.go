package superlink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
)

// dupListener returns another listener on the socket of l, as a process
// handed the socket by systemd has: closing it leaves l listening.
func dupListener(t *testing.T, l net.Listener) net.Listener {
	t.Helper()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// A stopped gate takes no connection off the socket's queue, and settles
// once the connections it took reached gRPC (the handshake deadline) or
// were closed.
func TestGateStopsTakingConnections(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	g := newGate(raw)
	got := make(chan net.Conn, 4)
	ended := make(chan error, 1)
	go func() {
		for {
			c, err := g.Accept()
			if err != nil {
				ended <- err
				return
			}
			got <- c
		}
	}()
	soon := func() <-chan struct{} {
		ch := make(chan struct{})
		time.AfterFunc(100*time.Millisecond, func() { close(ch) })
		return ch
	}
	// A connection closed before it reached gRPC (a peer over its share)
	// is settled.
	c0, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	(<-got).Close()
	c1, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	taken := <-got
	if g.waitSettled(soon()) {
		t.Fatal("settled with a connection taken and not yet at gRPC")
	}
	g.stop()
	if g.waitSettled(soon()) {
		t.Fatal("settled before the connection taken reached gRPC")
	}
	taken.SetDeadline(time.Now().Add(time.Minute)) // what gRPC does first
	if !g.waitSettled(soon()) {
		t.Fatal("not settled once the connection taken reached gRPC")
	}
	// Settled: no Accept runs on the socket. (One woken by the stop may
	// still take a connection that arrived at that moment: it is pending
	// like any other, and reaches gRPC before gRPC stops.)
	c2, err := net.Dial("tcp", raw.Addr().String()) // queued by the kernel
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	select {
	case c := <-got:
		t.Fatalf("a stopped gate took %v", c.RemoteAddr())
	case <-time.After(200 * time.Millisecond):
	}
	// The queued connection is still in the socket's queue, for the next
	// process (here: this one, once the deadline is lifted).
	raw.(*net.TCPListener).SetDeadline(time.Time{})
	next, err := raw.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	if next.RemoteAddr().String() != c2.LocalAddr().String() {
		t.Fatalf("the queue held %v, want %v", next.RemoteAddr(), c2.LocalAddr())
	}
	g.Close()
	if err := <-ended; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
}

// A graceful stop on a socket that outlives the SuperLink (as under
// systemd): the call in flight finishes, the client's next call waits in
// the socket's queue while the first SuperLink drains and is answered by
// the next one, on the same state.
func TestServeHandsTheSocketOver(t *testing.T) {
	creds, caFile := testCerts(t)
	sock, err := net.Listen("tcp", "127.0.0.1:0") // what systemd holds
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st := memstate.New(memstate.Options{Logger: log})
	entered, release := make(chan struct{}), make(chan struct{})
	hold := grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("hold")) > 0 {
			close(entered)
			<-release
		}
		return h(ctx, req)
	})
	serve := func(ctx context.Context, opts ...grpc.ServerOption) chan error {
		sl := New(Options{State: st, Logger: log, ShutdownGrace: 20 * time.Second, ServerOptions: opts})
		done := make(chan error, 1)
		go func() { done <- sl.Serve(ctx, Listeners{Driver: dupListener(t, sock), DriverCreds: creds}) }()
		return done
	}
	ctxA, stopA := context.WithCancel(context.Background())
	defer stopA()
	doneA := serve(ctxA, hold)

	conn := dial(t, sock.Addr().String(), caFile)
	defer conn.Close()
	driver := flwrproto.NewDriverClient(conn)
	run, err := driver.CreateRun(ctxT(t), &flwrproto.CreateRunRequest{})
	if err != nil {
		t.Fatal(err)
	}
	inFlight := make(chan error, 1)
	go func() {
		_, err := driver.GetNodes(metadata.AppendToOutgoingContext(ctxT(t), "hold", "1"), &flwrproto.GetNodesRequest{RunId: run.RunId})
		inFlight <- err
	}()
	<-entered
	stopA()
	time.Sleep(200 * time.Millisecond) // A stops taking connections
	// A new client connects while A drains: its call waits in the queue.
	conn2 := dial(t, sock.Addr().String(), caFile)
	defer conn2.Close()
	queued := make(chan error, 1)
	go func() {
		_, err := flwrproto.NewDriverClient(conn2).GetNodes(ctxT(t), &flwrproto.GetNodesRequest{RunId: run.RunId})
		queued <- err
	}()
	time.Sleep(200 * time.Millisecond)
	close(release)
	if err := <-inFlight; err != nil {
		t.Fatalf("the call in flight when the stop began: %v", err)
	}
	select {
	case err := <-doneA:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return once the call in flight finished")
	}
	select {
	case err := <-queued:
		t.Fatalf("the queued call was answered (%v) with no SuperLink serving", err)
	default:
	}

	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	doneB := serve(ctxB)
	if err := <-queued; err != nil {
		t.Fatalf("the call queued during the drain: %v", err)
	}
	// The first client got GOAWAY: its next call goes to the next
	// SuperLink, on a new connection, on the same state.
	if _, err := driver.GetNodes(ctxT(t), &flwrproto.GetNodesRequest{RunId: run.RunId}); err != nil {
		t.Fatalf("the first client's next call: %v", err)
	}
	stopB()
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	// The socket is still open: neither SuperLink closed it.
	c, err := net.DialTimeout("tcp", sock.Addr().String(), time.Second)
	if err != nil {
		t.Fatalf("the socket after both stops: %v", err)
	}
	c.Close()
}

// A Control API log stream does not hold a stop until ShutdownGrace: it
// ends at once with DEADLINE_EXCEEDED, after which flwr reconnects.
func TestServeEndsLogStreams(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st := memstate.New(memstate.Options{Logger: log})
	fab := []byte("a FAB")
	sum := sha256.Sum256(fab)
	id, err := st.CreateLinkRun(context.Background(), state.NewRun{FabID: "sepal/test", FabVersion: "1.0.0", RunType: "serverapp",
		Fab: &flwr129.Fab{HashStr: hex.EncodeToString(sum[:]), Content: fab}})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := New(Options{State: st, Logger: log, ShutdownGrace: time.Minute})
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- sl.Serve(ctx, Listeners{Control: lis}) }()
	conn, err := grpc.NewClient(lis.Addr().String(), append(flwr129.ClientOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := flwr129.NewControlClient(conn).StreamLogs(ctxT(t), &flwr129.StreamLogsRequest{RunId: id})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PushLogs(context.Background(), id, "round 1\n"); err != nil {
		t.Fatal(err)
	}
	if r, err := stream.Recv(); err != nil || r.GetLogOutput() != "round 1\n" {
		t.Fatalf("the log stream: %v %v", r, err)
	}
	began := time.Now()
	stop()
	_, err = stream.Recv()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("the log stream at the stop: %v, want DeadlineExceeded", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve held by a log stream")
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Fatalf("the stop took %v with a log stream open", d)
	}
}
