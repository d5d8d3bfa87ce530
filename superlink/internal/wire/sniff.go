package wire

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// Flower 1.8.0's Driver API (TLS) and Flower 1.29.0's ServerAppIo API
// (plaintext: Flower's flower-superexec and flwr-serverapp speak nothing
// else) both default to port 9091. Given one listener for both
// (Listeners.ServerAppIo == Listeners.Driver), a SuperLink serves the
// Driver API to anyone over TLS there and ServerAppIo to the peers
// Listeners.ServerAppIoPeers allows (loopback ones by default): the first
// byte of each connection tells them apart, a TLS handshake record (0x16)
// or the 'P' that starts an HTTP/2 client's preface in plaintext. Anything
// else (a plain HTTP request, a peer that closes or sends nothing) goes to
// the TLS side, whose handshake fails and is counted as such.
//
// The split happens after the port's limitListener accepted the
// connection, so that the limits on connections hold for both APIs,
// also for peers that never send their first byte (they are dropped after
// the handshake timeout). The byte is peeked at on the socket
// (MSG_PEEK), not read, so that the connection gRPC gets is the one
// accepted, socket and all.

// splitFirstByte hands each connection of l to one of two listeners by
// its first byte: an HTTP/2 preface in plaintext from a peer plainOK
// accepts to the second, everything else to the first (TLS), where it
// fails the handshake when it is not TLS. A peer that sends nothing within
// wait goes to the first too, whose handshake timeout ends it. Closing
// both listeners closes l.
func splitFirstByte(l net.Listener, plainOK func(net.Addr) bool, wait time.Duration, warn func(kind, msg string, args ...any)) (tlsL, plainL net.Listener) {
	sp := &splitter{l: l, done: make(chan struct{})}
	t := &subListener{sp: sp, ch: make(chan net.Conn), closed: make(chan struct{})}
	p := &subListener{sp: sp, ch: make(chan net.Conn), closed: make(chan struct{})}
	go sp.run(t, p, plainOK, wait, warn)
	return t, p
}

type splitter struct {
	l      net.Listener
	mu     sync.Mutex
	closed int
	done   chan struct{}
	err    error
}

func (sp *splitter) run(t, p *subListener, plainOK func(net.Addr) bool, wait time.Duration, warn func(kind, msg string, args ...any)) {
	for {
		c, err := sp.l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			sp.mu.Lock()
			sp.err = err
			sp.mu.Unlock()
			close(sp.done)
			return
		}
		go func() {
			first, c, err := peekFirst(c, wait)
			to := t
			if err == nil && first == clientPreface[0] {
				if plainOK(c.RemoteAddr()) {
					to = p
				} else {
					warn("serverappio_peer", "a plaintext connection to the port of the Driver API and ServerAppIo from a peer ServerAppIo does not take: its TLS handshake fails", "peer", c.RemoteAddr().String())
				}
			}
			select {
			case to.ch <- c:
			case <-to.closed:
				c.Close()
			case <-sp.done:
				c.Close()
			}
		}()
	}
}

// peekFirst returns the first byte c will read, waiting at most wait for
// it, and the connection to read from: c itself when the byte could be
// peeked at on its socket, else a wrapper that gives the byte back.
func peekFirst(c net.Conn, wait time.Duration) (byte, net.Conn, error) {
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			var b [1]byte
			var n int
			var perr error
			err := rc.Read(func(fd uintptr) bool {
				n, _, perr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
				return perr != syscall.EAGAIN
			})
			switch {
			case err != nil:
				return 0, c, err
			case perr != nil:
				return 0, c, perr
			case n != 1:
				return 0, c, errors.New("closed before its first byte")
			}
			return b[0], c, nil
		}
	}
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return 0, c, err
	}
	return b[0], &peekedConn{Conn: c, first: b[0], has: true}, nil
}

type subListener struct {
	sp     *splitter
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func (s *subListener) Accept() (net.Conn, error) {
	select {
	case c := <-s.ch:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	case <-s.sp.done:
		s.sp.mu.Lock()
		defer s.sp.mu.Unlock()
		return nil, s.sp.err
	}
}

func (s *subListener) Close() error {
	first := false
	s.once.Do(func() {
		close(s.closed)
		first = true
	})
	if !first {
		return nil
	}
	s.sp.mu.Lock()
	s.sp.closed++
	last := s.sp.closed == 2
	s.sp.mu.Unlock()
	if last {
		return s.sp.l.Close()
	}
	return nil
}

func (s *subListener) Addr() net.Addr { return s.sp.l.Addr() }

// peekedConn gives back the byte peekFirst read from a connection
// without a socket of its own.
type peekedConn struct {
	net.Conn
	first byte
	has   bool
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.has && len(p) > 0 {
		p[0] = c.first
		c.has = false
		return 1, nil
	}
	return c.Conn.Read(p)
}

// NetConn returns the connection under the wrapper.
func (c *peekedConn) NetConn() net.Conn { return c.Conn }

// Loopback reports whether addr is a loopback address (127.0.0.0/8, ::1):
// the peers that may speak ServerAppIo by default.
func Loopback(addr net.Addr) bool {
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.IP.IsLoopback()
	}
	return false
}
