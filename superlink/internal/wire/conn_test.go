package wire

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// batchedPair returns the two ends of a TLS connection over loopback TCP:
// the server's through batchedCreds (over conn, the accepted TCP
// connection, wrapped by wrap when not nil) and the client's.
func batchedPair(t *testing.T, wrap func(net.Conn) net.Conn) (server net.Conn, raw *net.TCPConn, client *tls.Conn) {
	t.Helper()
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	dialed := make(chan *tls.Conn, 1)
	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2"}})
		if err != nil {
			t.Error(err)
		}
		dialed <- c
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	raw = c.(*net.TCPConn)
	if wrap != nil {
		c = wrap(c)
	}
	creds := batchedCreds{credentials.NewTLS(transport.ServerConfig(p.Source()))}
	server, _, err = creds.ServerHandshake(c)
	if err != nil {
		t.Fatal(err)
	}
	client = <-dialed
	if client == nil {
		t.FailNow()
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, raw, client
}

// Bytes go both ways unchanged, whatever the sizes of the writes and reads
// on either side, and with two goroutines writing to the server's end at
// once (each write's bytes stay together).
func TestBatchedConnBytes(t *testing.T) {
	server, _, client := batchedPair(t, nil)
	r := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	sizes := func(seed uint64) func() int {
		r := rand.New(rand.NewPCG(seed, 9))
		return func() int {
			switch r.IntN(4) {
			case 0:
				return 1 + r.IntN(16)
			case 1:
				return 1 + r.IntN(20000)
			case 2:
				return 1 + r.IntN(300<<10)
			}
			return 1 + r.IntN(2<<20)
		}
	}
	// Client to server.
	go func() {
		next := sizes(3)
		for b := data; len(b) > 0; {
			n := min(next(), len(b))
			if _, err := client.Write(b[:n]); err != nil {
				t.Error(err)
				return
			}
			b = b[n:]
		}
	}()
	got := make([]byte, 0, len(data))
	next := sizes(4)
	buf := make([]byte, 2<<20)
	for len(got) < len(data) {
		n, err := server.Read(buf[:next()])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the server read other bytes than the client wrote")
	}

	// Server to client, from two writers: each write is one block of a
	// single repeated byte, so that a block cut by another shows.
	var wg sync.WaitGroup
	const blocks = 100 // bytes 0..199: each block its own
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := sizes(uint64(10 + w))
			for i := range blocks {
				b := bytes.Repeat([]byte{byte(2*i + w)}, next())
				if _, err := server.Write(b); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var total atomic.Int64
	go func() { wg.Wait(); total.Store(1); server.Write([]byte{0xff}) }() // 0xff: no block's byte
	var seen []byte
	var prev byte
	run := 0
	for {
		n, err := client.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range buf[:n] {
			if run > 0 && c != prev {
				seen = append(seen, prev)
			}
			if c != prev {
				run = 0
			}
			prev = c
			run++
		}
		if total.Load() == 1 && n > 0 && buf[n-1] == 0xff {
			break
		}
	}
	// Each block's byte shows up in one run only (blocks of the same
	// writer differ, so a block split by the other writer's would show
	// its byte twice).
	count := map[byte]int{}
	for _, c := range seen {
		count[c]++
	}
	for c, k := range count {
		if k > 1 {
			t.Errorf("the block of byte %d came in %d pieces", c, k)
		}
	}
}

// countConn counts the writes that reach the socket.
type countConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// A write of 256 KiB, 16 TLS records, reaches the socket in one system
// call.
func TestBatchedConnGathersRecords(t *testing.T) {
	var cc *countConn
	server, _, client := batchedPair(t, func(c net.Conn) net.Conn { cc = &countConn{Conn: c}; return cc })
	go io.Copy(io.Discard, client)
	before := cc.writes.Load()
	if _, err := server.Write(make([]byte, writeBuffer)); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load() - before; n != 1 {
		t.Errorf("a %d-byte write took %d writes to the socket, want 1", writeBuffer, n)
	}
}

// A connection waiting for bytes holds no read chunk; one that received
// 1 MiB holds none either once TLS has read it all.
func TestBatchedConnIdleHoldsNoChunk(t *testing.T) {
	server, _, client := batchedPair(t, nil)
	go func() {
		client.Write(make([]byte, 1<<20))
	}()
	if _, err := io.ReadFull(server, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() {
		_, err := server.Read(make([]byte, 100))
		read <- err
	}()
	time.Sleep(50 * time.Millisecond) // the reader is waiting now
	if n := readChunksOut.Load(); n != 0 {
		t.Errorf("%d read chunks held by a connection waiting for bytes", n)
	}
	client.Write([]byte("x"))
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	if n := readChunksOut.Load(); n != 0 {
		t.Errorf("%d read chunks held after the last byte was read", n)
	}
}

// Read deadlines set on the socket hold, and the end of the connection
// reads as io.EOF.
func TestBatchedConnDeadlineAndEOF(t *testing.T) {
	server, raw, client := batchedPair(t, nil)
	raw.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	_, err := server.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	raw.SetReadDeadline(time.Time{})
	client.Close()
	if _, err := server.Read(make([]byte, 10)); !errors.Is(err, io.EOF) {
		t.Errorf("read after the client closed: %v, want io.EOF", err)
	}
}

// A connection closed before TLS read all of its last chunk gives the
// chunk back.
func TestBatchedConnCloseGivesChunkBack(t *testing.T) {
	server, _, client := batchedPair(t, nil)
	if _, err := client.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // all of it in the server's socket
	if _, err := io.ReadFull(server, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if n := readChunksOut.Load(); n == 0 {
		t.Fatal("no read chunk held with 64 KiB sent and 100 bytes read")
	}
	server.Close()
	if n := readChunksOut.Load(); n != 0 {
		t.Errorf("%d read chunks held after the connection closed", n)
	}
}

// serveWire serves gRPC's health service through a Wire of the test
// configuration with creds (nil: plaintext) on a loopback listener that
// sends the TCP connections it accepts to conns, under the Wire's own
// listener wrapper, until the test ends; it returns the address.
func serveWire(t *testing.T, creds credentials.TransportCredentials, conns chan *net.TCPConn) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := New(testConfig(1 << 30))
	srv := grpc.NewServer(w.ServerOptions(creds)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(w.Listen(&recordingListener{Listener: lis, conns: conns}))
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// testCerts makes a CA and a server certificate for localhost and
// 127.0.0.1, and returns the credentials serving it and the CA file.
func testCerts(t testing.TB) (credentials.TransportCredentials, string) {
	t.Helper()
	p := testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	return transport.ServerCredentials(p.Source()), p.CAFile
}

type recordingListener struct {
	net.Listener
	conns chan *net.TCPConn
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		select {
		case l.conns <- tc:
		default:
		}
	}
	return c, err
}

// userTimeout returns the TCP_USER_TIMEOUT of c.
func userTimeout(t *testing.T, c *net.TCPConn) time.Duration {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		v, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return time.Duration(v) * time.Millisecond
}

// Where Serve serves TLS (under its listener wrapper, limitConn), the
// socket is read in chunks and TCP_USER_TIMEOUT is the keepalive timeout,
// as gRPC sets it on the connections it accepts itself.
func TestServeTLSReadsInChunksAndSetsUserTimeout(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_USER_TIMEOUT is Linux's")
	}
	creds, caFile := testCerts(t)
	conns := make(chan *net.TCPConn, 4)
	addr := serveWire(t, creds, conns)
	ccreds, err := transport.ClientCredentials(transport.ClientOptions{RootCertificates: caFile})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(ccreds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	before := chunkReads.Load()
	if _, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if chunkReads.Load() == before {
		t.Error("the Fleet API's TLS connection read no chunk from its socket")
	}
	if d := userTimeout(t, <-conns); d != KeepaliveTimeout {
		t.Errorf("TCP_USER_TIMEOUT %v, want %v", d, KeepaliveTimeout)
	}
}

// Plaintext connections are not wrapped for TLS (gRPC reads and writes
// them with its own buffers), and get the TCP_USER_TIMEOUT too.
func TestServePlaintextNotBatched(t *testing.T) {
	g := testGuard(testBudget(1 << 30))
	if _, ok := tunedCreds(guarded(nil, g)).(batchedCreds); ok {
		t.Error("plaintext credentials wrapped in batchedCreds")
	}
	tlsCreds, _ := testCerts(t)
	if _, ok := tunedCreds(guarded(tlsCreds, g)).(batchedCreds); !ok {
		t.Error("TLS credentials not wrapped in batchedCreds")
	}
	if len(tuningOptions(false)) != len(tuningOptions(true))-1 {
		t.Error("ReadBufferSize(0) is not for TLS only")
	}

	if runtime.GOOS != "linux" {
		return
	}
	conns := make(chan *net.TCPConn, 4)
	addr := serveWire(t, nil, conns)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	before := chunkReads.Load()
	if _, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := chunkReads.Load() - before; n != 0 {
		t.Errorf("a plaintext connection read %d chunks", n)
	}
	if d := userTimeout(t, <-conns); d != KeepaliveTimeout {
		t.Errorf("TCP_USER_TIMEOUT %v, want %v", d, KeepaliveTimeout)
	}
}
