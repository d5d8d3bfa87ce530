package superlink

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/state"
)

// Defaults of NodeLimits: far above what a real fleet does, and low
// enough that one peer cannot register more than a fleet's worth.
const (
	// DefaultMaxPingInterval caps ping_interval: Flower 1.8.0 SuperNodes
	// send 30 s, and Sepal's client app 30 s unless told otherwise.
	DefaultMaxPingInterval = time.Hour
	// DefaultMaxNodes is the default number of nodes registered at once.
	DefaultMaxNodes = 10000
	// DefaultMaxNodesPerConnection is the default number of nodes one
	// connection may hold; a SuperNode registers one.
	DefaultMaxNodesPerConnection = 16
	// DefaultMaxNodesPerIdentity is the default number of nodes one client
	// certificate may hold; a SuperNode registers one (and a new one each
	// time it restarts, the old one offline within its ping interval).
	DefaultMaxNodesPerIdentity = 16
	// DefaultNodeRegistrationRate and DefaultNodeRegistrationBurst are the
	// default registration rate limit of one peer: 100 CreateNode calls
	// at once, then 10 a second.
	DefaultNodeRegistrationRate  = 10
	DefaultNodeRegistrationBurst = 100
	// DefaultNodeCallRate and DefaultNodeCallBurst are the default rate
	// limit of one Flower 1.29.0 node's signed Fleet calls, in call units
	// (NodeLimits.CallRate): a burst that pulls and pushes back the
	// largest tree a message may have (state.MaxTreeObjects objects), then
	// 200 units a second, which a node answering a model of 1,000 arrays
	// (about 6,000 units a round) every 30 s stays under.
	DefaultNodeCallRate  = 200
	DefaultNodeCallBurst = 4 * state.MaxTreeObjects
	// DefaultAuthFailureRate and DefaultAuthFailureBurst are the default
	// rate limit of one peer's Flower 1.29.0 Fleet calls whose signature
	// fails: 100 at once, then 10 a second (about 1% of a core spent on
	// verifying them).
	DefaultAuthFailureRate  = 10
	DefaultAuthFailureBurst = 100
)

// NodeLimits bound the nodes peers may register on the Fleet API
// (Options.NodeLimits). The zero value of each field is its default;
// Validate refuses a negative one. A refused CreateNode gets
// ResourceExhausted (a ping_interval above the cap InvalidArgument) with a
// message naming the limit; a Flower 1.8.0 SuperNode retries it with
// backoff. Each refusal is counted (NodeLimitStats) and logged, one
// warning per reason every 10 seconds.
type NodeLimits struct {
	// MaxPingInterval caps the ping_interval of CreateNode and Ping: a
	// node that asks to stay online longer without a ping is refused.
	// Default DefaultMaxPingInterval (1h).
	MaxPingInterval time.Duration
	// MaxNodes bounds the nodes registered at once, online or offline, in
	// the state (over every SuperLink that shares it): when it is full,
	// the node offline the longest is forgotten for the new one; when all
	// are online, CreateNode is refused. Default DefaultMaxNodes (10000).
	MaxNodes int
	// MaxPerConnection bounds the nodes one connection has created and
	// not deleted. Default DefaultMaxNodesPerConnection (16).
	MaxPerConnection int
	// MaxPerIdentity bounds, under mutual TLS, the nodes registered at
	// once with one client-certificate identity, as MaxNodes does in all.
	// Default DefaultMaxNodesPerIdentity (16).
	MaxPerIdentity int
	// Rate and Burst limit the CreateNode calls of one peer, and its
	// Flower 1.29.0 RegisterNode calls (Fleet and Control API), refused or
	// not, as one token bucket: Burst calls at once, then Rate a second. A
	// peer is a source address (an IPv6 /64), or under mutual TLS a
	// client-certificate identity. Defaults DefaultNodeRegistrationRate
	// (10) and DefaultNodeRegistrationBurst (100).
	Rate  float64
	Burst int
	// CallRate and CallBurst limit the signed Flower 1.29.0 Fleet calls
	// of one registered node (its node id) whose signature verified, as a
	// token bucket of call units: CallBurst at once, then CallRate a
	// second. A call costs 1 unit, and a PushMessages 1 more for each
	// object its reply's tree names (each one a PushObject to come). A
	// call past it is refused with Unavailable, which Flower 1.29.0's
	// SuperNode retries with backoff, before its signature is verified.
	// A call may cost at most CallBurst. CallRate math.Inf(1) turns the
	// limit off. Defaults DefaultNodeCallRate (200) and
	// DefaultNodeCallBurst (65536).
	CallRate  float64
	CallBurst int
	// AuthFailureRate and AuthFailureBurst limit the Flower 1.29.0 Fleet
	// calls of one peer (as Rate counts them) that fail node
	// authentication (Unauthenticated: a bad signature, a stale or
	// replayed one, a key that is no node's, another node's id), as a
	// token bucket: AuthFailureBurst at once, then AuthFailureRate a
	// second. Past it, the peer's signed calls are refused with
	// Unavailable without verifying them until its bucket holds a token
	// again; other peers' calls are not. Defaults DefaultAuthFailureRate
	// (10) and DefaultAuthFailureBurst (100).
	AuthFailureRate  float64
	AuthFailureBurst int
}

