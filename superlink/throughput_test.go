package superlink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/transport"
)

// throughputMiB is the size of the array each benchmark operation moves.
const throughputMiB = 64

// BenchmarkThroughput compares moving one large message through the
// SuperLink over gRPC and TLS 1.3 with moving the same number of bytes
// over a raw TLS 1.3 stream, on the same loopback, in the same process
// layout (server and client in this process, one TCP connection each,
// the server side configured by transport.ServerConfig in both cases):
//
//   - pull: a node's PullTaskIns whose TaskIns carries a 64 MiB array,
//     against a raw server writing as many bytes to a client that reads
//     them;
//   - push: a node's PushTaskRes carrying a 64 MiB array, stored by the
//     SuperLink, against a raw client writing as many bytes to a server
//     that reads them.
//
// The gRPC client does not decode the message (its codec only counts the
// bytes), as the raw client only reads them, so that both measure the
// transport. Each operation moves the message once each way, gRPC then
// raw, so both see the same load on a shared machine. Reported: MB/s of
// each and grpc/raw, a ratio meant to be at least 0.75.
//
//	go test ./superlink -run '^$' -bench Throughput -benchtime 20x
func BenchmarkThroughput(b *testing.B) {
	b.Run("pull", func(b *testing.B) { benchThroughput(b, false) })
	b.Run("push", func(b *testing.B) { benchThroughput(b, true) })
}

