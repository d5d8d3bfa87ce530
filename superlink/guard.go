package superlink

// The frame guard: what bounds the memory a peer can make the SuperLink
// hold, below gRPC.
//
// grpc-go offers no per-method size limit, and reads a request's whole
// body (up to its server-wide 512 MiB limit) before any interceptor runs;
// a tap handle sees the method but not the size. So the guard sits
// between the TLS connection and gRPC's HTTP/2 transport (a net.Conn
// returned by the credentials' ServerHandshake) and reads the frames as
// they pass, without copying DATA payloads:
//
//   - it decodes each request's headers (HPACK, in step with gRPC's own
//     decoder since it sees every header block) to learn the method;
//   - it withholds the first bytes of each message's DATA frame from
//     gRPC until the message's 5-byte gRPC length prefix is complete (a
//     few bytes; gRPC has then not seen the message at all);
//   - it checks the declared length against the method's limit
//     (SmallMessageSize, or MaxMessageSize for PushTaskRes and PushTaskIns)
//     and reserves it in the in-flight budget;
//   - a request refused is never read by gRPC: the guard hands gRPC an
//     RST_STREAM for it (as if the client had cancelled) ahead of the
//     withheld bytes, and answers the client itself, at the next frame
//     boundary of the outgoing bytes, with a trailers-only response
//     (ResourceExhausted and a message naming the limit) and RST_STREAM.
//     Its header block uses only the static table and literals that are
//     never indexed, so gRPC's HPACK encoder and the client's decoder stay
//     in step. gRPC drops the rest of the stream's DATA as it drops data
//     for any closed stream (crediting the connection's flow control);
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
	"log/slog"
	"net"
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
	frameRSTStream    = 0x3
	frameContinuation = 0x9

	flagEndStream  = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20

	errCodeNo     = 0x0
	errCodeCancel = 0x8

	frameHeaderLen = 9
	grpcPrefixLen  = 5
)

// clientPreface starts every HTTP/2 connection from a client.
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxHeldPerConn bounds the bytes withheld on one connection while
// message prefixes are incomplete; a legitimate client needs a few dozen.
const maxHeldPerConn = 64 << 10

// maxPendingAnswers bounds the guard's answers on one connection not yet
// written (each a goroutine until it is queued): a client that sends
// refused requests without reading the answers costs its connection.
const maxPendingAnswers = 16

// lateRelease is how long the reservation of a complete request outlives
// its stream when the client cancelled it: its handler may still run.
const lateRelease = 2 * time.Second

// guard holds what every guarded connection of a SuperLink shares. Its
// methods are safe for concurrent use.
type guard struct {
	b     *budget
	log   *slog.Logger
	stall time.Duration
	now   func() time.Time
	late  time.Duration // lateRelease; 0 releases at once (tests)

	mu    sync.Mutex
	conns map[*guardConn]struct{}
}

func newGuard(b *budget, log *slog.Logger, stall time.Duration) *guard {
	return &guard{b: b, log: log, stall: stall, now: time.Now, late: lateRelease, conns: map[*guardConn]struct{}{}}
}

// guardCreds are transport credentials whose server connections are
// guarded. Everything but ServerHandshake and Clone is the inner
// credentials'.
type guardCreds struct {
	credentials.TransportCredentials
	g *guard
}

// ServerHandshake completes the inner handshake and guards the
// connection; the AuthInfo is the inner one.
func (c guardCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return c.g.wrap(conn), info, nil
}

