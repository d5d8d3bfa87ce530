package superlink

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
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
//	go test ./superlink -run '^$' -bench Guard -count 6 | tee guard.txt
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
	sl := New(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	switch mode {
	case "guarded":
		creds = guarded(creds, sl.guard)
	case "servehttp":
		creds = nil // net/http does TLS and HTTP/2
	}
	srv := grpc.NewServer(serverOptions(creds, sl.codec, sl.log, sl.opts.Limits)...)
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
	codecOpt := grpc.ForceCodecV2(newCodec(nil))

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

// loopConn is a net.Conn whose reads replay one buffer forever (from
// after a prefix) and whose writes are dropped.
type loopConn struct {
	net.Conn
	data []byte
	pos  int
	skip int // bytes at the start that only the first pass reads
}

func (c *loopConn) Read(p []byte) (int, error) {
	if c.pos == len(c.data) {
		c.pos = c.skip
	}
	n := copy(p, c.data[c.pos:])
	c.pos += n
	return n, nil
}

func (c *loopConn) Write(p []byte) (int, error) { return len(p), nil }
func (c *loopConn) Close() error                { return nil }
func (c *loopConn) RemoteAddr() net.Addr        { return &net.TCPAddr{} }

// BenchmarkGuardRead measures the guard's read side alone, in memory, on
// the bytes of an admitted 512 MiB message in 16 KiB DATA frames, read 32
// KiB at a time as gRPC's reader does: the cost it adds per byte, to set
// against what TLS and gRPC cost per byte (BenchmarkGuard). "direct"
// reads the same bytes without the guard.
func BenchmarkGuardRead(b *testing.B) {
	s := newClientScript()
	s.headers(1, mPushTaskRes, 1000, 0, noPrio, false)
	head := len(s.buf.Bytes())
	s.message(1, MaxMessageSize, 0, nil, 0, false) // the prefix
	frame := make([]byte, 16384)
	for range 64 {
		s.fr.WriteData(1, false, frame)
	}
	data := s.buf.Bytes()
	skip := head + frameHeaderLen + grpcPrefixLen
	for _, mode := range []string{"direct", "guarded"} {
		b.Run(mode, func(b *testing.B) {
			lc := &loopConn{data: data, skip: skip}
			var conn net.Conn = lc
			if mode == "guarded" {
				g := testGuard(testBudget(1 << 40))
				gc := g.wrap(lc, nil)
				// Endless message: the stream always has body left.
				conn = gc
				defer func() {
					gc.mu.Lock()
					for _, st := range gc.streams {
						st.left = 1 << 62
					}
					gc.mu.Unlock()
				}()
			}
			buf := make([]byte, 32<<10)
			// Past the headers and prefix.
			for lc.pos < skip {
				conn.Read(buf[:min(len(buf), skip-lc.pos)])
			}
			if gc, ok := conn.(*guardConn); ok {
				gc.mu.Lock()
				for _, st := range gc.streams {
					st.left = 1 << 62
				}
				gc.mu.Unlock()
			}
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := io.ReadFull(conn, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGuardWrite measures the guard's write side alone: gRPC's 32
// KiB writes of 16 KiB DATA frames (a large response) through the guard,
// which finds the frame boundaries.
func BenchmarkGuardWrite(b *testing.B) {
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	frame := make([]byte, 16384)
	for range 64 {
		fr.WriteData(1, false, frame)
	}
	data := out.Bytes()
	for _, mode := range []string{"direct", "guarded"} {
		b.Run(mode, func(b *testing.B) {
			lc := &loopConn{}
			var conn net.Conn = lc
			if mode == "guarded" {
				conn = testGuard(testBudget(1<<30)).wrap(lc, nil)
			}
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for range b.N {
				for p := data; len(p) > 0; {
					n := min(len(p), 32<<10)
					if _, err := conn.Write(p[:n]); err != nil {
						b.Fatal(err)
					}
					p = p[n:]
				}
			}
		})
	}
}
