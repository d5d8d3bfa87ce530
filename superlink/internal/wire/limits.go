package wire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Sizes and times the wire layer is built around.
const (
	// SmallMessageSize is the largest request of a method that carries no
	// parameters: 1 MiB, far above what Flower sends.
	SmallMessageSize = 1 << 20
	// KeepaliveTimeout is how long the server waits for the answer to its
	// keepalive ping, and the TCP_USER_TIMEOUT of its connections.
	KeepaliveTimeout = 20 * time.Second
	// RequestGrace is how long an admitted request may take before the
	// minimum rate applies: a client's first bytes may wait for a
	// handshake of its own, a slow start, a garbage collection.
	RequestGrace = 10 * time.Second
	// maxHeaderListSize bounds the request headers of one call; Flower
	// sends under 1 KiB.
	maxHeaderListSize = 16 << 10
)

// The reasons a request is refused before its body is read, and a
// connection refused or closed by a limit: the label values of the
// metrics, a fixed set.
const (
	RefusedTooLarge  = "too_large"  // more than its method, or one peer, may ever send
	RefusedBusy      = "busy"       // the budget is full for now
	RefusedPeerShare = "peer_share" // the peer holds its share of the budget
	RefusedTooSlow   = "too_slow"   // admitted, then fell behind the minimum rate: reset

	ConnPerPeer = "per_peer" // a peer's share of the connection slots is taken

	ClosedStalled       = "stalled"        // stopped mid-frame while holding budget
	ClosedControlFrames = "control_frames" // too many control frames (rapid reset, SETTINGS floods)
	ClosedViolation     = "violation"      // a refusal that could only be answered so
	ClosedIdle          = "idle"           // idle while connection slots ran short
)

// Stats is a snapshot of the limits' state, for metrics.
type Stats struct {
	// InflightBytes is the declared size of the requests being received
	// or handled now; MaxInflightBytes is the budget it is held under.
	InflightBytes, MaxInflightBytes int64
	// Connections is the number of connections open now, both APIs.
	Connections int64
	// Refused counts, by reason (RefusedTooLarge, RefusedBusy,
	// RefusedPeerShare, RefusedTooSlow), the requests refused or reset
	// since start.
	Refused map[string]uint64
	// ConnectionsRefused counts, by reason (ConnPerPeer), the
	// connections closed at once because of a limit.
	ConnectionsRefused map[string]uint64
	// Closed counts, by reason (ClosedStalled, ClosedControlFrames,
	// ClosedViolation, ClosedIdle), the connections a limit closed.
	Closed map[string]uint64
	// Pressure is true while small requests are being refused because
	// the budget is full: legitimate pings and polls fail, and the health
	// service says NOT_SERVING.
	Pressure bool
}

// RefusedTotal is the number of requests refused for any reason.
func (s Stats) RefusedTotal() uint64 {
	var n uint64
	for _, v := range s.Refused {
		n += v
	}
	return n
}

// counters counts events by a reason from a fixed set.
type counters struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counters) add(reason string) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[reason]++
	c.mu.Unlock()
}

func (c *counters) snapshot(reasons ...string) map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(reasons))
	for _, r := range reasons {
		out[r] = c.m[r]
	}
	return out
}

// pressureWindow is how long after a small request was refused for want
// of budget the SuperLink says it is under pressure.
const pressureWindow = 5 * time.Second

// budget is the in-flight budget shared by every connection of a
// SuperLink, with what each peer holds of it. Its methods are safe for
// concurrent use and never block.
type budget struct {
	max   int64
	used  atomic.Int64
	conns atomic.Int64

	mu    sync.Mutex // peers and their holdings
	peers map[string]*peerState

	refused, connRefused, closed counters
	pressureAt                   atomic.Int64  // unix ns of the last small request refused for want of budget
	pressureFor                  time.Duration // pressureWindow; shorter in tests
	now                          func() time.Time

	freed      atomic.Int64 // bytes released since the last scavenge
	scavenging atomic.Bool
}

// peerState is one peer's part of the budget. Its fields are guarded by
// the budget's mu.
type peerState struct {
	key   string
	refs  int   // connections that use it
	held  int64 // budget reserved by its requests
	small int64 // of which by requests of at most SmallMessageSize
}

// newBudget returns a budget of max bytes.
func newBudget(max int64) *budget {
	return &budget{max: max, peers: map[string]*peerState{}, now: time.Now, pressureFor: pressureWindow}
}

// headroom is the part of the budget only small requests may use.
func (b *budget) headroom() int64 { return b.max / 16 }

// largest is the largest single request the budget can ever admit: the
// share of one peer, which is less than what large requests may fill.
func (b *budget) largest() int64 { return min(b.max-b.headroom(), b.peerShare()) }

// peerShare is the most one peer may hold.
func (b *budget) peerShare() int64 { return b.max / 4 * 3 }

// smallShare is the most one peer may hold in small requests.
func (b *budget) smallShare() int64 { return max(b.headroom()/4, SmallMessageSize) }

// peerFor returns the peer of key, counting one more reference to it.
func (b *budget) peerFor(key string) *peerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peers[key]
	if p == nil {
		p = &peerState{key: key}
		b.peers[key] = p
	}
	p.refs++
	return p
}