func (c guardCreds) Clone() credentials.TransportCredentials {
	return guardCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// wrap guards conn.
func (g *guard) wrap(conn net.Conn) *guardConn {
	c := &guardConn{Conn: conn, g: g, peer: conn.RemoteAddr().String(), streams: map[uint32]*gstream{}}
	c.in.preface = len(clientPreface)
	c.in.dec = hpack.NewDecoder(4096, c.headerField)
	c.in.dec.SetMaxStringLength(maxHeaderListSize)
	c.progress.Store(g.now().UnixNano())
	g.mu.Lock()
	g.conns[c] = struct{}{}
	g.mu.Unlock()
	return c
}

// sweep closes the connections whose admitted request received nothing
// for the stall timeout.
func (g *guard) sweep() {
	limit := g.now().Add(-g.stall).UnixNano()
	g.mu.Lock()
	var stalled []*guardConn
	for c := range g.conns {
		if c.waiting.Load() > 0 && c.progress.Load() < limit {
			stalled = append(stalled, c)
		}
	}
	g.mu.Unlock()
	for _, c := range stalled {
		c.closeFor(fmt.Sprintf("a request admitted into the in-flight budget received nothing for %v", g.stall))
	}
}

// gstream is what the guard knows of one request stream.
type gstream struct {
	id     uint32
	method string
	limit  int64

	// Used by the reader only.
	prefix     [grpcPrefixLen]byte
	prefixN    int
	left       int64  // body bytes of the current message still to come
	messages   int    // messages whose prefix was read
	held       []byte // frames withheld while the prefix is incomplete
	holding    bool   // the current frame of this stream is withheld
	refused    bool   // the guard answered it; gRPC drops what follows
	clientDone bool   // END_STREAM or RST_STREAM from the client

	// Shared with the writer, under guardConn.mu.
	reserved    int64
	serverEnded bool // gRPC (or the guard) ended the stream
	waiting     bool // an admitted message is still being received
}

// guardConn is a guarded connection. Read is called by gRPC's reader
// goroutine only; Write by its writer goroutine only; the guard writes
// its answers under wmu at frame boundaries of the outgoing bytes.
type guardConn struct {
	net.Conn
	g    *guard
	peer string

	// Reader side.
	in     inbound
	killed string // why the connection must be closed, once known
	out    []byte // output not yet returned to gRPC
	outBuf []byte // out's backing array, reused
	rerr   error  // the underlying read error, returned once out is drained

	mu       sync.Mutex // guards streams and the shared fields of gstream
	streams  map[uint32]*gstream
	held     int // bytes withheld over all streams
	logged   bool
	dead     bool // shut down: nothing more is reserved
	pending  int  // answers not yet written or dropped
	shutOnce sync.Once
	closing  atomic.Bool

	waiting  atomic.Int32 // streams with an admitted message still being received
	progress atomic.Int64 // unix ns of the last body byte of such a message

	answering sync.WaitGroup // answer goroutines not done yet

	wmu     sync.Mutex // serializes writes, guards outb and answers
	outb    outbound
	answers [][]byte  // frames waiting for a frame boundary in the outgoing bytes
	ended   [8]uint32 // Write's scratch for the streams a write ends
}

// inbound is the reader's parse state of the client's bytes.
type inbound struct {
	preface int // preface bytes still to pass

	hdr  [frameHeaderLen]byte
	hdrN int // header bytes read of the next frame

	typ, flags byte
	sid        uint32
	length     int  // payload length of the current frame
	left       int  // payload bytes left in the current frame
	start      int  // payload offset of the first data (or fragment) byte
	padded     bool // the payload starts with a pad length (PADDED, on DATA or HEADERS)
	pad        int  // padding bytes at the end of the payload

	st *gstream // the stream of the current DATA frame, if guarded

	// The header block in progress.
	inBlock     bool
	blockSID    uint32
	blockEnd    bool // the block's HEADERS frame had END_STREAM
	path, meth  string
	contentType string
	dec         *hpack.Decoder
	decErr      error
}

// headerField is the HPACK decoder's emit function.
func (c *guardConn) headerField(f hpack.HeaderField) {
	switch f.Name {
	case ":path":
		c.in.path = f.Value
	case ":method":
		c.in.meth = f.Value
	case "content-type":
		c.in.contentType = f.Value
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

// Read returns the client's bytes to gRPC, less what is withheld, with
// the guard's RST_STREAM frames inserted.
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
		n, err := c.Conn.Read(p)
		e := emitter{src: p[:n], buf: c.outBuf}
		if n > 0 {
			// Parsed before the error is acted on: a read can return
			// bytes with io.EOF, and what they reserve must be released
			// by the shutdown below.
			c.feed(&e)
			if c.killed != "" {
				// Nothing more reaches gRPC, which sees the connection end.
				c.out, c.rerr = nil, errClosedByLimit
				c.closeFor(c.killed)
				return 0, c.rerr
			}
		}
		if err != nil {
			c.rerr = err
			c.shutdown()
		}
		if n == 0 {
			continue
		}
		if !e.dirty {
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
		if in.st == nil || !in.st.holding {
			e.pass(pos)
		}
		if in.left == 0 {
			c.endFrame(e, pos)
		}
	}
	// The withheld bytes of a frame that goes on in the next read.
	if in.st != nil && in.st.holding && e.from < pos {
		c.hold(in.st, e.take(pos))
	}
	if progressed {
		c.progress.Store(c.g.now().UnixNano())
	}
	if c.held > maxHeldPerConn {
		c.kill(fmt.Sprintf("it withheld message prefixes in more than %d bytes of frames", maxHeldPerConn))
	}
}

// beginFrame acts on a complete frame header that ends at src[pos].
// startedHere tells whether its first byte was in this buffer.
func (c *guardConn) beginFrame(e *emitter, pos int, startedHere bool) {
	in := &c.in
	h := in.hdr[:]
	in.hdrN = 0
	in.length = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	in.left = in.length
	in.typ, in.flags = h[3], h[4]
	in.sid = binary.BigEndian.Uint32(h[5:]) & 0x7fffffff
	in.start, in.pad, in.st = 0, 0, nil
	in.padded = in.flags&flagPadded != 0 && (in.typ == frameData || in.typ == frameHeaders)
	if in.padded {
		in.start = 1
	}
	if in.typ == frameHeaders && in.flags&flagPriority != 0 {
		in.start += 5
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
		// A message starts in this frame, or its prefix goes on.
		hold = st != nil && !st.refused && !st.clientDone && st.left == 0
		in.st = st
	case frameHeaders:
		in.inBlock, in.blockSID, in.blockEnd = true, in.sid, in.flags&flagEndStream != 0
		in.path, in.meth, in.contentType = "", "", ""
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
			delete(c.streams, st.id)
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

// payload handles src[from:to], payload bytes of the current frame, and
// reports whether an admitted message received body bytes.
func (c *guardConn) payload(e *emitter, from, to int) bool {
	in := &c.in
	off := in.length - in.left // payload offset of src[from]
	if in.padded && off == 0 {
		// The pad length; a pad longer than the payload is gRPC's
		// connection error to report.
		in.pad = min(int(e.src[from]), in.length-in.start)
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
	if st == nil || st.refused {
		return false
	}
	progressed := false
	for pos := from; pos < to; {
		if st.left > 0 {
			n := int(min(int64(to-pos), st.left))
			st.left -= int64(n)
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
			// This frame up to here, and any earlier withheld ones.
			c.hold(st, e.take(pos))
			st.holding = false
			if !ok {
				e.insert(rstStreamFrame(st.id, errCodeCancel))
			}
			c.unhold(e, st)
		} else if !ok {
			// The prefix began mid-frame: gRPC has seen part of it.
			c.kill(fmt.Sprintf("a second message in one %s call had to be refused", shortMethod(st.method)))
		}
		if !ok {
			return progressed
		}
		st.left = length
		if length > 0 {
			c.setWaiting(st, true)
		}
	}
	return progressed
}

// admit checks a message of length bytes declared on st against its
// method's limit and the budget, reserves it, and answers the client
// when it is refused.
func (c *guardConn) admit(st *gstream, length int64) bool {
	b := c.g.b
	var msg string
	switch {
	case c.dead:
		return true // the connection ended (closed while the reader parsed): gRPC reads no more
	case length > st.limit:
		b.tooLarge.Add(1)
		msg = fmt.Sprintf("request of %d bytes refused: %s takes at most %s", length, shortMethod(st.method), sizeString(st.limit))
		if st.limit == SmallMessageSize {
			msg += " (only PushTaskRes and PushTaskIns carry parameters, up to " + sizeString(MaxMessageSize) + ")"
		}
	case length > b.largest():
		b.tooLarge.Add(1)
		msg = fmt.Sprintf("request of %d bytes refused: the SuperLink takes requests of at most %s "+
			"(its in-flight budget, --max-inflight-bytes, is %s); its operator can raise it", length, sizeString(b.largest()), sizeString(b.max))
	case st.serverEnded:
		return true // gRPC ended the stream; it drops the data
	case !b.reserve(length):
		b.busy.Add(1)
		msg = fmt.Sprintf("request of %d bytes refused for now: the SuperLink is receiving %s of other requests "+
			"and its in-flight budget (--max-inflight-bytes) is %s; retry shortly", length, sizeString(b.used.Load()), sizeString(b.max))
	default:
		st.reserved += length
		return true
	}
	st.refused = true
	c.releaseReset(st) // gRPC gets an RST_STREAM for it
	c.logRefusal(st, length, msg)
	if c.pending >= maxPendingAnswers {
		c.kill(fmt.Sprintf("it did not read the answers to %d refused requests", c.pending))
		return false
	}
	c.pending++
	frames := trailersOnly(st.id, codes.ResourceExhausted, msg, !st.clientDone)
	c.answering.Add(1)
	go c.answer(st, frames)
	return false
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
		c.kill("its request headers cannot be decoded: " + err.Error())
	}
}

// endBlock acts on a complete request header block.
func (c *guardConn) endBlock() {
	in := &c.in
	in.inBlock = false
	if in.decErr != nil {
		return
	}
	if err := in.dec.Close(); err != nil {
		in.decErr = err
		c.kill("its request headers were cut short: " + err.Error())
		return
	}
	if _, known := c.streams[in.blockSID]; known || in.blockSID == 0 {
		return // trailers from the client, or worse: gRPC ends the connection
	}
	if in.meth != "POST" || !strings.HasPrefix(in.contentType, "application/grpc") || !guardedMethod(in.path) {
		return // gRPC answers these itself without reading a body
	}
	c.streams[in.blockSID] = &gstream{id: in.blockSID, method: in.path, limit: methodLimit(in.path), clientDone: in.blockEnd}
}

// guardedMethod reports whether gRPC serves method (unknown ones it
// answers with Unimplemented without reading their body).
func guardedMethod(m string) bool {
	return strings.HasPrefix(m, "/flwr.proto.Fleet/") || strings.HasPrefix(m, "/flwr.proto.Driver/") || strings.HasPrefix(m, "/grpc.health.v1.Health/")
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
		time.AfterFunc(c.g.late, func() { c.g.b.release(n) })
		return
	}
	c.g.b.release(n)
}

// forget drops st once the server ended it, emitting what was withheld.
// c.mu is held.
func (c *guardConn) forget(e *emitter, st *gstream) {
	c.unhold(e, st)
	st.holding = false
	c.setWaiting(st, false)
	delete(c.streams, st.id)
}

// answer writes frames, the guard's answer on st, at the next frame
// boundary of the outgoing bytes, unless gRPC ended st first.
func (c *guardConn) answer(st *gstream, frames []byte) {
	defer c.answering.Done()
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	ended := st.serverEnded
	st.serverEnded = true
	if len(st.held) == 0 && !st.holding {
		delete(c.streams, st.id)
	}
	if ended {
		c.pending--
	}
	c.mu.Unlock()
	if ended {
		return
	}
	c.answers = append(c.answers, frames)
	if c.outb.atBoundary() {
		c.flushAnswers()
	}
}

// flushAnswers writes the waiting answers. c.wmu is held and the
// outgoing bytes are at a frame boundary.
func (c *guardConn) flushAnswers() {
	for _, f := range c.answers {
		if _, err := c.Conn.Write(f); err != nil {
			break // gRPC sees the broken connection on its next write
		}
	}
	c.mu.Lock()
	c.pending -= len(c.answers)
	c.mu.Unlock()
	c.answers = c.answers[:0]
}

// Write passes gRPC's bytes to the client, noting which streams they end
// and inserting the guard's answers at frame boundaries.
func (c *guardConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	written := 0
	ended := c.ended[:0]
	for len(p) > 0 {
		if len(c.answers) > 0 && c.outb.atBoundary() {
			c.flushAnswers()
		}
		n := len(p)
		if len(c.answers) > 0 {
			n = c.outb.toBoundary(p)
		}
		// Release before the bytes leave: once the client has the answer
		// it may send its next request at once (a node's next push), and
		// that request must find the budget free.
		ended = c.outb.scan(p[:n], ended[:0])
		c.serverEnded(ended)
		m, err := c.Conn.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	if len(c.answers) > 0 && c.outb.atBoundary() {
		c.flushAnswers()
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
		c.g.b.release(st.reserved)
		st.reserved = 0
		c.setWaiting(st, false)
		if len(st.held) == 0 && !st.holding {
			delete(c.streams, id)
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
// of why. c.mu is held.
func (c *guardConn) kill(why string) {
	if c.killed == "" {
		c.killed = why
	}
}

// closeFor closes the connection because of a limit, and logs why.
func (c *guardConn) closeFor(why string) {
	if c.closing.Swap(true) {
		return
	}
	c.g.b.closed.Add(1)
	c.g.log.Warn("connection closed by a limit", "peer", c.peer, "reason", why)
	c.Close()
}

// shutdown releases everything the connection holds, once.
func (c *guardConn) shutdown() {
	c.shutOnce.Do(func() {
		c.g.mu.Lock()
		delete(c.g.conns, c)
		c.g.mu.Unlock()
		c.mu.Lock()
		defer c.mu.Unlock()
		c.dead = true
		for _, st := range c.streams {
			c.g.b.release(st.reserved)
			st.reserved = 0
			st.serverEnded = true
			c.setWaiting(st, false)
		}
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
	n, _ := c.walk(p, true, nil)
	return n
}

// scan consumes p and appends to ended the streams whose end it writes.
func (o *outbound) scan(p []byte, ended []uint32) []uint32 {
	_, ended = o.walk(p, false, ended)
	return ended
}

// walk consumes p, or with stop only up to the first frame boundary after
// its start, and returns how many bytes it consumed, appending to ended
// the streams whose end they write.
func (o *outbound) walk(p []byte, stop bool, ended []uint32) (int, []uint32) {
	for i := 0; i < len(p); {
		if stop && i > 0 && o.atBoundary() {
			return i, ended
		}
		if o.left == 0 {
			k := min(frameHeaderLen-o.hdrN, len(p)-i)
			copy(o.hdr[o.hdrN:], p[i:i+k])
			o.hdrN += k
			i += k
			if o.hdrN == frameHeaderLen {
				ended = o.frame(ended)
			}
			continue
		}
		k := min(o.left, len(p)-i)
		o.left -= k
		i += k
	}
	return len(p), ended
}

// frame acts on a complete frame header.
func (o *outbound) frame(ended []uint32) []uint32 {
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
	case frameRSTStream:
		ended = append(ended, sid)
	}
	return ended
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
