package wire

// The frame guard: what bounds the memory and work a peer can make the
// SuperLink take on, below gRPC.
//
// grpc-go offers no per-method size limit, and reads a request's whole
// body (up to its server-wide 512 MiB limit) before any interceptor runs;
// a tap handle sees the method but not the size. So the guard sits
// between the TLS connection and gRPC's HTTP/2 transport (a net.Conn
// returned by the credentials' ServerHandshake) and reads the frames as
// they pass:
//
//   - it decodes every request's headers (HPACK, in step with gRPC's own
//     decoder since it sees every header block) to learn the method, and
//     guards every stream the client opens, whatever its headers say:
//     gRPC serves a request when any of its content-type values is a gRPC
//     one, so no header decides what is guarded; a path that is not one of
//     the few methods that carry parameters gets SmallMessageSize;
//   - it withholds the first bytes of each message's DATA frame from
//     gRPC until the message's 5-byte gRPC length prefix is complete (a
//     few bytes; gRPC has then not seen the message at all);
//   - it checks the declared length against the method's limit and
//     reserves it in the in-flight budget, within the peer's shares;
//   - a request refused is never read by gRPC: the guard hands gRPC an
//     RST_STREAM for it (as if the client had cancelled) ahead of the
//     withheld bytes, and answers the client itself, at the next frame
//     boundary of the outgoing bytes, with a trailers-only response
//     (ResourceExhausted and a message naming the limit) and RST_STREAM.
//     Its header block uses only the static table and literals that are
//     never indexed, so gRPC's HPACK encoder and the client's decoder stay
//     in step. gRPC drops the rest of the stream's DATA as it drops data
//     for any closed stream (crediting the connection's flow control);
//   - an admitted message of captureMin bytes or more is captured (see
//     capture.go): its bytes are read from the connection straight into
//     one buffer of its declared size, which the codec then decodes in
//     place, so that a byte admitted costs one byte of memory, not the
//     frames gRPC would hold plus the decoded copy;
//   - an admitted message must keep arriving: after RequestGrace, at
//     Limits.MinRequestRate on average; one that falls behind is reset
//     (RST_STREAM to gRPC, ResourceExhausted to the client) and its part
//     of the budget is free at once;
//   - control frames that cost the server work (RST_STREAM, SETTINGS,
//     PRIORITY, PING, empty DATA) are counted in a token bucket per
//     connection: past it, the guard sends GOAWAY (ENHANCE_YOUR_CALM) and
//     closes the connection, as servers did after CVE-2023-44487;
//   - a reservation is released when the stream ends: gRPC's trailers or
//     RST_STREAM in the outgoing bytes, the client's RST_STREAM (a little
//     later when its message was complete, as its handler may still be
//     running), or the connection's end.
//
// A message that starts in the middle of a DATA frame (only a second
// message in one call, which no Flower client sends) cannot be withheld;
// if it must be refused the connection is closed instead.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
)

// HTTP/2 frame types and flags the guard reads (RFC 9113).
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	errCodeNo        = 0x0
	errCodeCancel    = 0x8
	errCodeCalm      = 0xb // ENHANCE_YOUR_CALM
	errCodeProtocol  = 0x1
	frameHeaderLen   = 9
	grpcPrefixLen    = 5
	maxWindowUpdate  = 1<<31 - 1
	controlBurst     = 200 // control frames a connection may send at once
	controlPerSecond = 20  // and per second after that
)

// clientPreface starts every HTTP/2 connection from a client.
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxHeldPerConn bounds the bytes withheld on one connection while
// message prefixes are incomplete; a legitimate client needs a few dozen.
const maxHeldPerConn = 64 << 10

// maxPendingAnswers bounds the guard's answers on one connection not yet
// written: a client that sends refused requests without reading the
// answers costs its connection.
const maxPendingAnswers = 16

// lateRelease is how long the reservation of a complete request outlives
// its stream when the client cancelled it: its handler may still run.
const lateRelease = 2 * time.Second

// resetPatience is how long a stream reset by the guard may wait for the
// reader to reach a frame boundary (to hand gRPC its RST_STREAM) before
// the connection is closed instead: a peer that stops in the middle of a
// frame.
const resetPatience = 10 * time.Second

// guard holds what every guarded connection of a SuperLink shares. Its
// methods are safe for concurrent use.
type guard struct {
	b        *budget
	log      *slog.Logger
	cfg      Config
	now      func() time.Time
	late     time.Duration // lateRelease; 0 releases at once (tests)
	standIns *StandIns
	rl       rateLog

	mu        sync.Mutex
	conns     map[*guardConn]struct{}
	listeners map[*limitListener]struct{}
}