// unref drops a reference to p.
func (b *budget) unref(p *peerState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p.refs--
	b.dropLocked(p)
}

// dropLocked forgets p once nothing uses it. b.mu is held.
func (b *budget) dropLocked(p *peerState) {
	if p.refs <= 0 && p.held == 0 && b.peers[p.key] == p {
		delete(b.peers, p.key)
	}
}

// reserve takes n bytes for a request of p if they fit, and returns ""
// or the reason it refuses: a request above SmallMessageSize may fill the
// budget up to what large requests may hold, a smaller one all of it;
// each within the peer's shares.
func (b *budget) reserve(n int64, p *peerState) string {
	small := n <= SmallMessageSize
	if n > b.largest() && !small {
		return RefusedTooLarge
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if small && p.small+n > b.smallShare() || p.held+n > b.peerShare() {
		return RefusedPeerShare
	}
	limit := b.max
	if !small {
		limit = b.max - b.headroom()
	}
	for {
		cur := b.used.Load()
		if cur+n > limit {
			if small {
				b.pressureAt.Store(b.now().UnixNano())
			}
			return RefusedBusy
		}
		if b.used.CompareAndSwap(cur, cur+n) {
			break
		}
	}
	p.held += n
	if small {
		p.small += n
	}
	return ""
}

// release gives back n bytes reserved for p.
func (b *budget) release(n int64, p *peerState) {
	if n == 0 {
		return
	}
	b.used.Add(-n)
	b.mu.Lock()
	p.held -= n
	if n <= SmallMessageSize {
		p.small -= n
	}
	b.dropLocked(p)
	b.mu.Unlock()
	if n >= SmallMessageSize {
		b.noteFreed(n)
	}
}

// scavengeAfter is how long after large requests ended their memory is
// given back to the system, and scavengeMin how many bytes must have
// ended: the arrays of a request that was refused by its handler, or
// whose results were stored elsewhere, are garbage once it ends, and the
// runtime's own scavenger gives their pages back only over minutes.
const (
	scavengeAfter = time.Second
	scavengeMin   = 32 << 20
)

// noteFreed counts n bytes of requests ended, and gives memory back to
// the system a little later once enough have.
func (b *budget) noteFreed(n int64) {
	if b.freed.Add(n) < scavengeMin || !b.scavenging.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(scavengeAfter, func() {
		b.freed.Store(0)
		debug.FreeOSMemory()
		b.scavenging.Store(false)
	})
}

// pressure reports whether a small request was refused for want of
// budget within pressureWindow.
func (b *budget) pressure() bool {
	at := b.pressureAt.Load()
	return at != 0 && b.now().Sub(time.Unix(0, at)) < b.pressureFor
}

func (b *budget) stats() Stats {
	return Stats{
		InflightBytes:      b.used.Load(),
		MaxInflightBytes:   b.max,
		Connections:        b.conns.Load(),
		Refused:            b.refused.snapshot(RefusedTooLarge, RefusedBusy, RefusedPeerShare, RefusedTooSlow),
		ConnectionsRefused: b.connRefused.snapshot(ConnPerPeer),
		Closed:             b.closed.snapshot(ClosedStalled, ClosedControlFrames, ClosedViolation, ClosedIdle),
		Pressure:           b.pressure(),
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
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// limitOptions are the gRPC server options that carry c: calls per
// connection, the handshake timeout, keepalive with the idle timeout, and
// the size of request headers.
func limitOptions(c Config) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  210 * time.Second,
			Timeout:               KeepaliveTimeout,
			MaxConnectionIdle:     c.IdleTimeout,
			MaxConnectionAge:      time.Hour,
			MaxConnectionAgeGrace: 5 * time.Minute,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.MaxConcurrentStreams(c.MaxConcurrentStreams),
		grpc.ConnectionTimeout(c.HandshakeTimeout),
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

// runSweeps resets requests that fell behind, closes stalled connections
// and idle ones while slots run short, until ctx ends.
func (g *guard) runSweeps(ctx context.Context) {
	t := time.NewTicker(max(min(g.cfg.StallTimeout/4, time.Second), 10*time.Millisecond))
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

// addrKey is the peer key of a source address: the IPv4 address, or the
// /64 an IPv6 address is in (one site gets a /64 or more).
func addrKey(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() && !ip.IsLoopback() {
		if p, err := ip.Prefix(64); err == nil {
			return p.String()
		}
	}
	return ip.String()
}

// identityKey is the peer key of a verified client-certificate identity.
func identityKey(id string) string { return "identity " + id }

// limitListener holds at most max connections accepted from its listener
// at once (Accept waits for one to close), at most perPeer of them from one
// peer (more are closed at once). Connections are counted in g's budget.
type limitListener struct {
	net.Listener
	g         *guard
	sem       chan struct{}
	perPeer   int
	done      chan struct{}
	closeOnce sync.Once

	mu     sync.Mutex
	conns  map[*limitConn]struct{}
	ofPeer map[string]int // connections by peer key
}

func newLimitListener(l net.Listener, maxConns, perPeer int, g *guard) *limitListener {
	ll := &limitListener{Listener: l, g: g, sem: make(chan struct{}, maxConns), perPeer: perPeer, done: make(chan struct{}),
		conns: map[*limitConn]struct{}{}, ofPeer: map[string]int{}}
	g.addListener(ll)
	return ll
}

// Accept waits for a free slot, then for a connection from a peer below
// its share.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	default:
		l.g.warn("full", "connection limit reached: new connections wait until one closes", "address", l.Addr().String(), "max_connections", cap(l.sem))
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		key := addrKey(c.RemoteAddr())
		if !l.count(key) {
			c.Close()
			l.g.b.connRefused.add(ConnPerPeer)
			l.g.warn("per_peer", "connection refused: the peer holds its share of the connections", "peer", key, "address", l.Addr().String(), "max_connections_per_peer", l.perPeer)
			continue
		}
		setUserTimeout(c, KeepaliveTimeout)
		l.g.b.conns.Add(1)
		lc := &limitConn{Conn: c, l: l, key: key}
		l.mu.Lock()
		l.conns[lc] = struct{}{}
		l.mu.Unlock()
		return lc, nil
	}
}

// count counts a connection of the peer key, unless it holds its share
// (then false).
func (l *limitListener) count(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPeer > 0 && l.ofPeer[key] >= l.perPeer {
		return false
	}
	l.ofPeer[key]++
	return true
}

// uncount forgets a connection of the peer key.
func (l *limitListener) uncount(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ofPeer[key]--; l.ofPeer[key] <= 0 {
		delete(l.ofPeer, key)
	}
}

// Close closes the listener and ends an Accept that waits for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.g.removeListener(l)
	})
	return l.Listener.Close()
}

