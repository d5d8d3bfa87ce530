// Package wire is what sits between TLS and gRPC for every API of a
// SuperLink: the HTTP/2 frame guard with its per-method limits, the
// in-flight budget, the connection limits and batching, and the buffers
// gRPC reads into.
//
// One Wire serves every API of a SuperLink, so that they share one
// budget and one view of each peer: Listen wraps each API's listener,
// ServerOptions are each API's gRPC server's, and Run sweeps until the
// SuperLink stops. The codec that decodes what the guard captured lives
// beside it (package codec), reached through StandIns.
package wire

import (
	"context"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
)

// Config is what a Wire enforces. Every field must be set (the
// SuperLink's Limits give them their defaults) but the test knobs.
type Config struct {
	MaxInflightBytes      int64         // the in-flight budget
	MinRequestRate        int64         // bytes per second an admitted request must keep up
	MaxConnections        int           // per listener
	MaxConnectionsPerPeer int           // per listener and peer; 0: no share
	MaxConcurrentStreams  uint32        // per connection
	HandshakeTimeout      time.Duration // TLS handshake and HTTP/2 greeting
	IdleTimeout           time.Duration // a connection without a call
	StallTimeout          time.Duration // a connection stuck mid-frame holding budget

	// MethodLimit returns the largest request of a method path, and a
	// note the refusal of a larger one ends with ("" for none). Every
	// path gets an answer: unknown ones the small limit.
	MethodLimit func(method string) (int64, string)

	// Logger receives the limits' warnings (rate-limited).
	Logger *slog.Logger

	// Grace, IdleClose and PressureWindow shorten the guard's waits in
	// tests; zero means RequestGrace, 30 s and 5 s.
	Grace, IdleClose, PressureWindow time.Duration
}

// Wire is the wire layer of one SuperLink. Its methods are safe for
// concurrent use.
type Wire struct {
	b *budget
	g *guard
}

// New returns the wire layer of c.
func New(c Config) *Wire {
	b := newBudget(c.MaxInflightBytes)
	if c.PressureWindow > 0 {
		b.pressureFor = c.PressureWindow
	}
	return &Wire{b: b, g: newGuard(b, c)}
}

// StandIns are the captured requests the codec resolves.
func (w *Wire) StandIns() *StandIns { return w.g.standIns }

// ServerOptions are the gRPC server options of one API served with
// creds (nil: plaintext): its connections guarded (and, under TLS, read
// and written in large chunks), the limits of Config on calls,
// handshakes, idleness and headers, keepalive, and the pool gRPC reads
// frames into.
func (w *Wire) ServerOptions(creds credentials.TransportCredentials) []grpc.ServerOption {
	creds = guarded(creds, w.g)
	opts := limitOptions(w.g.cfg)
	opts = append(opts, tuningOptions(isTLS(creds))...)
	return append(opts, grpc.Creds(tunedCreds(creds)))
}

// Listen returns l under the connection limits: at most MaxConnections
// at once (more wait in the listen queue), MaxConnectionsPerPeer of one
// peer (more are closed at once). Closing it closes l.
func (w *Wire) Listen(l net.Listener) net.Listener {
	return newLimitListener(l, w.g.cfg.MaxConnections, w.g.cfg.MaxConnectionsPerPeer, w.g)
}

// Split hands the connections of l, a listener from Listen, to one of two
// listeners by their first byte: a TLS handshake to tlsL, plaintext from a
// peer plainOK accepts to plainL (see sniff.go). Closing both closes l.
func (w *Wire) Split(l net.Listener, plainOK func(net.Addr) bool) (tlsL, plainL net.Listener) {
	return splitFirstByte(l, plainOK, w.g.cfg.HandshakeTimeout, w.g.warn)
}

// Run resets requests that fell behind, closes stalled connections and
// idle ones while slots run short, until ctx ends.
func (w *Wire) Run(ctx context.Context) { w.g.runSweeps(ctx) }

// Stats returns a snapshot of the limits' state: cheap, for metrics.
func (w *Wire) Stats() Stats { return w.b.stats() }

// Pressure reports whether small requests were refused for want of
// budget within the pressure window (legitimate pings and polls fail).
func (w *Wire) Pressure() bool { return w.b.pressure() }

// SmallShare is the most one peer may hold in small requests.
func (w *Wire) SmallShare() int64 { return w.b.smallShare() }

// tuningOptions are the gRPC server options of tuning.go, for TLS
// connections or plaintext ones.
func tuningOptions(tls bool) []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.WriteBufferSize(writeBuffer), // taken from a pool for each write: gRPC shares write buffers by default
		experimental.BufferPool(framePoolShared),
	}
	if tls {
		opts = append(opts, grpc.ReadBufferSize(0))
	}
	return opts
}