// withDefaults fills in the defaults of the zero fields.
func (l NodeLimits) withDefaults() NodeLimits {
	if l.MaxPingInterval == 0 {
		l.MaxPingInterval = DefaultMaxPingInterval
	}
	if l.MaxNodes == 0 {
		l.MaxNodes = DefaultMaxNodes
	}
	if l.MaxPerConnection == 0 {
		l.MaxPerConnection = DefaultMaxNodesPerConnection
	}
	if l.MaxPerIdentity == 0 {
		l.MaxPerIdentity = DefaultMaxNodesPerIdentity
	}
	if l.Rate == 0 {
		l.Rate = DefaultNodeRegistrationRate
	}
	if l.Burst == 0 {
		l.Burst = DefaultNodeRegistrationBurst
	}
	l.CallRate = cmp.Or(l.CallRate, DefaultNodeCallRate)
	l.CallBurst = cmp.Or(l.CallBurst, DefaultNodeCallBurst)
	l.AuthFailureRate = cmp.Or(l.AuthFailureRate, DefaultAuthFailureRate)
	l.AuthFailureBurst = cmp.Or(l.AuthFailureBurst, DefaultAuthFailureBurst)
	return l
}

// Validate returns an error naming the first field out of range: a
// negative value, a Rate or AuthFailureRate that is not a finite number,
// or a CallRate that is NaN.
func (l NodeLimits) Validate() error {
	switch {
	case l.MaxPingInterval < 0:
		return errors.New("NodeLimits.MaxPingInterval is negative")
	case l.MaxNodes < 0, l.MaxPerConnection < 0, l.MaxPerIdentity < 0:
		return errors.New("NodeLimits node counts must not be negative")
	case l.Rate < 0 || math.IsNaN(l.Rate) || math.IsInf(l.Rate, 0):
		return fmt.Errorf("NodeLimits.Rate %v is not a rate: give a positive number of calls a second", l.Rate)
	case l.Burst < 0:
		return errors.New("NodeLimits.Burst is negative")
	case l.CallRate < 0 || math.IsNaN(l.CallRate):
		return fmt.Errorf("NodeLimits.CallRate %v is not a rate: give a positive number of call units a second, or +Inf for no limit", l.CallRate)
	case l.AuthFailureRate < 0 || math.IsNaN(l.AuthFailureRate) || math.IsInf(l.AuthFailureRate, 0):
		return fmt.Errorf("NodeLimits.AuthFailureRate %v is not a rate: give a positive number of failures a second", l.AuthFailureRate)
	case l.CallBurst < 0, l.AuthFailureBurst < 0:
		return errors.New("NodeLimits.CallBurst and AuthFailureBurst must not be negative")
	}
	return nil
}