func benchThroughput(b *testing.B, push bool) {
	p := testkit.NewPKI(b, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	sl := New(Options{State: memstate.New(memstate.Options{}), Logger: slog.New(slog.DiscardHandler)})
	link := testkit.Serve(b, serveOn(sl, transport.ServerCredentials(p.Source())))
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}

	counter := &countingCodec{}
	conn := func(addr string) *grpc.ClientConn {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize),
				grpc.ForceCodecV2(counter)))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	fleetConn := conn(link.Fleet)
	fleet := flwrproto.NewFleetClient(fleetConn)
	drv := flwrproto.NewDriverClient(conn(link.Driver))
	ctx := context.Background()
	protoCodec := grpc.ForceCodecV2(encoding.GetCodecV2("proto")) // for the calls whose answer is needed
	node, err := fleet.CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 3600}, protoCodec)
	if err != nil {
		b.Fatal(err)
	}
	self := node.Node
	run, err := drv.CreateRun(ctx, &flwrproto.CreateRunRequest{}, protoCodec)
	if err != nil {
		b.Fatal(err)
	}
	model := benchModel(throughputMiB)
	model.DataKeys, model.DataValues = model.DataKeys[:1], model.DataValues[:1]
	model.DataValues[0].Data = make([]byte, throughputMiB<<20)
	now := float64(time.Now().Unix())

	// One message through the SuperLink; returns the gRPC call's duration,
	// the process's CPU time in it and the size of the message it timed.
	grpcOp := func() (time.Duration, time.Duration, int) {
		ins := taskIns(run.RunId, self.NodeId, now)
		if !push {
			ins.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"fitins.parameters": model}}
		}
		if _, err := drv.PushTaskIns(ctx, &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{ins}}); err != nil {
			b.Fatal(err)
		}
		if !push {
			counter.n.Store(0)
			c0, t0 := processCPU(b), time.Now()
			r, err := fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: self})
			d, c := time.Since(t0), processCPU(b)-c0
			if err != nil {
				b.Fatal(err)
			}
			if r.TaskInsList != nil {
				b.Fatal("the counting codec decoded a message")
			}
			return d, c, int(counter.n.Load())
		}
		r, err := fleet.PullTaskIns(ctx, &flwrproto.PullTaskInsRequest{Node: self}, protoCodec)
		if err != nil {
			b.Fatal(err)
		}
		if len(r.TaskInsList) != 1 {
			b.Fatalf("pulled %d TaskIns, want 1", len(r.TaskInsList))
		}
		res := taskRes(r.TaskInsList[0], self.NodeId, now)
		res.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"fitres.parameters": model}}
		enc, err := proto.Marshal(&flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{res}})
		if err != nil {
			b.Fatal(err)
		}
		var resp flwrproto.PushTaskResResponse
		c0, t0 := processCPU(b), time.Now()
		err = fleetConn.Invoke(ctx, flwrproto.Fleet_PushTaskRes_FullMethodName, encoded(enc), &resp)
		d, c := time.Since(t0), processCPU(b)-c0
		if err != nil {
			b.Fatal(err)
		}
		// The ServerApp pulls the result (not timed), so that the
		// SuperLink forgets it.
		got, err := drv.PullTaskRes(ctx, &flwrproto.PullTaskResRequest{Node: &flwrproto.Node{Anonymous: true}, TaskIds: []string{r.TaskInsList[0].TaskId}}, protoCodec)
		if err != nil || len(got.TaskResList) != 1 {
			b.Fatalf("PullTaskRes: %d results, %v", len(got.GetTaskResList()), err)
		}
		return d, c, len(enc)
	}

	// The raw TLS 1.3 stream: per operation the reader asks with one byte
	// and the writer sends n bytes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	serverTLS := transport.ServerConfig(p.Source())
	type rawReq struct{ n int }
	reqs := make(chan rawReq)
	served := make(chan error, 1)
	payload := make([]byte, throughputMiB<<20+1024)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		s := tls.Server(c, serverTLS)
		defer s.Close()
		if err := s.Handshake(); err != nil {
			served <- err
			return
		}
		for r := range reqs {
			var err error
			if push {
				_, err = io.ReadFull(s, payload[:r.n]) // the server reads
				if err == nil {
					_, err = s.Write([]byte{1})
				}
			} else {
				var one [1]byte
				if _, err = io.ReadFull(s, one[:]); err == nil {
					_, err = s.Write(payload[:r.n])
				}
			}
			served <- err
		}
	}()
	rc, err := tls.Dial("tcp", ln.Addr().String(), clientTLS)
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	if v := rc.ConnectionState().Version; v != tls.VersionTLS13 {
		b.Fatalf("raw stream negotiated %x, want TLS 1.3", v)
	}
	buf := make([]byte, throughputMiB<<20+1024)
	rawOp := func(n int) (time.Duration, time.Duration) {
		c0, t0 := processCPU(b), time.Now()
		reqs <- rawReq{n}
		var err error
		if push {
			if _, err = rc.Write(buf[:n]); err == nil {
				_, err = io.ReadFull(rc, buf[:1])
			}
		} else {
			if _, err = rc.Write([]byte{1}); err == nil {
				_, err = io.ReadFull(rc, buf[:n])
			}
		}
		if err == nil {
			err = <-served
		}
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), processCPU(b) - c0
	}

	grpcOp() // warm up: connections, windows, interned array
	rawOp(1 << 20)
	var tg, tr, cg, cr time.Duration
	var bytes int64
	b.ResetTimer()
	for b.Loop() {
		d, c, n := grpcOp()
		tg, cg = tg+d, cg+c
		d, c = rawOp(n)
		tr, cr = tr+d, cr+c
		bytes += int64(n)
	}
	close(reqs)
	gMBs := float64(bytes) / tg.Seconds() / 1e6
	rMBs := float64(bytes) / tr.Seconds() / 1e6
	b.ReportMetric(gMBs, "grpc-MB/s")
	b.ReportMetric(rMBs, "raw-MB/s")
	b.ReportMetric(gMBs/rMBs, "grpc/raw")
	// CPU time of the whole process (both ends) per byte moved: on a busy
	// machine wall time says more about the neighbours than about us.
	b.ReportMetric(cr.Seconds()/cg.Seconds(), "raw/grpc-cpu")
}

// processCPU is the user+sys time of this process so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// encoded is a request already encoded: the counting codec sends it as
// it is.
type encoded []byte

// countingCodec is a client codec that encodes requests as protobuf and
// counts the bytes of responses without decoding them.
type countingCodec struct{ n atomic.Int64 }

func (c *countingCodec) Name() string { return "proto" }

func (c *countingCodec) Marshal(v any) (mem.BufferSlice, error) {
	if e, ok := v.(encoded); ok {
		return mem.BufferSlice{mem.SliceBuffer(e)}, nil
	}
	b, err := proto.Marshal(v.(proto.Message))
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (c *countingCodec) Unmarshal(data mem.BufferSlice, _ any) error {
	c.n.Add(int64(data.Len()))
	return nil
}
