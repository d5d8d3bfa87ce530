package superlink

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// A graceful stop first stops taking connections off each listening
// socket's queue, without closing the socket, and only then lets gRPC
// stop. gRPC closes a connection it takes while stopping, and a listening
// socket that outlives the process (systemd socket activation, or a
// supervisor that passes it) keeps the connections queued meanwhile for
// the next process; so no connection may be taken off the queue once the
// stop began, and each one taken before must reach gRPC before gRPC
// stops. That is what gate does, under the wire layer's listeners.

// acceptSettle bounds how long a stop waits for connections already
// taken off the queue to reach gRPC (the Driver API's port first peeks
// at each connection's first byte, which a client sends as soon as it
// connected). A peer silent that long is dropped, as it would have been.
const acceptSettle = time.Second

// gate is a listener whose Accept can be stopped without closing the
// socket. The connections it returns report when gRPC took them.
type gate struct {
	net.Listener
	closeOnce sync.Once
	closed    chan struct{}

	mu        sync.Mutex
	changed   chan struct{} // closed and replaced when accepting or pending shrink
	stopped   bool
	accepting int                    // Accept calls on the socket
	pending   map[*gateConn]struct{} // taken, neither at gRPC nor closed
}

func newGate(l net.Listener) *gate {
	return &gate{Listener: l, closed: make(chan struct{}), changed: make(chan struct{}), pending: map[*gateConn]struct{}{}}
}

// Accept takes the next connection off the socket's queue; once stop was
// called it takes none and waits for Close.
func (g *gate) Accept() (net.Conn, error) {
	for {
		g.mu.Lock()
		if g.stopped {
			g.mu.Unlock()
			<-g.closed
			return nil, net.ErrClosed
		}
		g.accepting++
		g.mu.Unlock()
		c, err := g.Listener.Accept()
		g.mu.Lock()
		g.accepting--
		stopped := g.stopped
		var gc *gateConn
		if err == nil {
			gc = &gateConn{Conn: c, g: g}
			g.pending[gc] = struct{}{}
		}
		g.signal()
		g.mu.Unlock()
		if err == nil {
			return gc, nil
		}
		var ne net.Error
		if stopped && errors.As(err, &ne) && ne.Timeout() {
			continue // woken by stop: wait for Close
		}
		return nil, err
	}
}

// signal wakes waitSettled. Called with mu held.
func (g *gate) signal() {
	close(g.changed)
	g.changed = make(chan struct{})
}

// stop makes Accept take no more connections: one blocked on the socket
// is woken by a deadline in the past (which only this process sees), and
// may still take a connection that arrived at that moment, pending like
// any other. A socket without deadlines is closed instead.
func (g *gate) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	if d, ok := g.Listener.(interface{ SetDeadline(time.Time) error }); ok {
		if d.SetDeadline(time.Unix(1, 0)) == nil {
			return
		}
	}
	g.Listener.Close()
}

// waitSettled waits, until deadline, for every Accept on the socket to
// return and every connection taken to reach gRPC or be closed. It
// reports whether they did.
func (g *gate) waitSettled(deadline <-chan struct{}) bool {
	for {
		g.mu.Lock()
		done, changed := g.accepting == 0 && len(g.pending) == 0, g.changed
		g.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

// Close closes the socket (this process's descriptor of it) and ends a
// stopped Accept.
func (g *gate) Close() error {
	g.closeOnce.Do(func() { close(g.closed) })
	return g.Listener.Close()
}

func (g *gate) settle(c *gateConn) {
	g.mu.Lock()
	if _, ok := g.pending[c]; ok {
		delete(g.pending, c)
		g.signal()
	}
	g.mu.Unlock()
}

// gateConn is a connection taken by a gate: pending until gRPC takes it,
// which it marks by setting the handshake's deadline (right after it
// checked that it is not stopping), or until it is closed.
type gateConn struct {
	net.Conn
	g *gate
}

func (c *gateConn) SetDeadline(t time.Time) error {
	c.g.settle(c)
	return c.Conn.SetDeadline(t)
}

func (c *gateConn) Close() error {
	c.g.settle(c)
	return c.Conn.Close()
}

// SyscallConn reaches the socket, as without the wrapper (the wire layer
// reads from it directly and peeks at its first byte).
func (c *gateConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("the connection has no socket")
}

// NetConn returns the connection under the wrapper.
func (c *gateConn) NetConn() net.Conn { return c.Conn }

// gates are the gates of one Serve.
type gates []*gate

// wrap puts l (nil: none) under a gate of gs.
func (gs *gates) wrap(l net.Listener) net.Listener {
	if l == nil {
		return nil
	}
	g := newGate(l)
	*gs = append(*gs, g)
	return g
}

// stop stops every gate and waits, at most acceptSettle, for the
// connections taken to reach gRPC. It reports whether they all did.
func (gs gates) stop() bool {
	for _, g := range gs {
		g.stop()
	}
	expired := make(chan struct{})
	t := time.AfterFunc(acceptSettle, func() { close(expired) })
	defer t.Stop()
	ok := true
	for _, g := range gs {
		ok = g.waitSettled(expired) && ok
	}
	return ok
}

// stopStreams ends the streams that would otherwise hold a graceful stop
// until ShutdownGrace (Control API log streams), once Serve stops.
func (s *SuperLink) stopStreams() { s.stopOnce.Do(func() { close(s.stopping) }) }
