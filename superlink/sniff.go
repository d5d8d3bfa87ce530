package superlink

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// SplitTLS lets one port serve a TLS API and a plaintext one: it accepts
// the connections of l and hands each, by its first byte, to one of two
// listeners: a TLS handshake record (0x16) to tlsL, anything else (an
// HTTP/2 preface in plaintext) to plainL when plainOK accepts the peer's
// address, else it closes it. A peer that sends nothing within
// firstByte is dropped.
//
// Flower 1.8.0's Driver API (TLS) and Flower 1.29.0's ServerAppIo API
// (plaintext: Flower's flower-superexec and flwr-serverapp speak nothing
// else) both default to port 9091; with SplitTLS a SuperLink serves both
// there, the Driver API to anyone (over TLS) and ServerAppIo to the peers
// plainOK allows (loopback ones, unless the operator asks for more).
//
// Closing both listeners closes l.
func SplitTLS(l net.Listener, plainOK func(net.Addr) bool, firstByte time.Duration, log *slog.Logger) (tlsL, plainL net.Listener) {
	sp := &splitter{l: l, done: make(chan struct{})}
	t := &subListener{sp: sp, ch: make(chan net.Conn)}
	p := &subListener{sp: sp, ch: make(chan net.Conn)}
	go sp.run(t, p, plainOK, firstByte, log)
	return t, p
}

type splitter struct {
	l      net.Listener
	mu     sync.Mutex
	closed int
	done   chan struct{}
	err    error
}

func (sp *splitter) run(t, p *subListener, plainOK func(net.Addr) bool, firstByte time.Duration, log *slog.Logger) {
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
			b := make([]byte, 1)
			c.SetReadDeadline(time.Now().Add(firstByte))
			n, err := c.Read(b)
			c.SetReadDeadline(time.Time{})
			if err != nil || n != 1 {
				c.Close()
				return
			}
			to := t
			if b[0] != 0x16 {
				if !plainOK(c.RemoteAddr()) {
					log.Warn("plaintext connection refused: this port takes plaintext (ServerAppIo) from loopback only", "peer", c.RemoteAddr().String())
					c.Close()
					return
				}
				to = p
			}
			pc := &peekedConn{Conn: c, first: b[0], has: true}
			select {
			case to.ch <- pc:
			case <-sp.done:
				c.Close()
			}
		}()
	}
}

type subListener struct {
	sp     *splitter
	ch     chan net.Conn
	once   sync.Once
	closed chan struct{}
}

func (s *subListener) Accept() (net.Conn, error) {
	s.once.Do(func() { s.closed = make(chan struct{}) })
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
	s.once.Do(func() { s.closed = make(chan struct{}) })
	select {
	case <-s.closed:
		return nil
	default:
	}
	close(s.closed)
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

// peekedConn gives back the byte SplitTLS read. It does not expose the
// socket (no SyscallConn): a reader of the socket itself would miss that
// byte, so the wire layer reads these connections plainly.
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

// Loopback reports whether addr is a loopback address (127.0.0.0/8, ::1):
// the peers SplitTLS lets speak plaintext by default.
func Loopback(addr net.Addr) bool {
	if ta, ok := addr.(*net.TCPAddr); ok {
		return ta.IP.IsLoopback()
	}
	return false
}