// The reasons a node registration is refused, the values of
// NodeLimitStats.Refused's keys and of the log's reason attribute.
const (
	RefusedPingInterval  = "max_ping_interval"
	RefusedPerConnection = "max_nodes_per_connection"
	RefusedPerIdentity   = state.LimitMaxPerIdentity
	RefusedMaxNodes      = state.LimitMaxNodes
	RefusedRate          = "node_registration_rate"
)

// NodeRefusalReasons lists the reasons, in a fixed order.
var NodeRefusalReasons = []string{RefusedPingInterval, RefusedPerConnection, RefusedPerIdentity, RefusedMaxNodes, RefusedRate}

// The reasons a signed Flower 1.29.0 Fleet call is refused before its
// signature is verified, the values of NodeLimitStats.Refused's keys and
// of the log's reason attribute.
const (
	// RefusedCallRate: the node made more calls than NodeLimits.CallRate
	// and CallBurst allow.
	RefusedCallRate = "node_call_rate"
	// RefusedAuthFailures: the peer's calls failed authentication more
	// often than NodeLimits.AuthFailureRate and AuthFailureBurst allow.
	RefusedAuthFailures = "node_auth_failures"
)

// NodeCallRefusalReasons lists the reasons a signed call is refused, in a
// fixed order.
var NodeCallRefusalReasons = []string{RefusedCallRate, RefusedAuthFailures}

// refusalReasons are all the reasons the node guard counts: its counters'
// order.
var refusalReasons = append(slices.Clone(NodeRefusalReasons), NodeCallRefusalReasons...)

// NodeLimitStats is a snapshot of what the node limits refused and what
// revocation took offline, for metrics (SuperLink.NodeLimitStats).
type NodeLimitStats struct {
	// Refused counts the calls refused since start by each reason of
	// NodeRefusalReasons (all of them present): CreateNode and Flower
	// 1.29.0 RegisterNode calls, and Pings with a ping_interval above the
	// cap; and by each reason of NodeCallRefusalReasons, the signed
	// Flower 1.29.0 Fleet calls refused before their signature was
	// verified.
	Refused map[string]uint64
	// Revoked counts the nodes this SuperLink forgot since start because
	// the client certificate that created them was revoked.
	Revoked uint64
}

// NodeLimitStats returns a snapshot of the node limits' counts. It is
// cheap and safe for concurrent use.
func (s *SuperLink) NodeLimitStats() NodeLimitStats { return s.nodes.stats() }

// nodeGuard applies NodeLimits to the Fleet API's calls: the cap, the rate
// limit and the count per connection here, the counts in the state
// through state.NewNode.
type nodeGuard struct {
	l   NodeLimits
	log *slog.Logger

	connMu sync.Mutex
	conns  map[weak.Pointer[peer.Peer]]*connNodes

	rates *rateLimiter
	// calls limits the verified Fleet calls of each node (by node id),
	// failures the failed ones of each peer (fleetlimits.go).
	calls, failures *rateLimiter

	refused [nReasons]atomic.Uint64 // by index in refusalReasons
	revoked atomic.Uint64

	logMu   sync.Mutex
	logged  [nReasons]time.Time
	skipped [nReasons]int
}

// nReasons is len(refusalReasons).
const nReasons = 7

func newNodeGuard(l NodeLimits, log *slog.Logger) *nodeGuard {
	l = l.withDefaults()
	return &nodeGuard{l: l, log: log, conns: map[weak.Pointer[peer.Peer]]*connNodes{},
		rates: newRateLimiter(l.Rate, l.Burst, 0),
		// Every node registered may have a bucket, and as many that went
		// (a bucket goes once it refilled).
		calls:    newRateLimiter(l.CallRate, l.CallBurst, 2*l.MaxNodes),
		failures: newRateLimiter(l.AuthFailureRate, l.AuthFailureBurst, 0)}
}

