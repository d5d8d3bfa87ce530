package superlink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/sepal-fl/sepal/flwrproto"
)

// Defaults of Limits.
const (
	// DefaultMaxInflightBytes is the default in-flight budget: 1 GiB, which
	// lets a 512 MiB push through while another is handled, and fits a
	// small machine.
	DefaultMaxInflightBytes = 1 << 30
	// SmallMessageSize is the largest request of a method that never
	// carries parameters (every method but PushTaskRes and PushTaskIns):
	// 1 MiB, far above what Flower sends (a PullTaskRes listing a thousand
	// task ids is 40 KB).
	SmallMessageSize = 1 << 20
	// DefaultMaxConnections is the default number of connections each API
	// accepts at once; a SuperNode or ServerApp holds one.
	DefaultMaxConnections = 4096
	// DefaultMaxConcurrentStreams is the default number of calls at once
	// on one connection; a SuperNode makes at most three (ping, pull or
	// push, delete). gRPC clients queue calls beyond it.
	DefaultMaxConcurrentStreams = 32
	// DefaultHandshakeTimeout bounds the TLS handshake and the HTTP/2
	// greeting of a new connection.
	DefaultHandshakeTimeout = 15 * time.Second
	// DefaultIdleTimeout closes a connection without a call for that long
	// (gRPC clients reconnect on their next call; a polling SuperNode is
	// never idle that long).
	DefaultIdleTimeout = 15 * time.Minute
	// DefaultStallTimeout closes a connection on which a request that
	// holds part of the budget received nothing for that long.
	DefaultStallTimeout = time.Minute
	// maxHeaderListSize bounds the request headers of one call; Flower
	// sends under 1 KiB.
	maxHeaderListSize = 16 << 10
)

// Limits bound what peers may make the SuperLink hold (Options.Limits).
// The zero value of each field is its default; Validate refuses values out
// of range, and so does Serve.
type Limits struct {
	// MaxInflightBytes is the in-flight budget: the total declared size of
	// the request messages being received or handled, over all
	// connections of both APIs. A request is admitted when its 5-byte gRPC
	// length prefix arrives, before its body is read; one that does not
	// fit is refused with ResourceExhausted (gRPC clients, and Flower
	// 1.8.0 SuperNodes, retry it). Its last sixteenth is kept for requests
	// of at most SmallMessageSize, so that large pushes cannot starve
	// pings and polls. Default DefaultMaxInflightBytes (1 GiB).
	MaxInflightBytes int64
	// MaxConnections is the number of connections each API holds at once;
	// beyond it new connections wait in the listen queue. Default
	// DefaultMaxConnections (4096).
	MaxConnections int
	// MaxConcurrentStreams is the number of calls at once on one
	// connection. Default DefaultMaxConcurrentStreams (32).
	MaxConcurrentStreams uint32
	// HandshakeTimeout bounds a new connection's TLS handshake and HTTP/2
	// greeting. Default DefaultHandshakeTimeout (15s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that had no call for that long.
	// Default DefaultIdleTimeout (15m).
	IdleTimeout time.Duration
	// StallTimeout closes a connection on which a request admitted into
	// the budget received no byte for that long. Default
	// DefaultStallTimeout (1m).
	StallTimeout time.Duration
}

// withDefaults fills in the defaults of the zero fields.
func (l Limits) withDefaults() Limits {
	if l.MaxInflightBytes == 0 {
		l.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = DefaultIdleTimeout
	}
	if l.StallTimeout == 0 {
		l.StallTimeout = DefaultStallTimeout
	}
	return l
}

// MinInflightBytes is the smallest in-flight budget: room for a few
// small requests.
const MinInflightBytes = 4 * SmallMessageSize

// Validate returns an error naming the first field out of range: a
// negative value, or a MaxInflightBytes below MinInflightBytes.
func (l Limits) Validate() error {
	switch {
	case l.MaxInflightBytes < 0, l.MaxInflightBytes > 0 && l.MaxInflightBytes < MinInflightBytes:
		return fmt.Errorf("Limits.MaxInflightBytes %d is below the minimum of %d (4 MiB)", l.MaxInflightBytes, MinInflightBytes)
	case l.MaxConnections < 0:
		return errors.New("Limits.MaxConnections is negative")
	case l.HandshakeTimeout < 0, l.IdleTimeout < 0, l.StallTimeout < 0:
		return errors.New("Limits timeouts must not be negative")
	}
	return nil
}

// largeMethods are the methods whose requests carry parameters, up to
// MaxMessageSize; every other request is at most SmallMessageSize.
var largeMethods = map[string]bool{
	"/" + flwrproto.Fleet_ServiceDesc.ServiceName + "/PushTaskRes":  true,
	"/" + flwrproto.Driver_ServiceDesc.ServiceName + "/PushTaskIns": true,
}

// methodLimit returns the largest request message of method.
func methodLimit(method string) int64 {
	if largeMethods[method] {
		return MaxMessageSize
	}
	return SmallMessageSize
}

