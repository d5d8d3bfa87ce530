package sqlstate

import (
	"context"
	"database/sql"
	"os"
	"time"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/linkrules"
	"github.com/sepal-fl/sepal/state/internal/rules"
)

// Replicas. Every State that opens a database joins it as a replica: it
// draws an id, records it in the table replicas (with its host and pid, for
// the log), and is "alive" until it closes or dies. What is alive is the
// dialect's to say (dialect.alive):
//
//   - SQLite: the replica's row exists. A State deletes its row when it
//     closes; one that opens the file alone (the file lock proves that no
//     other process has it) deletes every row, since their processes are
//     gone.
//   - PostgreSQL: the replica holds a session advisory lock keyed by its
//     id, on a connection of its own (pgLocker). The server frees it the
//     moment that connection ends, when the process exits or is killed,
//     and a partitioned replica loses it within the TCP keepalive set on
//     that connection (about 25 s), so several SuperLink processes on one
//     database learn at once which of them died, without timing their
//     heartbeats.
//
// Two rules rest on it, which a single SuperLink used to base on the time
// it opened the database:
//
//   - A TaskIns delivered by a replica that is no longer alive and not
//     answered goes again to its node when the node asks (PullTaskIns): a
//     node asks only when it has no task, so the response carrying it was
//     lost with that replica. A TaskIns delivered by a live replica is
//     never handed out twice.
//   - The restart grace (grace): a replica that joins when no other is
//     alive gives every node that was online when a SuperLink last ran its
//     ping interval from now. A replica that joins while others serve
//     changes nothing. Joins are serialised (dialect.lockJoin), so of
//     replicas that start at once after all had stopped, the first gives
//     the grace and the others see it alive.

// replicaLocker holds the lock that shows a replica alive, where the
// database needs one (PostgreSQL); nil in SQLite.
type replicaLocker interface {
	// lock takes the lock of replica id, releasing any this locker held
	// before; false when another replica holds it.
	lock(ctx context.Context, id int64) (bool, error)
	// close releases the lock and what holds it.
	close()
}

// replicaIDs are drawn below 2^31: PostgreSQL's advisory locks take two
// 32-bit keys.
const replicaIDMask = 1<<31 - 1

// join makes s a replica of the database: it picks an id no other replica
// has, takes its lock, records it, and gives the restart grace when no
// other replica is alive. exclusive says that no other process can have
// the database open (SQLite's file lock): the rows of the replicas before
// are removed.
func (s *State) join(ctx context.Context, exclusive bool) error {
	host, _ := os.Hostname()
	pid := os.Getpid()
	now := s.now()
	var id int64
	err := s.write(ctx, "open", func(tx *txn) (func(), error) {
		if s.d.lockJoin != nil {
			if err := s.d.lockJoin(ctx, tx.Tx); err != nil {
				return nil, err
			}
		}
		if exclusive {
			if _, err := tx.ExecContext(ctx, `DELETE FROM replicas`); err != nil {
				return nil, err
			}
		}
		for {
			r, err := rules.RandomID(s.rand, nil)
			if err != nil {
				return nil, err
			}
			if id = r & replicaIDMask; id == 0 {
				continue
			}
			if s.locker != nil {
				ok, err := s.locker.lock(ctx, id)
				if err != nil {
					return nil, err
				}
				if !ok {
					continue // a live replica has it
				}
			}
			// A row with this id left by a dead replica: its deliveries
			// would look alive under our lock. Draw again.
			res, err := tx.ExecContext(ctx, `INSERT INTO replicas (id, host, pid, started_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
				id, host, pid, micro(now))
			if err != nil {
				return nil, err
			}
			if n, err := res.RowsAffected(); err != nil {
				return nil, err
			} else if n == 1 {
				break
			}
		}
		var others int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM replicas WHERE id <> $1 AND `+s.d.aliveSQL("replicas.id"), id).Scan(&others); err != nil {
			return nil, err
		}
		if others == 0 {
			if err := s.grace(ctx, tx, now); err != nil {
				return nil, err
			}
		}
		return nil, s.heartbeat(ctx, tx, now)
	})
	if err != nil {
		return err
	}
	s.replica.Store(id)
	return nil
}

// leave removes s's replica row, in Close: its deliveries are then
// redelivered at once (a graceful stop may cut a response short too).
func (s *State) leave(ctx context.Context, tx *txn) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM replicas WHERE id = $1`, s.replica.Load())
	return err
}

// forgetDeadReplicas deletes the rows of replicas no longer alive (in
// SQLite, where a row is what makes one alive, it deletes nothing).
func (s *State) forgetDeadReplicas(ctx context.Context, tx *txn) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM replicas WHERE NOT `+s.d.aliveSQL("replicas.id"))
	return err
}

// rejoin records s's replica row again, after its lock was taken again
// (PostgreSQL, once the database is back): another replica may have
// deleted the row while the lock was lost.
func (s *State) rejoin(ctx context.Context, id int64) error {
	host, _ := os.Hostname()
	return s.write(ctx, "rejoin", func(tx *txn) (func(), error) {
		_, err := tx.ExecContext(ctx, `INSERT INTO replicas (id, host, pid, started_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
			id, host, os.Getpid(), micro(s.now()))
		return nil, err
	})
}

// grace gives every node that was online when a SuperLink last ran on this
// database its ping interval from now: its ping may have fallen due while
// none was running, and it is not its fault.
func (s *State) grace(ctx context.Context, tx *txn, now time.Time) error {
	var hb int64
	err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'heartbeat'`).Scan(&hb)
	if err == sql.ErrNoRows {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = s.graceSince(ctx, tx, hb, now)
	return err
}

// graceSince gives every node online at since (unix µs) its ping interval
// (a 1.29 node its heartbeat patience) from now, and a 1.29 ServerApp
// whose token was live then its patience, and returns how many nodes it
// gave more time.
func (s *State) graceSince(ctx context.Context, tx *txn, since int64, now time.Time) (int, error) {
	type node struct {
		id    int64
		pi    float64
		until int64
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, ping_interval, online_until FROM nodes WHERE online_until >= $1`+s.d.forUpdate, since)
	if err != nil {
		return 0, err
	}
	var list []node
	for rows.Next() {
		var n node
		if err := rows.Scan(&n.id, &n.pi, &n.until); err != nil {
			rows.Close()
			return 0, err
		}
		list = append(list, n)
	}
	if err := rows.Close(); err != nil {
		return 0, err
	}
	given := 0
	for _, n := range list {
		d, _ := rules.CheckPingInterval(n.pi)
		if until := micro(now.Add(d)); until > n.until {
			if _, err := tx.ExecContext(ctx, `UPDATE nodes SET online_until = $1, offline = 0 WHERE id = $2`, until, n.id); err != nil {
				return 0, err
			}
			given++
		}
	}
	// The 1.29 generation: its nodes get their heartbeat patience, and the
	// ServerApps of its runs theirs, so that neither is found gone.
	sec, from := linkrules.Seconds(now), float64(since)/1e6
	res, err := tx.ExecContext(ctx, `UPDATE link_nodes SET online_until = $1 + $3 * heartbeat_interval
		WHERE status = 'online' AND online_until >= $2 AND online_until < $1 + $3 * heartbeat_interval`, sec, from, float64(state.HeartbeatPatience))
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE link_runs SET token_until = $1
		WHERE token <> '' AND status <> 'finished' AND token_until >= $2 AND token_until < $1`,
		sec+state.HeartbeatPatience*state.HeartbeatDefaultInterval, from); err != nil {
		return 0, err
	}
	return given + int(n), nil
}