func newGuard(b *budget, c Config) *guard {
	if c.Grace == 0 {
		c.Grace = RequestGrace
	}
	if c.IdleClose == 0 {
		c.IdleClose = idleClose
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MethodLimit == nil {
		c.MethodLimit = func(string) (int64, string) { return SmallMessageSize, "" }
	}
	return &guard{
		b: b, log: c.Logger, cfg: c, now: time.Now, late: lateRelease, standIns: newStandIns(),
		rl:    rateLog{log: c.Logger, interval: 10 * time.Second},
		conns: map[*guardConn]struct{}{}, listeners: map[*limitListener]struct{}{},
	}
}

// warn logs a warning of kind at most once per 10 s.
func (g *guard) warn(kind, msg string, args ...any) { g.rl.warn(g.now(), kind, msg, args...) }

func (g *guard) addListener(l *limitListener) {
	g.mu.Lock()
	g.listeners[l] = struct{}{}
	g.mu.Unlock()
}

func (g *guard) removeListener(l *limitListener) {
	g.mu.Lock()
	delete(g.listeners, l)
	g.mu.Unlock()
}

// guardCreds are transport credentials whose server connections are
// guarded. Everything but ServerHandshake and Clone is the inner
// credentials'.
type guardCreds struct {
	credentials.TransportCredentials
	g *guard
}

// ServerHandshake completes the inner handshake and guards the
// connection; the AuthInfo is the inner one. A connection whose client
// certificate names an identity counts against that identity's share of
// the connections instead of its address's, and is closed when that
// share is taken.
func (c guardCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	lc := findLimitConn(raw)
	if id, ok := info.(interface{ ClientIdentity() string }); ok && lc != nil && id.ClientIdentity() != "" {
		if !lc.identify(identityKey(id.ClientIdentity())) {
			conn.Close()
			c.g.b.connRefused.add(ConnPerPeer)
			c.g.warn("per_identity", "connection refused: the client identity holds its share of the connections", "identity", id.ClientIdentity(), "max_connections_per_peer", lc.l.perPeer)
			return nil, nil, fmt.Errorf("%s holds its share of the connections", id.ClientIdentity())
		}
	}
	gc := c.g.wrap(conn, lc)
	if lc != nil {
		lc.guard.Store(gc)
	}
	return gc, info, nil
}

func (c guardCreds) Clone() credentials.TransportCredentials {
	return guardCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// findLimitConn returns the limitConn under c, through the wrappers that
// say what they wrap, or nil.
func findLimitConn(c net.Conn) *limitConn {
	for c != nil {
		switch x := c.(type) {
		case *limitConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// wrap guards conn, accepted by lc (nil: not from a limitListener).
func (g *guard) wrap(conn net.Conn, lc *limitConn) *guardConn {
	key := addrKey(conn.RemoteAddr())
	if lc != nil {
		key = lc.peerKey()
	}
	p := g.b.peerFor(key)
	c := &guardConn{Conn: conn, g: g, peer: conn.RemoteAddr().String(), p: p, streams: map[uint32]*gstream{}, tokens: controlBurst}
	c.in.preface = len(clientPreface)
	c.in.dec = hpack.NewDecoder(4096, c.headerField)
	c.in.dec.SetMaxStringLength(maxHeaderListSize)
	now := g.now()
	c.progress.Store(now.UnixNano())
	c.lastActive.Store(now.UnixNano())
	c.tokensAt = now
	g.mu.Lock()
	g.conns[c] = struct{}{}
	g.mu.Unlock()
	return c
}

// sweep resets the requests that fell behind the minimum rate, closes
// the connections stuck in the middle of a frame, and idle connections
// while slots run short.
func (g *guard) sweep() {
	now := g.now()
	g.mu.Lock()
	conns := make([]*guardConn, 0, len(g.conns))
	for c := range g.conns {
		conns = append(conns, c)
	}
	listeners := make([]*limitListener, 0, len(g.listeners))
	for l := range g.listeners {
		listeners = append(listeners, l)
	}
	g.mu.Unlock()
	stallLimit := now.Add(-g.cfg.StallTimeout).UnixNano()
	for _, c := range conns {
		c.checkRates(now)
		switch {
		case c.waiting.Load() > 0 && c.progress.Load() < stallLimit:
			c.goAwayClose(ClosedStalled, errCodeCancel, fmt.Sprintf("a request admitted into the in-flight budget received nothing for %v", g.cfg.StallTimeout))
		case c.resetWaitingSince(now) > resetPatience:
			c.goAwayClose(ClosedStalled, errCodeCancel, fmt.Sprintf("it stopped in the middle of a frame for %v while a request of it was reset", resetPatience))
		}
	}
	for _, l := range listeners {
		l.closeIdle(now)
	}
}

// slicesSortByIdle sorts conns longest idle first.
func slicesSortByIdle(conns []*guardConn, now time.Time) {
	slices.SortFunc(conns, func(a, b *guardConn) int { return int(b.idleSince(now) - a.idleSince(now)) })
}

// gstream is what the guard knows of one request stream.
type gstream struct {
	id     uint32
	method string
	limit  int64
	hint   string // appended to a refusal past limit

	// Used by the reader only.
	prefix     [grpcPrefixLen]byte
	prefixN    int
	messages   int      // messages whose prefix was read
	held       []byte   // frames withheld while the prefix is incomplete
	holding    bool     // the current frame of this stream is withheld
	refused    bool     // the guard answered it; gRPC drops what follows
	clientDone bool     // END_STREAM or RST_STREAM from the client
	cap        *capture // the message being captured, if any
	msgData    int64    // data bytes of the current message's frames so far, prefix included
	msgPad     int64    // padding bytes (and pad lengths) of its frames so far

	// Shared with the writer and the sweeper, under guardConn.mu.
	left        int64 // body bytes of the current message still to come
	recv        int64 // body bytes of the current message received
	admittedAt  int64 // unix ns the current message was admitted
	reserved    int64
	serverEnded bool  // gRPC (or the guard) ended the stream
	waiting     bool  // an admitted message is still being received
	killed      bool  // reset by the guard after it was admitted
	resetAt     int64 // unix ns the guard reset it, until gRPC was told
}

// guardConn is a guarded connection. Read is called by gRPC's reader
// goroutine only; Write by its writer goroutine only; the guard's own
// frames (answers, window updates, GOAWAY) are written under wmu at frame
// boundaries of the outgoing bytes.
type guardConn struct {
	net.Conn
	g    *guard
	peer string
	p    *peerState

	// Reader side.
	in       inbound
	killed   string // why the connection must be closed, once known
	killWhy  string // its metrics reason
	killCode uint32 // its GOAWAY error code
	out      []byte // output not yet returned to gRPC
	outBuf   []byte // out's backing array, reused
	rerr     error  // the underlying read error, returned once out is drained
	tokens   float64
	tokensAt time.Time

	mu       sync.Mutex // guards streams, the shared fields of gstream, pendingRST
	streams  map[uint32]*gstream
	held     int // bytes withheld over all streams
	logged   bool
	dead     bool // shut down: nothing more is reserved
	pending  int  // answers not yet written or dropped
	shutOnce sync.Once
	closing  atomic.Bool
	// pendingRST are streams the guard reset while the reader was away
	// from a frame boundary: gRPC gets their RST_STREAM at the next one.
	pendingRST []*gstream

	waiting    atomic.Int32 // streams with an admitted message still being received
	progress   atomic.Int64 // unix ns of the last body byte of such a message
	lastActive atomic.Int64 // unix ns a stream last opened or ended
	sentData   atomic.Bool  // gRPC wrote DATA since the client's last PING
	wakes      atomic.Int32 // read deadlines set to wake the reader

	answering sync.WaitGroup // the control writer, while it runs

	cmu      sync.Mutex // ctl and flushing
	ctl      []ctlFrame // the guard's frames waiting for a frame boundary
	flushing bool       // a control writer runs
	wmu      sync.Mutex // serializes writes, guards outb
	outb     outbound
	ended    [8]uint32 // Write's scratch for the streams a write ends
}

// ctlFrame is a frame of the guard's own: an answer ending stream st, or
// a connection-level frame (st nil).
type ctlFrame struct {
	st *gstream
	b  []byte
}

// inbound is the reader's parse state of the client's bytes.
type inbound struct {
	preface int // preface bytes still to pass

	hdr  [frameHeaderLen]byte
	hdrN int // header bytes read of the next frame

	typ, flags byte
	sid        uint32
	maxSID     uint32 // the highest stream the client opened
	length     int    // payload length of the current frame
	left       int    // payload bytes left in the current frame
	start      int    // payload offset of the first data (or fragment) byte
	padded     bool   // the payload starts with a pad length (PADDED, on DATA or HEADERS)
	pad        int    // padding bytes at the end of the payload
	swallow    bool   // the current frame is kept from gRPC (a captured message's)

	st *gstream // the stream of the current DATA frame, if guarded

	// The header block in progress.
	inBlock  bool
	blockSID uint32
	blockEnd bool // the block's HEADERS frame had END_STREAM
	path     string
	dec      *hpack.Decoder
	decErr   error
}

// headerField is the HPACK decoder's emit function: the path is all the
// guard needs (the last one given; gRPC refuses a request with two).
func (c *guardConn) headerField(f hpack.HeaderField) {
	if f.Name == ":path" {
		c.in.path = f.Value
	}
}

// emitter builds the bytes Read returns from the bytes read: untouched
// unless something is withheld or inserted, then copied.
type emitter struct {
	src   []byte
	from  int // src[:from] is dealt with (emitted, withheld or dropped)
	dirty bool
	buf   []byte
}

// pass emits src[from:to].
func (e *emitter) pass(to int) {
	if e.dirty {
		e.buf = append(e.buf, e.src[e.from:to]...)
	}
	e.from = to
}

// deviate makes the output a copy, from here on built in buf.
func (e *emitter) deviate() {
	if !e.dirty {
		e.dirty = true
		e.buf = append(e.buf[:0], e.src[:e.from]...)
	}
}

// take returns src[from:to] and marks it dealt with, not emitted.
func (e *emitter) take(to int) []byte {
	e.deviate()
	b := e.src[e.from:to]
	e.from = to
	return b
}

// insert emits b at this point.
func (e *emitter) insert(b []byte) {
	e.deviate()
	e.buf = append(e.buf, b...)
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Read returns the client's bytes to gRPC, less what is withheld or
// captured, with the guard's RST_STREAM frames and captured messages'
// stand-ins inserted.
func (c *guardConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if len(c.out) > 0 {
			n := copy(p, c.out)
			c.out = c.out[n:]
			return n, nil
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		var n int
		var err error
		e := emitter{buf: c.outBuf}
		if dst := c.captureDst(); dst != nil {
			// Inside a captured message: straight into its buffer.
			n, err = c.Conn.Read(dst)
			if n > 0 {
				c.captured(&e, n)
			}
		} else {
			n, err = c.Conn.Read(p)
			e.src = p[:n]
			if n > 0 {
				// Parsed before the error is acted on: a read can return
				// bytes with io.EOF, and what they reserve must be
				// released by the shutdown below.
				c.feed(&e)
			}
		}
		c.flush()
		if c.killed != "" {
			// Nothing more reaches gRPC, which sees the connection end.
			c.out, c.rerr = nil, errClosedByLimit
			c.goAwayCloseDrain(c.killWhy, c.killCode, c.killed, true)
			return 0, c.rerr
		}
		if err != nil {
			if isTimeout(err) && c.wakes.Load() > 0 {
				// The sweeper woke the reader to hand gRPC the resets.
				c.Conn.SetReadDeadline(time.Time{})
				c.mu.Lock()
				c.injectResets(&e)
				c.mu.Unlock()
			} else {
				c.rerr = err
				c.shutdown()
			}
		}
		if !e.dirty {
			if n == 0 || e.src == nil {
				continue
			}
			return n, nil
		}
		c.outBuf = e.buf[:0]
		c.out = e.buf
	}
}

// feed parses e.src, the next bytes from the client.
func (c *guardConn) feed(e *emitter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	in := &c.in
	src := e.src
	pos := 0
	progressed := false
	for pos < len(src) {
		if in.preface > 0 {
			k := min(in.preface, len(src)-pos)
			in.preface -= k
			pos += k
			e.pass(pos)
			continue
		}
		if in.left == 0 {
			// A frame header: withheld until whole.
			startedHere := in.hdrN == 0
			k := min(frameHeaderLen-in.hdrN, len(src)-pos)
			copy(in.hdr[in.hdrN:], src[pos:pos+k])
			in.hdrN += k
			pos += k
			if in.hdrN < frameHeaderLen {
				e.take(pos) // kept in in.hdr
				break
			}
			c.beginFrame(e, pos, startedHere)
			if c.killed != "" {
				return
			}
			if in.left == 0 {
				c.endFrame(e, pos)
			}
			continue
		}
		k := min(in.left, len(src)-pos)
		if c.payload(e, pos, pos+k) {
			progressed = true
		}
		pos += k
		in.left -= k
		switch {
		case in.swallow:
			e.take(pos)
		case in.st == nil || !in.st.holding:
			e.pass(pos)
		}
		if in.left == 0 {
			c.endFrame(e, pos)
		}
		if c.killed != "" {
			return
		}
	}
	// The withheld bytes of a frame that goes on in the next read.
	if in.st != nil && in.st.holding && e.from < pos {
		c.hold(in.st, e.take(pos))
	}
	c.injectResets(e)
	if progressed {
		c.progress.Store(c.g.now().UnixNano())
	}
	if c.held > maxHeldPerConn {
		c.kill(ClosedViolation, errCodeCalm, fmt.Sprintf("it withheld message prefixes in more than %d bytes of frames", maxHeldPerConn))
	}
}

// atBoundary reports whether gRPC has seen nothing of the current frame,
// so that a frame may be inserted for it. c.mu is held.
func (c *guardConn) atBoundary() bool {
	in := &c.in
	return in.preface == 0 && (in.left == 0 || in.swallow || in.st != nil && in.st.holding)
}

// injectResets hands gRPC the RST_STREAM of the streams the sweeper
// reset, when the reader is at a frame boundary. c.mu is held.
func (c *guardConn) injectResets(e *emitter) {
	if len(c.pendingRST) == 0 || !c.atBoundary() {
		return
	}
	for _, st := range c.pendingRST {
		e.insert(rstStreamFrame(st.id, errCodeCancel))
		st.resetAt = 0
	}
	c.pendingRST = c.pendingRST[:0]
}

// resetWaitingSince returns how long the oldest reset not yet handed to
// gRPC has waited.
func (c *guardConn) resetWaitingSince(now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pendingRST) == 0 || c.pendingRST[0].resetAt == 0 {
		return 0
	}
	return now.Sub(time.Unix(0, c.pendingRST[0].resetAt))
}

// frameCost is what a frame costs of the control-frame bucket: frames
// that make the server work without carrying a request forward.
func (c *guardConn) frameCost() float64 {
	in := &c.in
	switch in.typ {
	case frameData:
		if in.length == 0 && in.flags&flagEndStream == 0 {
			return 1
		}
	case frameHeaders, frameContinuation, frameWindowUpdate, frameGoAway:
	case frameSettings:
		if in.flags&flagAck == 0 {
			return 1
		}
	case framePing:
		// BDP probes come as the server sends data; other pings are
		// counted (gRPC's keepalive policy also bounds pings without
		// calls).
		if in.flags&flagAck == 0 && !c.sentData.Swap(false) {
			return 1
		}
	default: // RST_STREAM, PRIORITY, PUSH_PROMISE, extensions
		return 1
	}
	return 0
}

// spend takes cost from the connection's control-frame bucket, and kills
// the connection when it runs dry. c.mu is held.
func (c *guardConn) spend(cost float64) {
	if cost == 0 {
		return
	}
	now := c.g.now()
	c.tokens = min(controlBurst, c.tokens+now.Sub(c.tokensAt).Seconds()*controlPerSecond)
	c.tokensAt = now
	c.tokens -= cost
	if c.tokens < 0 {
		c.kill(ClosedControlFrames, errCodeCalm, fmt.Sprintf("it sent control frames (resets, settings, pings, priorities, empty data) faster than %d at once and %d a second", controlBurst, controlPerSecond))
	}
}

// beginFrame acts on a complete frame header that ends at src[pos].
// startedHere tells whether its first byte was in this buffer.
func (c *guardConn) beginFrame(e *emitter, pos int, startedHere bool) {
	in := &c.in
	// A frame boundary: resets the sweeper made go first.
	c.injectResets(e)
	h := in.hdr[:]
	in.hdrN = 0
	in.length = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	in.left = in.length
	in.typ, in.flags = h[3], h[4]
	in.sid = binary.BigEndian.Uint32(h[5:]) & 0x7fffffff
	in.start, in.pad, in.st, in.swallow = 0, 0, nil, false
	in.padded = in.flags&flagPadded != 0 && (in.typ == frameData || in.typ == frameHeaders)
	if in.padded {
		in.start = 1
	}
	if in.typ == frameHeaders && in.flags&flagPriority != 0 {
		in.start += 5
	}
	c.spend(c.frameCost())
	if c.killed != "" {
		return
	}

	var st *gstream
	if in.sid != 0 {
		st = c.streams[in.sid]
	}
	if st != nil && st.serverEnded {
		c.forget(e, st)
		st = nil
	}
	hold := false
	switch in.typ {
	case frameData:
		in.st = st
		switch {
		case st == nil:
		case st.capturing():
			// The next frame of a captured message: kept from gRPC.
			in.swallow = true
			e.take(pos)
			return
		default:
			// A message starts in this frame, or its prefix goes on.
			hold = !st.refused && !st.clientDone && st.left == 0
			if hold && st.prefixN == 0 {
				st.msgData, st.msgPad = 0, 0
			}
		}
	case frameHeaders:
		in.inBlock, in.blockSID, in.blockEnd = true, in.sid, in.flags&flagEndStream != 0
		in.path = ""
		fallthrough
	default:
		if st != nil {
			// Anything else on a stream with withheld bytes (its
			// RST_STREAM, trailers): the withheld bytes go first.
			c.unhold(e, st)
		}
	}
	if hold {
		st.holding = true
		if startedHere {
			c.hold(st, e.take(pos))
		} else {
			e.take(pos)
			c.hold(st, in.hdr[:])
		}
		return
	}
	if startedHere {
		e.pass(pos)
	} else {
		e.take(pos)
		e.insert(in.hdr[:])
	}
}

// endFrame acts on the end of the current frame, at src[pos].
func (c *guardConn) endFrame(e *emitter, pos int) {
	in := &c.in
	switch in.typ {
	case frameData:
		st := in.st
		in.st = nil
		if st == nil {
			return
		}
		if in.swallow {
			in.swallow = false
			c.endCaptured(e, st)
			return
		}
		if st.holding {
			c.hold(st, e.take(pos))
			st.holding = false
		}
		if st.serverEnded {
			c.forget(e, st)
			return
		}
		if in.flags&flagEndStream != 0 {
			st.clientDone = true
			c.unhold(e, st) // a prefix cut short: gRPC reports it
			c.setWaiting(st, false)
		}
	case frameHeaders, frameContinuation:
		if in.flags&flagEndHeaders != 0 && in.inBlock {
			c.endBlock()
		}
	case frameRSTStream:
		if st := c.streams[in.sid]; st != nil {
			st.clientDone = true
			c.releaseReset(st)
			c.dropCapture(st)
			delete(c.streams, st.id)
			c.noteActive()
		}
	}
}

// hold withholds b, bytes of st's frames.
func (c *guardConn) hold(st *gstream, b []byte) {
	st.held = append(st.held, b...)
	c.held += len(b)
}

// unhold emits st's withheld bytes.
func (c *guardConn) unhold(e *emitter, st *gstream) {
	if len(st.held) > 0 {
		e.insert(st.held)
		c.held -= len(st.held)
		st.held = nil
	}
}

// discardHeld drops st's withheld bytes: gRPC never sees them.
func (c *guardConn) discardHeld(st *gstream) {
	c.held -= len(st.held)
	st.held = nil
}

// payload handles src[from:to], payload bytes of the current frame, and
// reports whether an admitted message received body bytes.
func (c *guardConn) payload(e *emitter, from, to int) bool {
	in := &c.in
	off := in.length - in.left // payload offset of src[from]
	if in.padded && off == 0 {
		// The pad length; a pad longer than the payload is gRPC's
		// connection error to report (and the guard's, when it swallows
		// the frame).
		in.pad = min(int(e.src[from]), in.length-in.start)
		if in.typ == frameData && in.st != nil {
			in.st.msgPad += int64(in.pad) + 1
			if in.swallow && in.st.cap != nil {
				c.grant(in.st)
			}
		}
	}
	// The data (or header block fragment) part of src[from:to].
	a := max(off, in.start)
	b := min(off+to-from, in.length-in.pad)
	if a >= b {
		return false
	}
	from, to = from+a-off, from+b-off
	switch in.typ {
	case frameData:
		return c.data(e, from, to)
	case frameHeaders, frameContinuation:
		c.fragment(e.src[from:to])
	}
	return false
}

// data handles src[from:to], data bytes of a DATA frame, and reports
// whether an admitted message received body bytes.
func (c *guardConn) data(e *emitter, from, to int) bool {
	st := c.in.st
	if st == nil {
		return false
	}
	if c.in.swallow {
		return c.captureBytes(st, e.src[from:to])
	}
	if st.refused {
		return false
	}
	st.msgData += int64(to - from)
	progressed := false
	for pos := from; pos < to; {
		if st.left > 0 {
			n := int(min(int64(to-pos), st.left))
			st.left -= int64(n)
			st.recv += int64(n)
			pos += n
			progressed = true
			if st.left == 0 {
				c.setWaiting(st, false)
			}
			continue
		}
		n := min(grpcPrefixLen-st.prefixN, to-pos)
		copy(st.prefix[st.prefixN:], e.src[pos:pos+n])
		st.prefixN += n
		pos += n
		if st.prefixN < grpcPrefixLen {
			continue
		}
		st.prefixN = 0
		st.messages++
		length := int64(binary.BigEndian.Uint32(st.prefix[1:]))
		ok := c.admit(st, length)
		if st.holding {
			if ok && length >= captureMin && st.prefix[0] == 0 && !c.dead {
				// The rest of the frame, and the message, go to a
				// buffer of its own.
				e.take(pos)
				c.discardHeld(st)
				st.holding = false
				c.in.swallow = true
				c.startCapture(st, length)
				return c.captureBytes(st, e.src[pos:to]) || progressed
			}
			// This frame up to here, and any earlier withheld ones.
			c.hold(st, e.take(pos))
			st.holding = false
			if !ok {
				e.insert(rstStreamFrame(st.id, errCodeCancel))
			}
			c.unhold(e, st)
		} else if !ok {
			// The prefix began mid-frame: gRPC has seen part of it.
			c.kill(ClosedViolation, errCodeCancel, fmt.Sprintf("a second message in one %s call had to be refused", shortMethod(st.method)))
		}
		if !ok {
			return progressed
		}
		st.left, st.recv = length, 0
		if length > 0 {
			c.setWaiting(st, true)
		}
	}
	return progressed
}

// admit checks a message of length bytes declared on st against its
// method's limit and the budget, reserves it, and answers the client
// when it is refused. c.mu is held.
func (c *guardConn) admit(st *gstream, length int64) bool {
	b := c.g.b
	var msg, reason string
	switch {
	case c.dead:
		return true // the connection ended (closed while the reader parsed): gRPC reads no more
	case length > st.limit:
		reason = RefusedTooLarge
		msg = fmt.Sprintf("request of %d bytes refused: %s takes at most %s", length, shortMethod(st.method), sizeString(st.limit))
		if st.hint != "" {
			msg += " (" + st.hint + ")"
		}
	case st.serverEnded:
		return true // gRPC ended the stream; it drops the data
	default:
		switch reason = b.reserve(length, c.p); reason {
		case "":
			st.reserved += length
			st.admittedAt = c.g.now().UnixNano()
			return true
		case RefusedTooLarge:
			msg = fmt.Sprintf("request of %d bytes refused: the SuperLink takes requests of at most %s from one peer "+
				"(three quarters of its in-flight budget of %s); its operator can raise it", length, sizeString(b.largest()), sizeString(b.max))
		case RefusedPeerShare:
			msg = fmt.Sprintf("request of %d bytes refused for now: this peer's requests hold %s of the SuperLink's in-flight budget "+
				"of %s, its share; retry once they are answered", length, sizeString(c.p.held), sizeString(b.max))
		default:
			msg = fmt.Sprintf("request of %d bytes refused for now: the SuperLink is receiving %s of other requests "+
				"and its in-flight budget is %s; retry shortly", length, sizeString(b.used.Load()), sizeString(b.max))
		}
	}
	b.refused.add(reason)
	st.refused = true
	c.releaseReset(st) // gRPC gets an RST_STREAM for it
	c.logRefusal(st, length, msg)
	c.answerLocked(st, codes.ResourceExhausted, msg)
	return false
}

// answerLocked queues the guard's trailers-only answer on st, unless too
// many are waiting already (then the connection is killed). c.mu is held.
func (c *guardConn) answerLocked(st *gstream, code codes.Code, msg string) {
	if c.pending >= maxPendingAnswers {
		c.kill(ClosedViolation, errCodeCalm, fmt.Sprintf("it did not read the answers to %d refused requests", c.pending))
		return
	}
	c.pending++
	c.queue(ctlFrame{st: st, b: trailersOnly(st.id, code, msg, !st.clientDone)})
}

func shortMethod(m string) string { return m[strings.LastIndexByte(m, '/')+1:] }

// setWaiting records whether st has an admitted message still being
// received, for the stall timeout. c.mu is held.
func (c *guardConn) setWaiting(st *gstream, w bool) {
	if st.waiting != w {
		st.waiting = w
		if w {
			c.waiting.Add(1)
			c.progress.Store(c.g.now().UnixNano())
		} else {
			c.waiting.Add(-1)
		}
	}
}

// checkRates resets the streams whose admitted message fell behind the
// minimum rate, and wakes the reader to hand gRPC their resets.
//
// While frames of the guard's own wait to be written (window updates among
// them), the client may be waiting for them: nobody is blamed then (a
// client that reads nothing stalls, and StallTimeout ends its connection).
func (c *guardConn) checkRates(now time.Time) {
	if c.waiting.Load() == 0 || c.hasCtl() {
		return
	}
	cfg := c.g.cfg
	c.mu.Lock()
	reset := false
	for _, st := range c.streams {
		if !st.waiting || st.killed {
			continue
		}
		elapsed := now.Sub(time.Unix(0, st.admittedAt))
		if elapsed <= cfg.Grace {
			continue
		}
		need := float64(cfg.MinRequestRate) * (elapsed - cfg.Grace).Seconds()
		if float64(st.recv) >= need {
			continue
		}
		c.resetSlow(st, elapsed, now)
		reset = true
	}
	c.mu.Unlock()
	if reset {
		c.flush()
		c.wake()
	}
}

// resetSlow resets st, whose message fell behind: its budget is free at
// once, the client is answered, and gRPC gets the reset at the reader's
// next frame boundary. c.mu is held.
func (c *guardConn) resetSlow(st *gstream, elapsed time.Duration, now time.Time) {
	st.killed, st.refused = true, true
	c.setWaiting(st, false)
	c.g.b.release(st.reserved, c.p)
	st.reserved = 0
	if st.cap != nil {
		st.cap.drop()
	}
	st.resetAt = now.UnixNano()
	c.pendingRST = append(c.pendingRST, st)
	c.g.b.refused.add(RefusedTooSlow)
	msg := fmt.Sprintf("request of %d bytes reset: %d bytes arrived in %v, slower than the SuperLink's minimum of %s/s after %v; "+
		"retry over a faster link", st.recv+st.left, st.recv, elapsed.Round(time.Millisecond), sizeString(c.g.cfg.MinRequestRate), c.g.cfg.Grace)
	c.g.warn("too_slow", "request reset: it arrived slower than the minimum rate", "peer", c.peer, "method", st.method, "received_bytes", st.recv, "declared_bytes", st.recv+st.left)
	if !st.serverEnded {
		c.answerLocked(st, codes.ResourceExhausted, msg)
	}
}

// wake makes the reader return from a read that waits for the client, so
// that it hands gRPC the resets.
func (c *guardConn) wake() {
	c.wakes.Add(1)
	c.Conn.SetReadDeadline(time.Now())
}

func (c *guardConn) logRefusal(st *gstream, length int64, msg string) {
	level := slog.LevelWarn
	if c.logged {
		level = slog.LevelDebug // one warning per connection
	}
	c.logged = true
	c.g.log.Log(context.Background(), level, "request refused by a limit", "peer", c.peer, "method", st.method, "declared_bytes", length, "reason", msg)
}

// fragment feeds b, part of a header block, to the HPACK decoder.
func (c *guardConn) fragment(b []byte) {
	in := &c.in
	if !in.inBlock || in.decErr != nil {
		return
	}
	if _, err := in.dec.Write(b); err != nil {
		in.decErr = err
		c.kill(ClosedViolation, errCodeProtocol, "its request headers cannot be decoded: "+err.Error())
	}
}

// endBlock acts on a complete request header block: every stream the
// client opens is guarded, whatever its headers say.
func (c *guardConn) endBlock() {
	in := &c.in
	in.inBlock = false
	if in.decErr != nil {
		return
	}
	if err := in.dec.Close(); err != nil {
		in.decErr = err
		c.kill(ClosedViolation, errCodeProtocol, "its request headers were cut short: "+err.Error())
		return
	}
	sid := in.blockSID
	if _, known := c.streams[sid]; known || sid == 0 || sid%2 == 0 || sid <= in.maxSID {
		return // trailers from the client, or worse: gRPC ends the stream or the connection
	}
	in.maxSID = sid
	limit, hint := c.g.cfg.MethodLimit(in.path)
	c.streams[sid] = &gstream{id: sid, method: in.path, limit: limit, hint: hint, clientDone: in.blockEnd}
	c.noteActive()
}

// noteActive records that a stream opened or ended, for idleSince.
func (c *guardConn) noteActive() { c.lastActive.Store(c.g.now().UnixNano()) }

// idleSince returns how long the connection has had no stream, 0 while
// it has one.
func (c *guardConn) idleSince(now time.Time) time.Duration {
	c.mu.Lock()
	n := len(c.streams)
	c.mu.Unlock()
	if n > 0 {
		return 0
	}
	return now.Sub(time.Unix(0, c.lastActive.Load()))
}

// releaseReset releases what st reserved when gRPC is told that st was
// reset (by the client, or by the guard): at once, or a little later when
// a message was complete, as its handler may still be at work. c.mu is
// held.
func (c *guardConn) releaseReset(st *gstream) {
	c.setWaiting(st, false)
	if st.reserved == 0 {
		return
	}
	n := st.reserved
	st.reserved = 0
	if st.left == 0 && st.prefixN == 0 && st.messages > 0 && c.g.late > 0 {
		p := c.p
		time.AfterFunc(c.g.late, func() { c.g.b.release(n, p) })
		return
	}
	c.g.b.release(n, c.p)
}

// forget drops st once the server ended it, emitting what was withheld.
// c.mu is held.
func (c *guardConn) forget(e *emitter, st *gstream) {
	c.unhold(e, st)
	st.holding = false
	c.setWaiting(st, false)
	c.dropCapture(st)
	delete(c.streams, st.id)
	c.noteActive()
}

// queue adds f to the guard's frames and has them written at the next
// frame boundary of the outgoing bytes, by gRPC's next Write or a writer
// of the guard's own.
//
// It only queues: the caller, once it no longer holds c.mu, calls flush.
func (c *guardConn) queue(f ctlFrame) {
	c.cmu.Lock()
	c.ctl = append(c.ctl, f)
	c.cmu.Unlock()
}

// flush has the queued frames written by a writer of the guard's own, at
// the next frame boundary of the outgoing bytes (or by gRPC's next
// Write, whichever comes first). Never the caller's goroutine: the reader
// must not block on a write (a client that reads nothing, or whose own
// reader waits for its writer, would stop both sides). c.mu is not held.
func (c *guardConn) flush() {
	if !c.hasCtl() {
		return
	}
	c.cmu.Lock()
	start := !c.flushing
	c.flushing = true
	c.cmu.Unlock()
	if start {
		c.answering.Add(1)
		go c.flushCtl()
	}
}

// flushCtl writes the queued frames while the outgoing bytes are at a
// frame boundary (otherwise gRPC's next Write does).
func (c *guardConn) flushCtl() {
	defer c.answering.Done()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for {
		at := c.outb.atBoundary()
		if at {
			c.writeCtl()
		}
		c.cmu.Lock()
		if !at || len(c.ctl) == 0 {
			c.flushing = false
			c.cmu.Unlock()
			return
		}
		c.cmu.Unlock()
	}
}

// writeCtl writes the queued frames. c.wmu is held and the outgoing bytes
// are at a frame boundary. An answer on a stream gRPC ended first is
// dropped.
func (c *guardConn) writeCtl() {
	c.cmu.Lock()
	frames := c.ctl
	c.ctl = nil
	c.cmu.Unlock()
	for _, f := range frames {
		if f.st != nil {
			c.mu.Lock()
			ended := f.st.serverEnded
			f.st.serverEnded = true
			c.pending--
			if !ended && len(f.st.held) == 0 && !f.st.holding && !f.st.capturing() {
				c.dropCapture(f.st)
				delete(c.streams, f.st.id)
				c.noteActive()
			}
			c.mu.Unlock()
			if ended {
				continue
			}
		}
		if _, err := c.Conn.Write(f.b); err != nil {
			break // gRPC sees the broken connection on its next write
		}
	}
}

// hasCtl reports whether guard frames wait.
func (c *guardConn) hasCtl() bool {
	c.cmu.Lock()
	defer c.cmu.Unlock()
	return len(c.ctl) > 0
}

// Write passes gRPC's bytes to the client, noting which streams they end
// and inserting the guard's frames at frame boundaries.
func (c *guardConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	written := 0
	ended := c.ended[:0]
	for len(p) > 0 {
		waiting := c.hasCtl()
		if waiting && c.outb.atBoundary() {
			c.writeCtl()
			waiting = false
		}
		n := len(p)
		if waiting {
			n = c.outb.toBoundary(p)
		}
		// Release before the bytes leave: once the client has the answer
		// it may send its next request at once (a node's next push), and
		// that request must find the budget free.
		var data bool
		ended, data = c.outb.scan(p[:n], ended[:0])
		if data {
			c.sentData.Store(true)
		}
		c.serverEnded(ended)
		m, err := c.Conn.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	if c.outb.atBoundary() && c.hasCtl() {
		c.writeCtl()
	}
	return written, nil
}

// serverEnded releases the streams gRPC ended.
func (c *guardConn) serverEnded(ids []uint32) {
	if len(ids) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range ids {
		st := c.streams[id]
		if st == nil {
			continue
		}
		st.serverEnded = true
		c.g.b.release(st.reserved, c.p)
		st.reserved = 0
		c.setWaiting(st, false)
		if len(st.held) == 0 && !st.holding && !st.capturing() {
			c.dropCapture(st)
			delete(c.streams, id)
			c.noteActive()
		}
		// Otherwise the reader forgets it at the end of its frame,
		// emitting what it withheld.
	}
}

// Close closes the connection and releases its reservations.
func (c *guardConn) Close() error {
	err := c.Conn.Close()
	c.shutdown()
	return err
}

// errClosedByLimit is what gRPC reads from a connection a limit closed.
var errClosedByLimit = errors.New("connection closed by a limit")

// kill has Read close the connection once this read is parsed, because
// of why (reason: its metrics label; code: its GOAWAY's). c.mu is held.
func (c *guardConn) kill(reason string, code uint32, why string) {
	if c.killed == "" {
		c.killed, c.killWhy, c.killCode = why, reason, code
	}
}

// goAwayClose sends GOAWAY with code and closes the connection because
// of a limit, counting reason and logging why. The GOAWAY goes out when
// the outgoing bytes reach a frame boundary within half a second (gRPC's
// writer may be blocked on a peer that reads nothing). Called by the
// reader, it then drains what the peer still sends for up to a second
// before closing: a socket closed with unread bytes is reset, and the
// peer may then lose the GOAWAY it has not read yet.
func (c *guardConn) goAwayClose(reason string, code uint32, why string) {
	c.goAwayCloseDrain(reason, code, why, false)
}

func (c *guardConn) goAwayCloseDrain(reason string, code uint32, why string, drain bool) {
	if c.closing.Swap(true) {
		return
	}
	c.g.b.closed.add(reason)
	c.g.warn("closed_"+reason, "connection closed by a limit", "peer", c.peer, "reason", why)
	if c.lockWrites(500 * time.Millisecond) {
		if c.outb.atBoundary() {
			c.mu.Lock()
			last := c.in.maxSID
			c.mu.Unlock()
			c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			c.Conn.Write(goAwayFrame(last, code, why))
		}
		c.wmu.Unlock()
	}
	if drain {
		raw := c.Conn
		if nc, ok := raw.(interface{ NetConn() net.Conn }); ok {
			raw = nc.NetConn() // below TLS: what comes need not be decrypted
		}
		raw.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, raw)
	}
	c.Close()
}

// lockWrites takes wmu, waiting at most d; false when it could not.
func (c *guardConn) lockWrites(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !c.wmu.TryLock() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// shutdown releases everything the connection holds, once.
func (c *guardConn) shutdown() {
	c.shutOnce.Do(func() {
		c.g.mu.Lock()
		delete(c.g.conns, c)
		c.g.mu.Unlock()
		c.mu.Lock()
		c.dead = true
		for _, st := range c.streams {
			c.g.b.release(st.reserved, c.p)
			st.reserved = 0
			st.serverEnded = true
			c.setWaiting(st, false)
			c.dropCapture(st)
		}
		c.pendingRST = nil
		c.mu.Unlock()
		c.g.b.unref(c.p)
	})
}

// outbound follows the frames gRPC writes: where they start, and which
// end a stream.
type outbound struct {
	hdr     [frameHeaderLen]byte
	hdrN    int
	left    int  // payload bytes left of the current frame
	inBlock bool // inside a header block (HEADERS without END_HEADERS)
}

// atBoundary reports whether the next byte written starts a frame
// outside a header block, where another frame may go.
func (o *outbound) atBoundary() bool { return o.hdrN == 0 && o.left == 0 && !o.inBlock }

// toBoundary returns how many bytes of p reach the end of the current
// frame (all of p when it does not), without consuming them.
func (o *outbound) toBoundary(p []byte) int {
	c := *o
	n, _, _ := c.walk(p, true, nil)
	return n
}

// scan consumes p and appends to ended the streams whose end it writes;
// data tells whether it writes a DATA frame.
func (o *outbound) scan(p []byte, ended []uint32) ([]uint32, bool) {
	_, ended, data := o.walk(p, false, ended)
	return ended, data
}

// walk consumes p, or with stop only up to the first frame boundary after
// its start, and returns how many bytes it consumed, appending to ended
// the streams whose end they write.
func (o *outbound) walk(p []byte, stop bool, ended []uint32) (int, []uint32, bool) {
	data := false
	for i := 0; i < len(p); {
		if stop && i > 0 && o.atBoundary() {
			return i, ended, data
		}
		if o.left == 0 {
			k := min(frameHeaderLen-o.hdrN, len(p)-i)
			copy(o.hdr[o.hdrN:], p[i:i+k])
			o.hdrN += k
			i += k
			if o.hdrN == frameHeaderLen {
				var d bool
				ended, d = o.frame(ended)
				data = data || d
			}
			continue
		}
		k := min(o.left, len(p)-i)
		o.left -= k
		i += k
	}
	return len(p), ended, data
}

// frame acts on a complete frame header.
func (o *outbound) frame(ended []uint32) ([]uint32, bool) {
	h := o.hdr[:]
	o.hdrN = 0
	o.left = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	typ, flags := h[3], h[4]
	sid := binary.BigEndian.Uint32(h[5:]) & 0x7fffffff
	switch typ {
	case frameHeaders:
		o.inBlock = flags&flagEndHeaders == 0
		if flags&flagEndStream != 0 {
			ended = append(ended, sid)
		}
	case frameContinuation:
		o.inBlock = flags&flagEndHeaders == 0
	case frameData:
		if flags&flagEndStream != 0 {
			ended = append(ended, sid)
		}
		return ended, true
	case frameRSTStream:
		ended = append(ended, sid)
	}
	return ended, false
}

// frameHeader appends an HTTP/2 frame header.
func frameHeader(b []byte, length int, typ, flags byte, sid uint32) []byte {
	b = append(b, byte(length>>16), byte(length>>8), byte(length), typ, flags)
	return binary.BigEndian.AppendUint32(b, sid)
}

// rstStreamFrame returns an RST_STREAM frame.
func rstStreamFrame(sid uint32, code uint32) []byte {
	b := frameHeader(make([]byte, 0, frameHeaderLen+4), 4, frameRSTStream, 0, sid)
	return binary.BigEndian.AppendUint32(b, code)
}

// windowUpdateFrame returns a WINDOW_UPDATE frame of stream sid (0: the
// connection).
func windowUpdateFrame(sid uint32, n uint32) []byte {
	b := frameHeader(make([]byte, 0, frameHeaderLen+4), 4, frameWindowUpdate, 0, sid)
	return binary.BigEndian.AppendUint32(b, n)
}

// goAwayFrame returns a GOAWAY frame naming last as the last stream
// processed, with code and why as debug data.
func goAwayFrame(last uint32, code uint32, why string) []byte {
	why = why[:min(len(why), 256)]
	b := frameHeader(nil, 8+len(why), frameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, last)
	b = binary.BigEndian.AppendUint32(b, code)
	return append(b, why...)
}

// trailersOnly returns a gRPC trailers-only response ending stream sid
// with code and msg, followed by RST_STREAM(NO_ERROR) when the client is
// still sending. The header block uses only the static table and
// never-indexed literals: no HPACK table changes on either side.
func trailersOnly(sid uint32, code codes.Code, msg string, rst bool) []byte {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range []hpack.HeaderField{
		{Name: ":status", Value: "200"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: fmt.Sprint(uint32(code))},
		{Name: "grpc-message", Value: encodeGRPCMessage(msg)},
	} {
		f.Sensitive = true
		_ = enc.WriteField(f) // writes to a bytes.Buffer: no error
	}
	b := frameHeader(nil, block.Len(), frameHeaders, flagEndStream|flagEndHeaders, sid)
	b = append(b, block.Bytes()...)
	if rst {
		b = append(b, rstStreamFrame(sid, errCodeNo)...)
	}
	return b
}

// encodeGRPCMessage percent-encodes msg as gRPC's grpc-message header
// wants: bytes outside printable ASCII, and '%'.
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		ch := msg[i]
		if ch >= ' ' && ch <= '~' && ch != '%' {
			b.WriteByte(ch)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", ch)
	}
	return b.String()
}
