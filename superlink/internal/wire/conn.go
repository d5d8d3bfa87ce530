package wire

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc/credentials"
)

// Fewer, larger socket reads and writes under TLS.
//
// crypto/tls reads the socket into a buffer the size of one record (at
// most 16 KiB of plaintext) and writes every record with a system call of
// its own, so a 32 MiB message cost over 2,000 system calls each way, and
// on loopback each write also runs the receiver's TCP processing. The TLS
// connections of a SuperLink's servers (tunedCreds: plaintext ones are
// left to gRPC's own buffering) are wrapped on both sides of TLS:
//
//   - rawConn, under TLS, reads the socket in chunks of up to readChunk
//     bytes into a buffer taken from a pool only once the socket is
//     readable (the wait is Go's poller, with no buffer held) and given
//     back as soon as TLS has taken all of it or the connection closes,
//     so an idle connection holds no buffer; and it gathers the records
//     TLS writes while a batchConn Write is under way. It needs the
//     socket: a connection that is, or wraps one and says so with a
//     SyscallConn method (limitConn does), else it reads plainly;
//   - batchConn, over TLS, is what gRPC writes to: after TLS has written a
//     Write's records into rawConn, they go to the socket in one system
//     call.
//
// The bytes on the wire are exactly those TLS writes, in the same order.

// Read chunks: a connection reads into a small chunk until a read fills
// one (more is waiting: a large message), then into large ones until a
// read leaves one half empty. Polls and pings then take 4 KiB for an
// instant, not 256 KiB.
const (
	smallChunk = 4 << 10
	readChunk  = 256 << 10 // the most read from the socket at once
)

var (
	smallChunks = sync.Pool{New: func() any { b := make([]byte, smallChunk); return &b }}
	readChunks  = sync.Pool{New: func() any { b := make([]byte, readChunk); return &b }}
	// readChunksOut counts the chunks taken and not given back, for tests:
	// idle connections hold none.
	readChunksOut atomic.Int64
	// chunkReads counts the socket reads into a chunk, for tests: that
	// they happen where the SuperLink serves.
	chunkReads atomic.Int64
)

// writeBufs holds the buffers records are gathered in; one is taken for
// each gRPC write of more than one record and given back after it.
var writeBufs = sync.Pool{New: func() any { b := make([]byte, 0, writeBuffer+writeBuffer/16); return &b }}

// maxRecord is the most plaintext in one TLS record: a write of no more
// reaches the socket in one system call without gathering.
const maxRecord = 16 << 10

// batchedCreds are server transport credentials whose connections read and
// write in large chunks. Everything but ServerHandshake and Clone is the
// inner credentials'.
type batchedCreds struct {
	credentials.TransportCredentials
}

// ServerHandshake runs the inner handshake over a rawConn and returns the
// connection wrapped in a batchConn; the AuthInfo is the inner one.
func (c batchedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	r := newRawConn(conn)
	tc, info, err := c.TransportCredentials.ServerHandshake(r)
	if err != nil {
		r.release()
		return nil, nil, err
	}
	return &batchConn{Conn: tc, raw: r}, info, nil
}

// Clone returns a copy.
func (c batchedCreds) Clone() credentials.TransportCredentials {
	return batchedCreds{c.TransportCredentials.Clone()}
}

// rawConn is the socket under TLS. Read is called by one goroutine at a
// time (TLS's reader); Write and Close are safe for concurrent use.
type rawConn struct {
	net.Conn
	sc syscall.RawConn // nil: plain reads

	rmu    sync.Mutex // rbuf, r, w and closed: Close gives the chunk back
	rbuf   *[]byte    // the chunk TLS reads from, nil when drained
	r, w   int
	closed bool

	big  bool                  // read into large chunks
	rfn  func(fd uintptr) bool // fills rbuf once the socket is readable
	rerr error                 // of rfn

	batches atomic.Int32 // batchConn Writes under way
	wmu     sync.Mutex
	wbuf    *[]byte // gathered records, nil when none
}

// newRawConn wraps c, which reads in chunks when it is a syscall.Conn
// (a *net.TCPConn, or a wrapper of one such as limitConn).
func newRawConn(c net.Conn) *rawConn {
	r := &rawConn{Conn: c}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil && rc != nil {
			r.sc = rc
			r.rfn = r.fill
		}
	}
	return r
}

