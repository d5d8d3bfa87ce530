package sqlstate

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
)

// While the database cannot be reached (a server restarting, a network
// cut, a full disk), nodes cannot ping: it is not their fault, as in a
// restart of the SuperLink. So a State that meets an Unavailable failure
// remembers when it last committed (the outage may have begun then), and
// before the first write it commits after, gives every node that was
// online at that time its ping interval from now (the grace of a restart),
// so that no node is found offline, and its tasks answered
// NODE_UNAVAILABLE, for pings it could not make.

// outageWatch is a State's view of the database's availability.
type outageWatch struct {
	lastOK atomic.Int64 // unix µs of the last commit (the State's clock)
	since  atomic.Int64 // lastOK when an outage was met, 0 for none
}

// committed records a commit at now.
func (w *outageWatch) committed(now int64) { w.lastOK.Store(now) }

// failed records a failure of code.
func (w *outageWatch) failed(code codes.Code) {
	if code == codes.Unavailable {
		w.since.CompareAndSwap(0, max(w.lastOK.Load(), 1))
	}
}

// endOutage gives the grace after an outage, if one was met, in its own
// transaction, before the write that follows it.
func (s *State) endOutage(ctx context.Context) {
	since := s.outage.since.Load()
	if since == 0 {
		return
	}
	now := s.now()
	var n int
	err, _ := s.run(ctx, "grace after the outage", nil, func(tx *txn) (func(), error) {
		var err error
		n, err = s.graceSince(ctx, tx, since, now)
		return nil, err
	})
	if err != nil || !s.outage.since.CompareAndSwap(since, 0) {
		return // still out: the next write tries again
	}
	s.log.Info("state database reachable again: the nodes online when it became unreachable get their ping interval from now",
		"database", s.name, "unreachable_for", now.Sub(fromMicro(since)).Round(time.Millisecond), "nodes", n)
}