func (g *nodeGuard) stats() NodeLimitStats {
	st := NodeLimitStats{Refused: make(map[string]uint64, len(refusalReasons)), Revoked: g.revoked.Load()}
	for i, r := range refusalReasons {
		st.Refused[r] = g.refused[i].Load()
	}
	return st
}

// connNodes are the nodes one connection created and did not delete, and
// the CreateNode calls in progress on it.
type connNodes struct {
	mu      sync.Mutex
	ids     map[int64]bool
	pending int
}

// conn returns the nodes of the caller's connection, nil for a call that
// came through no connection (a Fleet service called in process). A
// connection is its *peer.Peer, which gRPC makes once per connection and
// puts in the context of every call on it; the entry goes when the Peer is
// garbage collected, after the connection has ended.
func (g *nodeGuard) conn(ctx context.Context) *connNodes {
	p, ok := peer.FromContext(ctx)
	if !ok || p == nil {
		return nil
	}
	key := weak.Make(p)
	g.connMu.Lock()
	defer g.connMu.Unlock()
	if c := g.conns[key]; c != nil {
		return c
	}
	c := &connNodes{ids: map[int64]bool{}}
	g.conns[key] = c
	runtime.AddCleanup(p, func(k weak.Pointer[peer.Peer]) {
		g.connMu.Lock()
		delete(g.conns, k)
		g.connMu.Unlock()
	}, key)
	return c
}

// reserve takes a place on the connection for a CreateNode, or reports
// that the connection holds its limit.
func (c *connNodes) reserve(max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.ids)+c.pending >= max {
		return false
	}
	c.pending++
	return true
}

// done ends a reservation: id is the node created, 0 for none.
func (c *connNodes) done(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending--
	if id != 0 {
		c.ids[id] = true
	}
}

// deleted forgets a node the connection deleted.
func (c *connNodes) deleted(id int64) {
	c.mu.Lock()
	delete(c.ids, id)
	c.mu.Unlock()
}

// pingInterval refuses a ping_interval above the cap (InvalidArgument);
// other bad values are the state's to refuse.
func (g *nodeGuard) pingInterval(ctx context.Context, method string, v float64) error {
	if max := g.l.MaxPingInterval.Seconds(); v > max && !math.IsInf(v, 1) { // the state refuses what is not finite
		err := status.Errorf(codes.InvalidArgument, "%s: ping_interval %g s is above this SuperLink's limit of %g s (a node that has not pinged for that long is offline): "+
			"send at most %g (Flower SuperNodes send 30) and ping within it", method, v, max, max)
		g.refuse(ctx, RefusedPingInterval, fmt.Sprintf("%g s", max), err)
		return err
	}
	return nil
}

// rate refuses a registration (a call of method that creates a node)
// past the rate limit of its peer, which the registrations of both
// generations share.
func (g *nodeGuard) rate(ctx context.Context, method string) error {
	key := peerKey(ctx)
	if g.rates.take(key) {
		return nil
	}
	err := status.Errorf(codes.ResourceExhausted, "%s: too many registrations from %s: this SuperLink takes %d at once and then %g a second from one peer; "+
		"retry in a few seconds (a SuperNode registers once when it starts)", method, key, g.l.Burst, g.l.Rate)
	g.refuse(ctx, RefusedRate, fmt.Sprintf("%d at once, %g a second", g.l.Burst, g.l.Rate), err)
	return err
}

