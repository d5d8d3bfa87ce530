package sqlstate

import (
	"context"
	"database/sql"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/linkrules"
)

// The bounds of state.LinkLimits in the database: what the limits count is
// in the tables (link_owed, link_pushers, the self_registered nodes, the
// FABs' sizes), and each check runs in the transaction of the call it
// bounds, so that every SuperLink on the database applies them together.
// The admissions of nodes and runs lock a row of meta first, as the 1.8.0
// node limits do, so that replicas admit one at a time.

// admit locks the row key of meta: the replicas' admissions of one kind
// then run one at a time.
func (s *State) admit(ctx context.Context, tx *txn, key string) error {
	var v int64
	return tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = $1`+s.d.forUpdate, key).Scan(&v)
}

// unactivatedSQL selects the nodes that registered themselves and never
// came online.
const unactivatedSQL = `self_registered = 1 AND status = 'registered' AND last_activated_at IS NULL`

// linkNodeRoom forgets nodes so that a new one (self: registering
// itself) fits the limits at now, or refuses it with a LinkLimitError.
func (s *State) linkNodeRoom(ctx context.Context, tx *txn, self bool, now float64, ops *linkOps) error {
	if err := s.admit(ctx, tx, "link_node_admission"); err != nil {
		return err
	}
	one := func(q string, args ...any) (int64, bool, error) {
		var id int64
		err := tx.QueryRowContext(ctx, q, args...).Scan(&id)
		if err == sql.ErrNoRows {
			return 0, false, nil
		}
		return id, err == nil, err
	}
	if self {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_nodes WHERE `+unactivatedSQL).Scan(&n); err != nil {
			return err
		}
		if n >= s.lim.MaxUnactivated {
			id, ok, err := one(`SELECT id FROM link_nodes WHERE ` + unactivatedSQL + ` ORDER BY seq LIMIT 1`)
			if err != nil {
				return err
			}
			if ok {
				if err := s.forgetLinkNode(ctx, tx, ops, id, "max_unactivated"); err != nil {
					return err
				}
			}
		}
	}
	for {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_nodes`).Scan(&n); err != nil {
			return err
		}
		if n < s.lim.MaxNodes {
			return nil
		}
		var id int64
		found := false
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{`SELECT id FROM link_nodes WHERE status = 'unregistered' ORDER BY unregistered_at, seq LIMIT 1`, nil},
			{`SELECT id FROM link_nodes WHERE ` + unactivatedSQL + ` ORDER BY seq LIMIT 1`, nil},
			{`SELECT id FROM link_nodes WHERE self_registered = 1 AND (status = 'offline' OR (status = 'online' AND online_until <= $1))
				ORDER BY online_until, seq LIMIT 1`, []any{now}},
		} {
			var err error
			if id, found, err = one(q.sql, q.args...); err != nil {
				return err
			}
			if found {
				break
			}
		}
		if !found {
			return &state.LinkLimitError{Limit: state.LimitLinkNodes, Max: int64(s.lim.MaxNodes),
				Msg: "RegisterNode: every place for a node is taken by a node online or registered through the Control API; retry later (a node that goes offline makes room)"}
		}
		if err := s.forgetLinkNode(ctx, tx, ops, id, state.LimitLinkNodes); err != nil {
			return err
		}
	}
}

// forgetLinkNode forgets node id to make room under limit: its key is free
// again, what it owes is dropped.
func (s *State) forgetLinkNode(ctx context.Context, tx *txn, ops *linkOps, id int64, limit string) error {
	var st string
	if err := tx.QueryRowContext(ctx, `DELETE FROM link_nodes WHERE id = $1 RETURNING status`, id).Scan(&st); err != nil {
		return err
	}
	runs, err := queryInts(ctx, tx, `SELECT run_id FROM link_pushers WHERE node_id = $1`, id)
	if err != nil {
		return err
	}
	for _, r := range runs {
		if err := s.dropPusher(ctx, tx, ops, id, r); err != nil {
			return err
		}
	}
	ops.then(func() {
		s.log.Info("node forgotten to make room for a new one", "node_id", uint64(id), "status", st, "limit", limit, "generation", "1.29")
	})
	return nil
}

// queryInts returns the first column of every row of q.
func queryInts(ctx context.Context, tx *txn, q string, args ...any) ([]int64, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	var out []int64
	for rows.Next() {
		var v int64
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Close()
}

// linkRunRoom checks that a new run, and its FAB of n bytes when the
// store does not hold it (n < 0 when it does), fit the limits at now,
// forgetting FABs that only finished runs use, the oldest first.
func (s *State) linkRunRoom(ctx context.Context, tx *txn, n int64, now float64) error {
	if err := s.admit(ctx, tx, "link_run_admission"); err != nil {
		return err
	}
	var active int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_runs WHERE `+linkStatusSQL+` <> 'finished'`, now).Scan(&active); err != nil {
		return err
	}
	if active >= s.lim.MaxActiveRuns {
		return &state.LinkLimitError{Limit: state.LimitActiveRuns, Max: int64(s.lim.MaxActiveRuns),
			Msg: fmt.Sprintf("StartRun: %d runs are not finished; stop one (flwr stop) or wait for one to finish", active)}
	}
	if n < 0 {
		return nil
	}
	var total int64
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(SUM(size), 0) FROM link_fabs`).Scan(&total); err != nil {
		return err
	}
	if total+n <= s.lim.MaxFabBytes {
		return nil
	}
	// The FABs' runs: in use by a run not finished, or the newest run.
	rows, err := tx.QueryContext(ctx, `SELECT run, seq, `+linkStatusSQL+` FROM link_runs`, now)
	if err != nil {
		return err
	}
	last := map[string]int64{} // FAB -> seq of its newest run; -1: in use
	for rows.Next() {
		var b []byte
		var seq int64
		var st string
		if err := rows.Scan(&b, &seq, &st); err != nil {
			rows.Close()
			return err
		}
		r := &flwr129.Run{}
		if err := proto.Unmarshal(b, r); err != nil {
			rows.Close()
			return err
		}
		switch v, ok := last[r.FabHash]; {
		case ok && v < 0:
		case st != state.StatusFinished:
			last[r.FabHash] = -1
		default:
			last[r.FabHash] = max(v, seq)
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	type fab struct {
		hash string
		size int64
		at   int64
	}
	var free []fab
	rows, err = tx.QueryContext(ctx, `SELECT hash_str, size FROM link_fabs`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var f fab
		if err := rows.Scan(&f.hash, &f.size); err != nil {
			rows.Close()
			return err
		}
		if f.at = last[f.hash]; f.at >= 0 {
			free = append(free, f)
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for total+n > s.lim.MaxFabBytes {
		if len(free) == 0 {
			return &state.LinkLimitError{Limit: state.LimitFabBytes, Max: s.lim.MaxFabBytes,
				Msg: fmt.Sprintf("StartRun: the FABs of the runs not finished take %d bytes, and this one %d more; wait for runs to finish", total, n)}
		}
		i := 0
		for j, f := range free {
			if f.at < free[i].at {
				i = j
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_fabs WHERE hash_str = $1`, free[i].hash); err != nil {
			return err
		}
		total -= free[i].size
		free = append(free[:i], free[i+1:]...)
	}
	return nil
}

