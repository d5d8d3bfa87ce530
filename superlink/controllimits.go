package superlink

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/state"
)

// Defaults of the Control API's limits (Flower129Options).
const (
	// DefaultMaxLogStreams is the default of
	// Flower129Options.MaxLogStreams.
	DefaultMaxLogStreams = 128
	// DefaultMaxLogStreamsPerPeer is the default of
	// Flower129Options.MaxLogStreamsPerPeer: flwr log and flwr run
	// --stream hold one each.
	DefaultMaxLogStreamsPerPeer = 8
	// DefaultRunRate and DefaultRunBurst are the defaults of
	// Flower129Options.RunRate and RunBurst: 20 runs at once, then one
	// every 5 seconds, from one peer.
	DefaultRunRate  = 0.2
	DefaultRunBurst = 20
	// LogChunk bounds the log output of one StreamLogs response (whole
	// entries of at most state.MaxLogEntry, at least one), so that a
	// stream holds little of a log at once: one response in the
	// connection's buffers and one waiting.
	LogChunk = 64 << 10
	// LogSendTimeout ends a log stream whose client read nothing for that
	// long, so that it holds neither its place nor a response.
	LogSendTimeout = 30 * time.Second
)

// withDefaults fills in the defaults of the Control API's limits.
func (o Flower129Options) withDefaults() Flower129Options {
	if o.MaxLogStreams <= 0 {
		o.MaxLogStreams = DefaultMaxLogStreams
	}
	if o.MaxLogStreamsPerPeer <= 0 {
		o.MaxLogStreamsPerPeer = DefaultMaxLogStreamsPerPeer
	}
	if o.RunRate <= 0 {
		o.RunRate = DefaultRunRate
	}
	if o.RunBurst <= 0 {
		o.RunBurst = DefaultRunBurst
	}
	return o
}

// streamSlots counts the StreamLogs calls open, in all and by peer.
type streamSlots struct {
	max, perPeer int

	mu     sync.Mutex
	open   int
	byPeer map[string]int
}

// take takes a slot for a stream of peer, or refuses it with
// ResourceExhausted; release gives it back.
func (s *streamSlots) take(peer string) (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.byPeer[peer] >= s.perPeer:
		return nil, status.Errorf(codes.ResourceExhausted, "StreamLogs: %s holds %d log streams open, this SuperLink's limit per peer; close one (flwr log) and retry", peer, s.perPeer)
	case s.open >= s.max:
		return nil, status.Errorf(codes.ResourceExhausted, "StreamLogs: %d log streams are open, this SuperLink's limit; retry later", s.max)
	}
	s.open++
	s.byPeer[peer]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.open--
		if s.byPeer[peer]--; s.byPeer[peer] <= 0 {
			delete(s.byPeer, peer)
		}
	}, nil
}

// newControl returns the Control API on ls with o's limits; g limits the
// node registrations of each peer (flwr supernode register).
func newControl(ls state.LinkState, o Options, g *nodeGuard) *control {
	fo := o.Flower129.withDefaults()
	now := o.Now
	if now == nil {
		now = time.Now
	}
	return &control{s: ls, log: o.Logger, now: now, g: g,
		streams: &streamSlots{max: fo.MaxLogStreams, perPeer: fo.MaxLogStreamsPerPeer, byPeer: map[string]int{}},
		runs:    newRateLimiter(fo.RunRate, fo.RunBurst, 0),
		runRate: fo}
}

// startRunRate refuses a StartRun past its peer's rate limit.
func (c *control) startRunRate(ctx context.Context) error {
	key := peerKey(ctx)
	if c.runs.take(key) {
		return nil
	}
	err := status.Errorf(codes.ResourceExhausted, "StartRun: too many runs from %s: this SuperLink takes %d at once and then %g a second from one peer; retry in a few seconds",
		key, c.runRate.RunBurst, c.runRate.RunRate)
	c.logRefusal(ctx, "start_run_rate", err)
	return err
}

// logRefusal logs a refusal by a limit, once per limit every 10 seconds.
func (c *control) logRefusal(ctx context.Context, limit string, err error) {
	now := time.Now()
	c.logMu.Lock()
	if c.logged == nil {
		c.logged = map[string]time.Time{}
	}
	if now.Sub(c.logged[limit]) < nodeLogEvery {
		c.logMu.Unlock()
		return
	}
	c.logged[limit] = now
	c.logMu.Unlock()
	c.log.LogAttrs(ctx, slog.LevelWarn, "Control API call refused by a limit", slog.String("limit", limit),
		slog.String("peer", peerAddr(ctx)), slog.String("error", status.Convert(err).Message()))
}

// stateLimit logs a state.LinkLimitError of a Control call.
func (c *control) stateLimit(ctx context.Context, err error) {
	if limit, ok := state.IsLinkLimit(err); ok {
		c.logRefusal(ctx, limit, err)
	}
}
