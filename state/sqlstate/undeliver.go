package sqlstate

import (
	"context"
	"slices"
	"sync"
	"time"
)

// A PullTaskIns (or PullInstruction) whose commit failed when the connection broke may have
// been committed all the same: the TaskIns is then marked delivered, by a
// replica that lives, and would never go to its node, which was told the
// call failed and asks again. So the State remembers such deliveries and,
// as soon as the database answers (in the next PullTaskIns it serves, or
// from a retry loop, whichever comes first), clears their replica: the
// TaskIns then counts as delivered by one that is gone, and its node gets
// it when it asks (through any replica). A delivery that was not committed
// is left alone (its row does not match).

// undelivery is one such delivery: the TaskIns's seq, and the delivered_at
// and delivered_by it was given; link: a message of the 1.29 generation
// (PullInstruction), whose row is in link_ins.
type undelivery struct {
	seq, at, by int64
	link        bool
}

// undoQueue holds the deliveries to clear.
type undoQueue struct {
	mu      sync.Mutex
	list    []undelivery
	running bool // a retry loop runs
}

// undoRetry is how often the retry loop tries the database.
const undoRetry = 500 * time.Millisecond

// undone is what undeliver did in a transaction: the deliveries it took
// off the queue, and how many of them it cleared (the others were not
// committed, or were answered since).
type undone struct {
	list    []undelivery
	cleared int64
}

// undeliver clears, in tx, the deliveries queued, and returns what it did,
// to be passed to undelivered once tx commits.
func (s *State) undeliver(ctx context.Context, tx *txn) (undone, error) {
	s.undo.mu.Lock()
	list := slices.Clone(s.undo.list)
	s.undo.mu.Unlock()
	var cleared int64
	for _, u := range list {
		q := `UPDATE task_ins SET delivered_by = NULL WHERE seq = $1 AND delivered_at = $2 AND delivered_by = $3 AND answered = 0`
		if u.link {
			q = `UPDATE link_ins SET delivered_by = NULL WHERE seq = $1 AND delivered_at = $2 AND delivered_by = $3 AND reply_id = ''`
		}
		res, err := tx.ExecContext(ctx, q, u.seq, u.at, u.by)
		if err != nil {
			return undone{}, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return undone{}, err
		}
		cleared += n
	}
	return undone{list: list, cleared: cleared}, nil
}

// undelivered takes done off the queue, and logs the deliveries cleared.
func (s *State) undelivered(done undone) {
	if len(done.list) == 0 {
		return
	}
	s.undo.mu.Lock()
	defer s.undo.mu.Unlock()
	s.undo.list = slices.DeleteFunc(s.undo.list, func(u undelivery) bool { return slices.Contains(done.list, u) })
	if done.cleared > 0 {
		s.log.Info("a task whose delivery failed with the database connection is ready to go to its node again", "tasks", done.cleared, "database", s.name)
	}
}

// undeliverLater queues u and starts the retry loop if none runs.
func (s *State) undeliverLater(u undelivery) {
	s.undo.mu.Lock()
	defer s.undo.mu.Unlock()
	s.undo.list = append(s.undo.list, u)
	if s.undo.running {
		return
	}
	s.undo.running = true
	go func() {
		for {
			time.Sleep(undoRetry)
			s.undo.mu.Lock()
			if len(s.undo.list) == 0 || s.closed.Load() {
				s.undo.running = false
				s.undo.mu.Unlock()
				return
			}
			s.undo.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			var done undone
			_ = s.write(ctx, "clearing a failed delivery", func(tx *txn) (func(), error) {
				var err error
				done, err = s.undeliver(ctx, tx)
				return func() { s.undelivered(done) }, err
			})
			cancel()
		}
	}()
}