// owe records that a node (or the ServerApp) owes object id of run for
// message msg, and reports whether that is new.
func (s *State) owe(ctx context.Context, tx *txn, node, run uint64, id, msg string) (bool, error) {
	res, err := tx.ExecContext(ctx, `INSERT INTO link_owed (object_id, node_id, run_id, message_id) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`,
		id, dbID(node), dbID(run), msg)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// pusher makes sure the row of a node that owes objects in a run exists,
// its deadline PushTimeout from now if it is new.
func (s *State) pusher(ctx context.Context, tx *txn, node, run uint64, now float64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO link_pushers (node_id, run_id, deadline) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		dbID(node), dbID(run), now+s.lim.PushTimeout.Seconds())
	return err
}

// checkOwed checks the replies of node in run that made it owe n more
// objects, once they are recorded: past the node's bound it refuses them
// (the transaction then rolls back); past the run's, the node of the run
// that owes the most loses its incomplete messages, if it owes more than
// node, else they are refused.
func (s *State) checkOwed(ctx context.Context, tx *txn, ops *linkOps, node, run uint64, n int) error {
	if node == state.SuperLinkNodeID || n == 0 {
		return nil
	}
	var nodeOwed, runOwed int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_owed WHERE node_id = $1`, dbID(node)).Scan(&nodeOwed); err != nil {
		return err
	}
	if err := linkrules.CheckOwed(node, n, nodeOwed-n, s.lim); err != nil {
		return err
	}
	for {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_owed WHERE run_id = $1 AND node_id <> $2`, dbID(run), dbID(state.SuperLinkNodeID)).Scan(&runOwed); err != nil {
			return err
		}
		if runOwed <= s.lim.MaxPendingPerRun {
			return nil
		}
		var victim int64
		var most, mine int
		err := tx.QueryRowContext(ctx, `SELECT node_id, COUNT(*) FROM link_owed WHERE run_id = $1 AND node_id <> $2 AND node_id <> $3
			GROUP BY node_id ORDER BY COUNT(*) DESC LIMIT 1`, dbID(run), dbID(node), dbID(state.SuperLinkNodeID)).Scan(&victim, &most)
		if err != nil && err != sql.ErrNoRows {
			return err
		}
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_owed WHERE run_id = $1 AND node_id = $2`, dbID(run), dbID(node)).Scan(&mine); err != nil {
			return err
		}
		if most <= mine {
			return linkrules.RunOwedError(node, run, n, runOwed-n, s.lim)
		}
		if err := s.dropPusher(ctx, tx, ops, victim, dbID(run)); err != nil {
			return err
		}
		ops.then(func() {
			s.log.Info("messages forgotten to make room in their run: their node owes the most objects", "node_id", uint64(victim), "run_id", run,
				"objects_owed", most, "generation", "1.29")
		})
	}
}

// settleObject records that object id is owed no more (pushed, or gone):
// the pushers that owe nothing then go.
func (s *State) settleObject(ctx context.Context, tx *txn, id string) error {
	rows, err := tx.QueryContext(ctx, `DELETE FROM link_owed WHERE object_id = $1 RETURNING node_id, run_id`, id)
	if err != nil {
		return err
	}
	type key struct{ node, run int64 }
	seen := map[key]bool{}
	var keys []key
	for rows.Next() {
		var k key
		if err := rows.Scan(&k.node, &k.run); err != nil {
			rows.Close()
			return err
		}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_pushers WHERE node_id = $1 AND run_id = $2
			AND NOT EXISTS (SELECT 1 FROM link_owed WHERE node_id = $1 AND run_id = $2)`, k.node, k.run); err != nil {
			return err
		}
	}
	return nil
}

