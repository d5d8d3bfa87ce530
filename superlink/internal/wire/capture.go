package wire

// Captured messages: one byte of memory per byte admitted.
//
// gRPC reads every DATA frame into a buffer of its own and holds the
// frames of a message until the message is complete; the codec then
// decodes the frames into the arrays the state keeps. At the peak a
// message is in memory twice: frames and arrays. An admitted message of
// captureMin bytes or more therefore never reaches gRPC as frames: the
// guard reads its bytes from the connection straight into one buffer of
// the message's declared size (the budget has reserved that size), keeps
// its DATA frames from gRPC, and grants the client the flow-control
// window those frames used (gRPC grants window only for the frames it
// sees). Once the message is complete, gRPC gets one small DATA frame in
// their place: a stand-in, a gRPC message holding a per-process random
// marker and an id. The codec (codec.go) recognises the stand-in, takes
// the buffer, and decodes it in place: large bytes fields (the arrays)
// are slices of it, not copies.
//
// What gRPC sees of the stream is then its HEADERS, the stand-in and the
// end; a stream reset by the guard (too slow) gets its RST_STREAM before
// any of that, at the next frame boundary of what gRPC reads, which a
// captured frame never is in the middle of.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"sync"

	"github.com/sepal-fl/sepal/internal/bigbuf"
)

// captureMin is the smallest message the guard captures: smaller ones
// cost gRPC a frame or four.
const captureMin = 64 << 10

// captureAhead is how much flow-control window the guard grants ahead of
// what arrived of a captured message (stream and connection alike): the
// most a client may have in flight for it, enough for a fast link.
const captureAhead = 16 << 20

// grantStep is the least window the guard grants at once while a
// captured message arrives.
const grantStep = 1 << 20

// standInMarker starts every stand-in's body: 16 random bytes no sender
// can guess.
var standInMarker = func() [16]byte {
	var m [16]byte
	if _, err := rand.Read(m[:]); err != nil {
		panic(err)
	}
	return m
}()

// StandInLen is the length of a stand-in message: the marker and an id.
const StandInLen = len(standInMarker) + 8

// capture is one message being read into its buffer. Its fields are used
// under the guardConn's mu.
type capture struct {
	buf       []byte
	n         int    // bytes written into buf
	id        uint64 // its stand-in's id once handed to gRPC
	delivered bool   // the stand-in went to gRPC
	dropped   bool   // reset or ended: what comes is discarded
	credit    int64  // stream window granted for the message's frames
	connCred  int64  // connection window granted for them
}

// capturing reports whether the message still expects bytes.
func (cp *capture) capturing() bool { return cp != nil && !cp.dropped && cp.n < len(cp.buf) }

// drop discards the message and lets its buffer go.
func (cp *capture) drop() {
	cp.dropped = true
	cp.buf = nil
}

// capturing reports whether st's message is being captured.
func (st *gstream) capturing() bool { return st.cap.capturing() }

// StandIns holds the buffers of complete captured messages until the
// codec takes them, by stand-in id. Its methods are safe for concurrent
// use.
type StandIns struct {
	mu   sync.Mutex
	next uint64
	m    map[uint64][]byte
}

func newStandIns() *StandIns { return &StandIns{m: map[uint64][]byte{}} }

// put holds b and returns its id.
func (s *StandIns) put(b []byte) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	s.m[s.next] = b
	return s.next
}

// drop forgets id, if the codec did not take it.
func (s *StandIns) drop(id uint64) {
	s.mu.Lock()
	delete(s.m, id)
	s.mu.Unlock()
}

// Resolve returns the buffer a stand-in message stands for, which
// belongs to the caller from then on, and whether msg is a stand-in at
// all. A stand-in whose buffer is gone (its stream ended first) resolves
// to nil, true. Messages of StandInLen bytes are the only candidates.
func (s *StandIns) Resolve(msg []byte) ([]byte, bool) {
	if s == nil || len(msg) != StandInLen || !bytes.Equal(msg[:len(standInMarker)], standInMarker[:]) {
		return nil, false
	}
	id := binary.BigEndian.Uint64(msg[len(standInMarker):])
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[id]
	delete(s.m, id)
	return b, true
}

// held returns how many buffers wait for the codec, for tests.
func (s *StandIns) held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// standInFrame returns the DATA frame gRPC gets in place of a captured
// message: a gRPC message holding the marker and id, ending the stream
// when end.
func standInFrame(sid uint32, id uint64, end bool) []byte {
	var flags byte
	if end {
		flags = flagEndStream
	}
	b := frameHeader(make([]byte, 0, frameHeaderLen+grpcPrefixLen+StandInLen), grpcPrefixLen+StandInLen, frameData, flags, sid)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(StandInLen))
	b = append(b, standInMarker[:]...)
	return binary.BigEndian.AppendUint64(b, id)
}

// startCapture begins capturing st's message of length bytes, whose
// prefix just arrived: the withheld frames are dropped, gRPC never sees
// them, and the client gets the window they took and more. c.mu is held.
func (c *guardConn) startCapture(st *gstream, length int64) {
	st.cap = &capture{buf: captureBuffer(int(length))}
	st.left, st.recv = length, 0
	st.msgData = grpcPrefixLen
	c.setWaiting(st, true)
	c.grant(st)
}

