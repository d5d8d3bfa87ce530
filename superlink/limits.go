package superlink

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/superlink/internal/wire"
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
	SmallMessageSize = wire.SmallMessageSize
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
	// DefaultStallTimeout closes a connection that stopped in the middle
	// of a frame of a request that holds part of the budget, and received
	// nothing for that long (a request that stops between frames is reset
	// sooner, by MinRequestRate).
	DefaultStallTimeout = time.Minute
	// DefaultMinRequestRate is the default of Limits.MinRequestRate:
	// 64 KiB/s, so that a 512 MiB push may take up to 2 hours 16 minutes,
	// a 32 MiB one 8.5 minutes.
	DefaultMinRequestRate = 64 << 10
	// RequestGrace is how long an admitted request may take before the
	// minimum rate applies: a client's first bytes may wait for a
	// handshake of its own, a slow start, a garbage collection.
	RequestGrace = wire.RequestGrace
)

// Limits bound what peers may make the SuperLink hold (Options.Limits).
// The zero value of each field is its default; Validate refuses values out
// of range, and so does Serve.
//
// A peer is a source address (an IPv4 address, or an IPv6 /64), or, once
// its client certificate was verified under mutual TLS, the identity the
// certificate names: nodes behind one NAT with certificates of their own
// are peers of their own.
type Limits struct {
	// MaxInflightBytes is the in-flight budget: the total declared size of
	// the request messages being received or handled, over all
	// connections of both APIs. A request is admitted when its 5-byte gRPC
	// length prefix arrives, before its body is read; one that does not
	// fit is refused with ResourceExhausted (gRPC clients, and Flower
	// 1.8.0 SuperNodes, retry it). Its last sixteenth is kept for requests
	// of at most SmallMessageSize, so that large pushes cannot starve
	// pings and polls. One peer may hold at most three quarters of it, and
	// at most a quarter of that last sixteenth (but never less than
	// SmallMessageSize) in small requests. Default
	// DefaultMaxInflightBytes (1 GiB).
	MaxInflightBytes int64
	// MinRequestRate is the slowest an admitted request may arrive, in
	// bytes per second, averaged from its admission on once RequestGrace
	// has passed: a request that falls behind is reset (the client gets
	// ResourceExhausted) and its part of the budget is free at once.
	// Default DefaultMinRequestRate (64 KiB/s).
	MinRequestRate int64
	// MaxConnections is the number of connections each API holds at once;
	// beyond it new connections wait in the listen queue, and connections
	// without a call for a while are closed sooner than IdleTimeout while
	// more than three quarters are taken. Default DefaultMaxConnections
	// (4096).
	MaxConnections int
	// MaxConnectionsPerPeer is the number of connections one peer may
	// hold on each API: a connection beyond it is closed at once. Default
	// MaxConnections/16, at least 16.
	MaxConnectionsPerPeer int
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
	// the budget received no byte for that long while it could not be
	// reset alone. Default DefaultStallTimeout (1m).
	StallTimeout time.Duration
}

// withDefaults fills in the defaults of the zero fields.
func (l Limits) withDefaults() Limits {
	if l.MaxInflightBytes == 0 {
		l.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if l.MinRequestRate == 0 {
		l.MinRequestRate = DefaultMinRequestRate
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxConnectionsPerPeer == 0 {
		l.MaxConnectionsPerPeer = max(16, l.MaxConnections/16)
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
	case l.MinRequestRate < 0:
		return errors.New("Limits.MinRequestRate is negative")
	case l.MaxConnections < 0, l.MaxConnectionsPerPeer < 0:
		return errors.New("Limits.MaxConnections and MaxConnectionsPerPeer must not be negative")
	case l.HandshakeTimeout < 0, l.IdleTimeout < 0, l.StallTimeout < 0:
		return errors.New("Limits timeouts must not be negative")
	}
	return nil
}

// largeMethods are the methods whose requests carry parameters, up to
// MaxMessageSize; every other request is at most SmallMessageSize.
var largeMethods = map[string]int64{
	"/" + flwrproto.Fleet_ServiceDesc.ServiceName + "/PushTaskRes":  MaxMessageSize,
	"/" + flwrproto.Driver_ServiceDesc.ServiceName + "/PushTaskIns": MaxMessageSize,
}

// methodLimit returns the largest request message of method, whatever
// it is: SmallMessageSize for any path but the few that carry more, of
// either generation; and for Flower 1.8.0's small methods, a note of
// which carry more.
func methodLimit(method string) (int64, string) {
	if n, ok := largeMethods[method]; ok {
		return n, ""
	}
	if n, ok := methodLimit129(method); ok {
		return n, ""
	}
	if methods18[method] {
		return SmallMessageSize, "only PushTaskRes and PushTaskIns carry parameters, up to " + sizeString(MaxMessageSize)
	}
	return SmallMessageSize, ""
}

// sizeString prints n bytes as MiB or GiB when it is a whole number of
// them, else as bytes.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

// methods18 are the paths of Flower 1.8.0's methods.
var methods18 = func() map[string]bool {
	m := map[string]bool{}
	for _, d := range []*grpc.ServiceDesc{&flwrproto.Fleet_ServiceDesc, &flwrproto.Driver_ServiceDesc} {
		for _, md := range d.Methods {
			m["/"+d.ServiceName+"/"+md.MethodName] = true
		}
	}
	return m
}()

// The reasons a request is refused before its body is read, and a
// connection refused or closed by a limit: the label values of the
// metrics, a fixed set.
const (
	RefusedTooLarge  = wire.RefusedTooLarge  // more than its method, or one peer, may ever send
	RefusedBusy      = wire.RefusedBusy      // the budget is full for now
	RefusedPeerShare = wire.RefusedPeerShare // the peer holds its share of the budget
	RefusedTooSlow   = wire.RefusedTooSlow   // admitted, then fell behind the minimum rate: reset

	ConnPerPeer = wire.ConnPerPeer // a peer's share of the connection slots is taken

	ClosedStalled       = wire.ClosedStalled       // stopped mid-frame while holding budget
	ClosedControlFrames = wire.ClosedControlFrames // too many control frames (rapid reset, SETTINGS floods)
	ClosedViolation     = wire.ClosedViolation     // a refusal that could only be answered so
	ClosedIdle          = wire.ClosedIdle          // idle while connection slots ran short
)

// LimitStats is a snapshot of the limits' state, for metrics. See
// SuperLink.LimitStats.
type LimitStats struct {
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
func (s LimitStats) RefusedTotal() uint64 {
	var n uint64
	for _, v := range s.Refused {
		n += v
	}
	return n
}

// LimitStats returns a snapshot of the limits' state: the in-flight bytes
// against the budget, the connections open, and what was refused. It is
// cheap and safe for concurrent use.
func (s *SuperLink) LimitStats() LimitStats {
	return LimitStats(s.wire.Stats())
}

// wireConfig is what the wire layer enforces of l (defaults applied).
func (l Limits) wireConfig(log *slog.Logger) wire.Config {
	return wire.Config{
		MaxInflightBytes:      l.MaxInflightBytes,
		MinRequestRate:        l.MinRequestRate,
		MaxConnections:        l.MaxConnections,
		MaxConnectionsPerPeer: l.MaxConnectionsPerPeer,
		MaxConcurrentStreams:  l.MaxConcurrentStreams,
		HandshakeTimeout:      l.HandshakeTimeout,
		IdleTimeout:           l.IdleTimeout,
		StallTimeout:          l.StallTimeout,
		MethodLimit:           methodLimit,
		Logger:                log,
	}
}