// NetConn returns the connection under the wrapper (a limitConn, for
// the guard).
func (c *rawConn) NetConn() net.Conn { return c.Conn }

// Read serves what is left of the last chunk, or reads a new one.
func (c *rawConn) Read(p []byte) (int, error) {
	for {
		c.rmu.Lock()
		if c.rbuf != nil {
			n := copy(p, (*c.rbuf)[c.r:c.w])
			c.r += n
			if c.r == c.w {
				c.releaseReadLocked()
			}
			c.rmu.Unlock()
			return n, nil
		}
		c.rmu.Unlock()
		if c.sc == nil || len(p) >= readChunk {
			return c.Conn.Read(p)
		}
		c.rerr = nil
		if err := c.sc.Read(c.rfn); err != nil {
			return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
	}
}

// fill reads what the socket holds into a chunk; it returns false, to be
// called again once the socket is readable, when there is nothing yet.
func (c *rawConn) fill(fd uintptr) bool {
	pool := &smallChunks
	if c.big {
		pool = &readChunks
	}
	b := pool.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			pool.Put(b)
			return false
		case err != nil:
			pool.Put(b)
			c.rerr = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
		case n == 0:
			pool.Put(b)
			c.rerr = io.EOF
		default:
			c.big = n == len(*b) || c.big && n >= len(*b)/2
			c.rmu.Lock()
			if c.closed { // Close ran while the socket was read
				c.rmu.Unlock()
				pool.Put(b)
				c.rerr = net.ErrClosed
				return true
			}
			chunkReads.Add(1)
			readChunksOut.Add(1)
			c.rbuf, c.r, c.w = b, 0, n
			c.rmu.Unlock()
		}
		return true
	}
}

// Close closes the connection and gives back the chunk TLS had not read
// all of (a connection closed mid-message).
func (c *rawConn) Close() error {
	err := c.Conn.Close()
	c.rmu.Lock()
	c.closed = true
	c.releaseReadLocked()
	c.rmu.Unlock()
	return err
}

func (c *rawConn) releaseRead() {
	c.rmu.Lock()
	c.releaseReadLocked()
	c.rmu.Unlock()
}

func (c *rawConn) releaseReadLocked() {
	if c.rbuf != nil {
		if cap(*c.rbuf) == readChunk {
			readChunks.Put(c.rbuf)
		} else {
			smallChunks.Put(c.rbuf)
		}
		readChunksOut.Add(-1)
		c.rbuf, c.r, c.w = nil, 0, 0
	}
}

// Write gathers a record while a batch is under way; otherwise (the
// handshake, alerts, a record written from TLS's reader) it writes what
// was gathered, then p.
func (c *rawConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.batches.Load() == 0 {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	if c.wbuf == nil {
		c.wbuf = writeBufs.Get().(*[]byte)
	}
	*c.wbuf = append(*c.wbuf, p...)
	return len(p), nil
}

// flush writes the gathered records in one system call.
func (c *rawConn) flush() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.flushLocked()
}

func (c *rawConn) flushLocked() error {
	if c.wbuf == nil {
		return nil
	}
	b := c.wbuf
	c.wbuf = nil
	_, err := c.Conn.Write(*b)
	c.putWriteBuf(b)
	return err
}

func (c *rawConn) putWriteBuf(b *[]byte) {
	if cap(*b) <= 4*writeBuffer { // a batch grown past that is not kept
		*b = (*b)[:0]
		writeBufs.Put(b)
	}
}

// release gives back the buffers of a connection whose handshake failed.
func (c *rawConn) release() {
	c.releaseRead()
	c.wmu.Lock()
	if c.wbuf != nil {
		c.putWriteBuf(c.wbuf)
		c.wbuf = nil
	}
	c.wmu.Unlock()
}

// batchConn is the TLS connection gRPC reads and writes: the records of
// each Write reach the socket in one system call.
type batchConn struct {
	net.Conn
	raw *rawConn
}

// Write writes p through TLS, then the records it made; p of one record
// goes straight through.
func (c *batchConn) Write(p []byte) (int, error) {
	if len(p) <= maxRecord {
		return c.Conn.Write(p)
	}
	c.raw.batches.Add(1)
	n, err := c.Conn.Write(p)
	c.raw.batches.Add(-1)
	if ferr := c.raw.flush(); err == nil {
		err = ferr
	}
	return n, err
}