// admit applies the limits a CreateNode meets before the state's: the
// rate limit of its peer, the ping_interval cap and the nodes of its
// connection. It returns the connection's reservation (nil when none was
// taken), to end with done, or the refusal.
func (g *nodeGuard) admit(ctx context.Context, pingInterval float64) (*connNodes, error) {
	if err := g.rate(ctx, "CreateNode"); err != nil {
		return nil, err
	}
	if err := g.pingInterval(ctx, "CreateNode", pingInterval); err != nil {
		return nil, err
	}
	c := g.conn(ctx)
	if c != nil && !c.reserve(g.l.MaxPerConnection) {
		err := status.Errorf(codes.ResourceExhausted, "CreateNode: this connection holds %d nodes it created and did not delete, this SuperLink's limit per connection "+
			"(a SuperNode registers one): delete the nodes it no longer uses (DeleteNode)", g.l.MaxPerConnection)
		g.refuse(ctx, RefusedPerConnection, fmt.Sprint(g.l.MaxPerConnection), err)
		return nil, err
	}
	return c, nil
}

// stateRefusal counts and logs a state.NodeLimitError of CreateNode, or
// the state.LinkLimitError of a Flower 1.29.0 registration past the
// nodes a state holds.
func (g *nodeGuard) stateRefusal(ctx context.Context, err error) {
	var le *state.NodeLimitError
	if errors.As(err, &le) {
		g.refuse(ctx, le.Limit, fmt.Sprint(le.Max), err)
	}
	var lle *state.LinkLimitError
	if errors.As(err, &lle) && lle.Limit == state.LimitLinkNodes {
		g.refuse(ctx, RefusedMaxNodes, fmt.Sprint(lle.Max), err)
	}
}

// nodeLogEvery is how often one reason of refusal is logged at most.
const nodeLogEvery = 10 * time.Second

// refuse counts a refusal and logs it, once per reason every nodeLogEvery
// with the number of refusals not logged since.
func (g *nodeGuard) refuse(ctx context.Context, reason, limit string, err error) {
	i := slices.Index(refusalReasons, reason)
	if i < 0 {
		return
	}
	g.refused[i].Add(1)
	now := time.Now()
	g.logMu.Lock()
	if now.Sub(g.logged[i]) < nodeLogEvery {
		g.skipped[i]++
		g.logMu.Unlock()
		return
	}
	skipped := g.skipped[i]
	g.logged[i], g.skipped[i] = now, 0
	g.logMu.Unlock()
	attrs := []any{"reason", reason, "limit", limit, "peer", peerAddr(ctx)}
	if id := peerIdentity(ctx); id != "" {
		attrs = append(attrs, "identity", id)
	}
	attrs = append(attrs, "refused_since_last_line", skipped, "error", status.Convert(err).Message())
	msg := "node registration refused by a limit"
	if slices.Contains(NodeCallRefusalReasons, reason) {
		msg = "signed Fleet call refused by a limit"
	}
	g.log.Warn(msg, attrs...)
}

// peerAddr is the caller's address, "" when unknown.
func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// peerKey is who the registration rate limit counts a call against: the
// client-certificate identity under mutual TLS, else the source address
// (an IPv6 address's /64, which one host may hold whole).
func peerKey(ctx context.Context) string {
	if id := peerIdentity(ctx); id != "" {
		return id
	}
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "in process"
	}
	if ta, ok := p.Addr.(*net.TCPAddr); ok {
		if ip4 := ta.IP.To4(); ip4 != nil {
			return ip4.String()
		}
		return (&net.IPNet{IP: ta.IP.Mask(net.CIDRMask(64, 128)), Mask: net.CIDRMask(64, 128)}).String()
	}
	return p.Addr.Network() + " " + p.Addr.String()
}

// rateLimiter is a token bucket per key (a peer, a node). Its map holds
// at most max(size, maxBuckets) keys: when it is full, the buckets that refilled (whose
// keys would start afresh anyway) are dropped, at most once a second,
// and a new key meanwhile shares one overflow bucket. A rate of +Inf
// never refuses.
type rateLimiter struct {
	rate, burst float64
	size        int
	now         func() time.Time

	mu       sync.Mutex
	buckets  map[string]*bucket
	overflow bucket
	purged   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets is the least number of keys a rate limiter remembers.
const maxBuckets = 1 << 16

// newRateLimiter returns a rate limiter of burst tokens at once, then rate
// a second, remembering max(size, maxBuckets) keys.
func newRateLimiter(rate float64, burst, size int) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), size: size, buckets: map[string]*bucket{}, now: time.Now}
}