// captureBuffer returns a buffer of n bytes for a captured message: one
// the process has used already when bigbuf.Shared keeps one that fits (it
// is neither cleared nor faulted in again; the capture overwrites every
// byte before the codec takes it), else a new one, after a collection
// that frees the last messages' buffers for it (CollectFor).
func captureBuffer(n int) []byte {
	if b := bigbuf.Shared.Reuse(n); b != nil {
		return *b
	}
	CollectFor(n)
	return *bigbuf.Shared.Get(n)
}

// captureBytes copies b, data bytes of a captured frame of st, into its
// message, and reports whether the message received any. c.mu is held.
func (c *guardConn) captureBytes(st *gstream, b []byte) bool {
	st.msgData += int64(len(b))
	cp := st.cap
	if !cp.capturing() {
		return false // reset: dropped
	}
	k := copy(cp.buf[cp.n:], b)
	cp.n += k
	c.advance(st, k)
	if k < len(b) {
		c.kill(ClosedViolation, errCodeCancel, "a second message began in the frame that ended a "+shortMethod(st.method)+" request")
	}
	return k > 0
}

// captureDst returns where the next bytes of the connection go when the
// reader is in the middle of a captured message's data: a part of its
// buffer, or nil when they go through feed.
func (c *guardConn) captureDst() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	in := &c.in
	if !in.swallow || in.left == 0 || in.st == nil || !in.st.capturing() {
		return nil
	}
	off := in.length - in.left
	if in.padded && off == 0 {
		return nil // the pad length first
	}
	k := min(in.length-in.pad-off, len(in.st.cap.buf)-in.st.cap.n)
	if k <= 0 {
		return nil // padding, or more than the message
	}
	cp := in.st.cap
	return cp.buf[cp.n : cp.n+k]
}

// captured accounts for n bytes the reader read straight into the buffer
// captureDst returned, and acts on the frame's end.
func (c *guardConn) captured(e *emitter, n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	in := &c.in
	st := in.st
	in.left -= n
	st.msgData += int64(n)
	if cp := st.cap; cp.capturing() {
		cp.n += n
		c.advance(st, n)
	}
	c.progress.Store(c.g.now().UnixNano())
	if in.left == 0 {
		c.endFrame(e, 0)
	}
	c.injectResets(e)
}

// advance counts n body bytes of st's captured message. c.mu is held.
func (c *guardConn) advance(st *gstream, n int) {
	st.left -= int64(n)
	st.recv += int64(n)
	if st.left == 0 {
		c.setWaiting(st, false)
	}
	c.grant(st)
}

// grant gives the client the window of st's captured message's frames
// that gRPC never sees: exactly what they take in all (data and padding)
// once the message is complete, and up to captureAhead before the data
// arrives. The connection's window gets the same less the stand-in,
// which gRPC counts itself. c.mu is held.
func (c *guardConn) grant(st *gstream) {
	cp := st.cap
	if cp == nil || cp.dropped {
		return
	}
	total := int64(len(cp.buf)) + grpcPrefixLen // the message's data bytes
	if cp.delivered {
		total = int64(cp.n) + grpcPrefixLen
	}
	final := st.msgPad + total // all its frames take
	target := min(final, st.msgPad+st.msgData+captureAhead)
	connFinal := final - grpcPrefixLen - int64(StandInLen)
	connTarget := min(target, connFinal)
	if d := target - cp.credit; d > 0 && (d >= grantStep || target == final || cp.credit == 0) {
		d = min(d, maxWindowUpdate)
		c.queue(ctlFrame{b: windowUpdateFrame(st.id, uint32(d))})
		cp.credit += d
	}
	if d := connTarget - cp.connCred; d > 0 && (d >= grantStep || connTarget == connFinal || cp.connCred == 0) {
		d = min(d, maxWindowUpdate)
		c.queue(ctlFrame{b: windowUpdateFrame(0, uint32(d))})
		cp.connCred += d
	}
}

// endCaptured acts on the end of a captured frame of st: the stand-in
// goes to gRPC once the message is complete; a message the client ended
// early reaches gRPC as its prefix alone, which gRPC reports as cut
// short. c.mu is held.
func (c *guardConn) endCaptured(e *emitter, st *gstream) {
	cp := st.cap
	end := c.in.flags&flagEndStream != 0
	if end {
		st.clientDone = true
	}
	switch {
	case cp.dropped:
		// Reset: gRPC has, or gets at the next boundary, its RST_STREAM.
	case cp.n == len(cp.buf):
		c.grant(st)
		if !cp.delivered {
			cp.delivered = true
			cp.id = c.g.standIns.put(cp.buf)
			cp.buf = nil
			e.insert(standInFrame(st.id, cp.id, end))
		}
	case end:
		cp.drop()
		c.setWaiting(st, false)
		b := frameHeader(nil, grpcPrefixLen, frameData, flagEndStream, st.id)
		e.insert(append(b, st.prefix[:]...))
	}
}

// dropCapture lets st's captured message go, taken by the codec or not.
// c.mu is held.
func (c *guardConn) dropCapture(st *gstream) {
	if cp := st.cap; cp != nil {
		if cp.delivered {
			c.g.standIns.drop(cp.id)
		}
		cp.drop()
	}
}