// LimitStats is a snapshot of the limits' state, for metrics. See
// SuperLink.LimitStats.
type LimitStats struct {
	// InflightBytes is the declared size of the requests being received
	// or handled now; MaxInflightBytes is the budget it is held under.
	InflightBytes, MaxInflightBytes int64
	// Connections is the number of connections open now, both APIs.
	Connections int64
	// RefusedTooLarge counts requests refused since start because they
	// declared more than their method takes (or than the budget can ever
	// hold); RefusedBusy those refused because the budget was full at
	// the time (clients retry them).
	RefusedTooLarge, RefusedBusy uint64
	// ClosedConnections counts connections closed by a limit: a request
	// that stalled, or a violation that could only be answered so.
	ClosedConnections uint64
}

// budget is the in-flight budget shared by every connection of a
// SuperLink. Its methods are safe for concurrent use and never block.
type budget struct {
	max   int64
	used  atomic.Int64
	conns atomic.Int64

	tooLarge, busy, closed atomic.Uint64
}

// headroom is the part of the budget only small requests may use.
func (b *budget) headroom() int64 { return b.max / 16 }

// largest is the largest single request the budget can ever admit.
func (b *budget) largest() int64 { return b.max - b.headroom() }

// reserve takes n bytes for a request if they fit: a request above
// SmallMessageSize may fill the budget up to largest, a smaller one all
// of it.
func (b *budget) reserve(n int64) bool {
	limit := b.max
	if n > SmallMessageSize {
		limit = b.largest()
	}
	for {
		cur := b.used.Load()
		if cur+n > limit {
			return false
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

func (b *budget) release(n int64) {
	if n != 0 {
		b.used.Add(-n)
	}
}

func (b *budget) stats() LimitStats {
	return LimitStats{
		InflightBytes:     b.used.Load(),
		MaxInflightBytes:  b.max,
		Connections:       b.conns.Load(),
		RefusedTooLarge:   b.tooLarge.Load(),
		RefusedBusy:       b.busy.Load(),
		ClosedConnections: b.closed.Load(),
	}
}

// sizeString prints n bytes as MiB or GiB when it is a whole number of
// them, else as bytes.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}

// LimitStats returns a snapshot of the limits' state: the in-flight bytes
// against the budget, the connections open, and what was refused. It is
// cheap (a few atomic loads) and safe for concurrent use.
func (s *SuperLink) LimitStats() LimitStats { return s.budget.stats() }

// newBudget returns the budget of limits (defaults applied).
func newBudget(l Limits) *budget { return &budget{max: l.MaxInflightBytes} }

// limitOptions are the gRPC server options that carry l: calls per
// connection, the handshake timeout, the idle timeout (added to kp) and the
// size of request headers.
func limitOptions(l Limits, kp keepalive.ServerParameters) []grpc.ServerOption {
	kp.MaxConnectionIdle = l.IdleTimeout
	return []grpc.ServerOption{
		grpc.KeepaliveParams(kp),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.MaxHeaderListSize(maxHeaderListSize),
	}
}

// guarded returns creds (nil: plaintext) with every server connection
// guarded by g.
func guarded(creds credentials.TransportCredentials, g *guard) credentials.TransportCredentials {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return guardCreds{TransportCredentials: creds, g: g}
}

// runStallSweep closes stalled connections (see Limits.StallTimeout)
// until ctx ends.
func (g *guard) runStallSweep(ctx context.Context) {
	t := time.NewTicker(max(g.stall/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.sweep()
		}
	}
}

// limitListener holds at most max connections accepted from its listener
// at once: Accept waits for one to close. Connections are counted in b.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	b         *budget
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, max int, b *budget) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, max), b: b, done: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	setUserTimeout(c, keepaliveTimeout)
	l.b.conns.Add(1)
	lc := &limitConn{Conn: c}
	lc.release = func() {
		l.b.conns.Add(-1)
		<-l.sem
	}
	return lc, nil
}

// Close closes the listener and ends an Accept that waits for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its slot back once closed.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// SyscallConn reaches the socket under the wrapper, as without it: the
// chunked reads of rawConn need it.
func (c *limitConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("the connection has no socket")
}

// tcpUserTimeout is TCP_USER_TIMEOUT of Linux (linux/tcp.h, every
// architecture); package syscall lacks it.
const tcpUserTimeout = 0x12

// setUserTimeout sets the TCP_USER_TIMEOUT of c, when it is a TCP
// connection on Linux, to d: how long sent bytes may go unacknowledged
// before the kernel drops the connection. gRPC sets it to its keepalive
// Timeout on the connection Accept returned, but only on a *net.TCPConn
// (internal/syscall.SetTCPUserTimeout), which limitConn hides; so it is
// set here, as gRPC would. A failure leaves the connection as it was (as
// on other systems, where gRPC sets nothing).
func setUserTimeout(c net.Conn, d time.Duration) {
	tc, ok := c.(*net.TCPConn)
	if !ok || runtime.GOOS != "linux" {
		return
	}
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d/time.Millisecond))
		})
	}
}