// idleClose is how long a connection without a call may stay open while
// more than three quarters of its listener's slots are taken.
const idleClose = 30 * time.Second

// closeIdle closes the connections without a call for idleClose, longest
// idle first, while more than three quarters of the slots are taken.
func (l *limitListener) closeIdle(now time.Time) {
	l.mu.Lock()
	taken := len(l.conns)
	if taken*4 <= cap(l.sem)*3 {
		l.mu.Unlock()
		return
	}
	var idle []*guardConn
	for lc := range l.conns {
		if gc := lc.guard.Load(); gc != nil && gc.idleSince(now) >= l.g.cfg.IdleClose {
			idle = append(idle, gc)
		}
	}
	l.mu.Unlock()
	excess := taken - cap(l.sem)*3/4
	slicesSortByIdle(idle, now)
	for _, gc := range idle[:min(len(idle), excess)] {
		gc.goAwayClose(ClosedIdle, errCodeNo, "idle while the connection slots run short")
	}
}

// limitConn gives its slot back once closed.
type limitConn struct {
	net.Conn
	l     *limitListener
	once  sync.Once
	guard atomic.Pointer[guardConn]

	mu  sync.Mutex // key
	key string     // the peer it counts against
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
		c.l.uncount(c.peerKey())
		c.l.g.b.conns.Add(-1)
		<-c.l.sem
	})
	return err
}

// peerKey is the key of the peer the connection counts against.
func (c *limitConn) peerKey() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.key
}

// identify counts the connection against the peer of a verified client
// identity instead of its source address; false when that peer holds its
// share of the connections.
func (c *limitConn) identify(key string) bool {
	if !c.l.count(key) {
		return false
	}
	c.mu.Lock()
	old := c.key
	c.key = key
	c.mu.Unlock()
	c.l.uncount(old)
	return true
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
// connection on Linux (a *net.TCPConn, or a wrapper of one that has its
// SyscallConn), to d: how long sent bytes may go unacknowledged
// before the kernel drops the connection. gRPC sets it to its keepalive
// Timeout on the connection Accept returned, but only on a *net.TCPConn
// (internal/syscall.SetTCPUserTimeout), which limitConn hides; so it is
// set here, as gRPC would. A failure leaves the connection as it was (as
// on other systems, where gRPC sets nothing).
func setUserTimeout(c net.Conn, d time.Duration) {
	sc, ok := c.(syscall.Conn)
	if _, tcp := c.RemoteAddr().(*net.TCPAddr); !ok || !tcp || runtime.GOOS != "linux" {
		return
	}
	if rc, err := sc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(d/time.Millisecond))
		})
	}
}

// rateLog logs a warning at most once per interval per kind, with the
// number of the same events it left out since.
type rateLog struct {
	log      *slog.Logger
	interval time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	left map[string]int
}

func (r *rateLog) warn(now time.Time, kind, msg string, args ...any) {
	r.mu.Lock()
	if r.last == nil {
		r.last, r.left = map[string]time.Time{}, map[string]int{}
	}
	if last, ok := r.last[kind]; ok && now.Sub(last) < r.interval {
		r.left[kind]++
		r.mu.Unlock()
		return
	}
	left := r.left[kind]
	r.last[kind], r.left[kind] = now, 0
	r.mu.Unlock()
	if left > 0 {
		args = append(args, "same_events_not_logged", left)
	}
	r.log.Warn(msg, args...)
}