// take takes a token of key's bucket, false when it has none.
func (r *rateLimiter) take(key string) bool { return r.takeN(key, 1) }

// takeN takes n tokens (at most the burst) of key's bucket, false when it
// has fewer.
func (r *rateLimiter) takeN(key string, n float64) bool {
	if math.IsInf(r.rate, 1) {
		return true
	}
	n = min(n, r.burst)
	size := max(r.size, maxBuckets)
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[key]
	if b == nil {
		if len(r.buckets) >= size && now.Sub(r.purged) >= time.Second {
			r.purged = now
			for k, o := range r.buckets {
				if o.level(now, r.rate, r.burst) >= r.burst {
					delete(r.buckets, k)
				}
			}
		}
		if len(r.buckets) >= size {
			b = &r.overflow
			if b.last.IsZero() {
				b.tokens, b.last = r.burst, now
			}
		} else {
			b = &bucket{tokens: r.burst, last: now}
			r.buckets[key] = b
		}
	}
	b.tokens, b.last = b.level(now, r.rate, r.burst), now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

// holds reports whether key's bucket holds n tokens (at most the burst)
// now, without taking them. A key without a bucket (none taken lately, or
// not remembered while the map is full) holds them: holds never refuses
// a key that take did not drain.
func (r *rateLimiter) holds(key string, n float64) bool {
	if math.IsInf(r.rate, 1) {
		return true
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[key]
	return b == nil || b.level(now, r.rate, r.burst) >= min(n, r.burst)
}

// level is the bucket's tokens at now.
func (b *bucket) level(now time.Time, rate, burst float64) float64 {
	return min(burst, b.tokens+rate*max(0, now.Sub(b.last).Seconds()))
}

// revocationRefresh is how often the watcher applies the CRL in force
// again although it did not change: a node created on another SuperLink
// sharing the state, with a certificate revoked there a moment before,
// goes then.
const revocationRefresh = 30 * time.Second

// revocationPoll is how often the watcher looks for a new CRL.
const revocationPoll = 250 * time.Millisecond

// watchRevocations forgets, until ctx ends, the nodes created with a
// client certificate that crl (the CRL in force, nil for none) lists: at
// once, then every time crl returns another list, and every
// revocationRefresh.
func (g *nodeGuard) watchRevocations(ctx context.Context, st state.State, crl func() *x509.RevocationList) {
	var applied *x509.RevocationList
	var ids map[string]bool
	var at time.Time
	t := time.NewTicker(revocationPoll)
	defer t.Stop()
	for {
		if l := crl(); l != nil && (l != applied || time.Since(at) >= revocationRefresh) {
			if l != applied {
				ids = certfmt.RevokedIDs(l)
			}
			gone, err := st.RevokeNodes(ctx, func(c string) bool { return ids[c] })
			switch {
			case err == nil:
				applied, at = l, time.Now()
				g.revoked.Add(uint64(len(gone)))
				if len(gone) > 0 {
					g.log.Info("nodes of revoked client certificates taken offline", "nodes", len(gone), "crl_number", fmt.Sprint(l.Number))
				}
			case ctx.Err() == nil:
				g.log.Warn("taking the nodes of revoked client certificates offline failed; trying again", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// certified is the ability of a connection's AuthInfo to name its client
// certificate (transport.ClientInfo).
type certified interface{ CertificateID() string }

// peerCertificate is the caller's client certificate, as
// certfmt.CertID names it, "" without one.
func peerCertificate(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		if c, ok := p.AuthInfo.(certified); ok {
			return c.CertificateID()
		}
	}
	return ""
}