// dropPusher forgets what a node owes in a run and the messages it owes
// it for: a reply as never sent, an instruction as expired.
func (s *State) dropPusher(ctx context.Context, tx *txn, ops *linkOps, node, run int64) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM link_pushers WHERE node_id = $1 AND run_id = $2`, node, run); err != nil {
		return err
	}
	msgs, err := queryStrings(ctx, tx, `DELETE FROM link_owed WHERE node_id = $1 AND run_id = $2 RETURNING message_id`, node, run)
	if err != nil {
		return err
	}
	done := map[string]bool{}
	for _, m := range msgs {
		if done[m] {
			continue
		}
		done[m] = true
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM link_ins WHERE id = $1`, m).Scan(&one)
		if err == nil {
			if err := s.dropInstruction(ctx, tx, ops, m); err != nil {
				return err
			}
			continue
		}
		if err != sql.ErrNoRows {
			return err
		}
		// A reply: the instruction it answers is unanswered again.
		ins, err := queryStrings(ctx, tx, `UPDATE link_ins SET reply_id = '' WHERE reply_id = $1 AND res_delivered = 0 RETURNING id`, m)
		if err != nil {
			return err
		}
		if len(ins) == 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_replies WHERE id = $1`, m); err != nil {
			return err
		}
		if err := s.deleteObject(ctx, tx, ops, m); err != nil {
			return err
		}
	}
	return nil
}

// expirePushers drops the pushers whose deadline passed (linkExpire).
func (s *State) expirePushers(ctx context.Context, tx *txn, now float64, ops *linkOps) error {
	rows, err := tx.QueryContext(ctx, `SELECT node_id, run_id FROM link_pushers WHERE deadline < $1`+s.d.forUpdate+s.d.skipLocked, now)
	if err != nil {
		return err
	}
	var keys [][2]int64
	for rows.Next() {
		var k [2]int64
		if err := rows.Scan(&k[0], &k[1]); err != nil {
			rows.Close()
			return err
		}
		keys = append(keys, k)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.dropPusher(ctx, tx, ops, k[0], k[1]); err != nil {
			return err
		}
		ops.then(func() {
			s.log.Info("messages forgotten: their objects were not pushed in time", "node_id", uint64(k[0]), "run_id", uint64(k[1]),
				"push_timeout", s.lim.PushTimeout.String(), "generation", "1.29")
		})
	}
	return nil
}

// inRun reports whether run sent node a message that is still held.
func (s *State) inRun(ctx context.Context, tx *txn, node, run uint64) (bool, error) {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM link_ins WHERE dst_node = $1 AND run_id = $2 LIMIT 1`, dbID(node), dbID(run)).Scan(&one)
	if err == sql.ErrNoRows {
		return false, nil
	}
	return err == nil, err
}

// UseSignature implements state.LinkState: in the process for a store it
// owns (SQLite), in link_signatures for one that replicas share
// (PostgreSQL), where a SuperLink forgets those no longer acceptable at
// most once a second.
func (s *State) UseSignature(ctx context.Context, tag []byte, signedAt, until float64) error {
	now := linkrules.Seconds(s.now())
	if s.sigs != nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		return s.sigs.Use(tag, until, now)
	}
	purge := false
	if sec := int64(now); s.sigPurged.Load() != sec {
		s.sigPurged.Store(sec)
		purge = true
	}
	return s.write(ctx, "UseSignature", func(tx *txn) (func(), error) {
		// Losing the last few in a crash of the database costs little:
		// not waiting for the disk on every signed call.
		if _, err := tx.ExecContext(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
			return nil, err
		}
		if purge {
			if _, err := tx.ExecContext(ctx, `DELETE FROM link_signatures WHERE until < $1`, now); err != nil {
				return nil, err
			}
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO link_signatures (tag, until) VALUES ($1, $2) ON CONFLICT DO NOTHING`, tag, until)
		if err != nil {
			return nil, err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err == nil {
				err = linkrules.ErrReplayed
			}
			return nil, err
		}
		return nil, nil
	})
}
