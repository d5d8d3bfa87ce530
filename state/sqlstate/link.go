package sqlstate

import (
	"context"
	"database/sql"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/inflatable"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/linkrules"
)

// The Flower 1.29.0 generation (state.LinkState) in the same database as
// the 1.8.0 state, in the tables link_* (migrations/*/..._link.sql): the
// State implements both interfaces, so a SuperLink on one --database keeps
// both generations. The rules are linkrules', as memlink's; the suite
// statetest.RunLink holds them to the same answers.
//
// Every method is one transaction. Those that change anything first bring
// expiry up to date in it (linkExpire: runs whose ServerApp stopped
// sending heartbeats fail, messages past their TTL go), as memlink does on
// every call; those that only read (Run, LinkRuns, NodeOfKey, RunOfToken,
// Logs, ...) see the same without writing: a node written online whose
// time ran out reads offline, a run whose token expired reads failed.
// Nothing is kept in the process but the cache of large objects' bytes
// (the blobs' cache, by content, never stale), so SuperLinks on one
// PostgreSQL database share every node, run, token, message, object and
// log line, and a message goes to one node once across all of them.

var _ state.LinkState = (*State)(nil)

// dbID is a node or run id as the database keeps it: the same 64 bits,
// signed.
func dbID(v uint64) int64 { return int64(v) }

// linkOps collects what a transaction's commit lets the process do: the
// blobs deleted (the cache lets go of them) and log lines.
type linkOps struct {
	released []sum
	after    []func()
}

func (o *linkOps) then(f func()) { o.after = append(o.after, f) }

// done is what s does once the transaction of o committed.
func (o *linkOps) done(s *State) {
	s.cache.release(o.released)
	for _, f := range o.after {
		f()
	}
}

// linkFunc is the body of a 1.29 call's transaction; now is the call's
// time in seconds since the epoch.
type linkFunc func(tx *txn, now float64, ops *linkOps) error

// linkWrite runs fn in a write transaction, after linkExpire.
func (s *State) linkWrite(ctx context.Context, method string, fn linkFunc) error {
	err, _ := s.linkWriteMaybe(ctx, method, fn)
	return err
}

// linkWriteMaybe is linkWrite, saying too whether a failure came from the
// commit (State.writeMaybe).
func (s *State) linkWriteMaybe(ctx context.Context, method string, fn linkFunc) (error, bool) {
	now := linkrules.Seconds(s.now())
	return s.writeMaybe(ctx, method, func(tx *txn) (func(), error) {
		ops := &linkOps{}
		if err := s.linkExpire(ctx, tx, now, ops); err != nil {
			return nil, err
		}
		if err := fn(tx, now, ops); err != nil {
			return nil, err
		}
		return func() { ops.done(s) }, nil
	})
}

// linkRead runs fn in a read-only transaction.
func (s *State) linkRead(ctx context.Context, method string, fn func(tx *txn, now float64) error) error {
	now := linkrules.Seconds(s.now())
	return s.read(ctx, method, func(tx *txn) error { return fn(tx, now) })
}

// linkExpire fails the runs whose app token expired (releasing what they
// held) and forgets the messages past their TTL. Rows another replica's
// transaction holds are left to it.
func (s *State) linkExpire(ctx context.Context, tx *txn, now float64, ops *linkOps) error {
	type expired struct {
		id    int64
		until float64
	}
	var runs []expired
	rows, err := tx.QueryContext(ctx, `SELECT id, token_until FROM link_runs WHERE token <> '' AND token_until < $1 AND status <> 'finished'`+s.d.forUpdate+s.d.skipLocked, now)
	if err != nil {
		return err
	}
	for rows.Next() {
		var e expired
		if err := rows.Scan(&e.id, &e.until); err != nil {
			rows.Close()
			return err
		}
		runs = append(runs, e)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for _, r := range runs {
		if _, err := tx.ExecContext(ctx, `UPDATE link_runs SET status = $1, sub_status = $2, details = $3, finished_at = $4 WHERE id = $5`,
			state.StatusFinished, state.SubStatusFailed, linkrules.HeartbeatFailed, linkrules.ISOSeconds(r.until), r.id); err != nil {
			return err
		}
		if err := s.linkFinished(ctx, tx, ops, r.id); err != nil {
			return err
		}
		ops.then(func() {
			s.log.Info("run failed: its ServerApp sent no heartbeat", "run_id", uint64(r.id), "generation", "1.29")
		})
	}
	ids, err := queryStrings(ctx, tx, `SELECT id FROM link_ins WHERE expires_at <= $1`+s.d.forUpdate+s.d.skipLocked, now)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := s.dropInstruction(ctx, tx, ops, id); err != nil {
			return err
		}
	}
	return s.expirePushers(ctx, tx, now, ops)
}

// queryStrings returns the first column of every row of q.
func queryStrings(ctx context.Context, tx *txn, q string, args ...any) ([]string, error) {
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Close()
}

// nodeRow is a row of link_nodes.
type nodeRow struct {
	seq                                  int64
	id                                   uint64
	key                                  []byte
	status                               string
	interval, registered                 float64
	activated, deactivated, unregistered sql.NullFloat64
	until                                sql.NullFloat64
}

const nodeCols = `seq, id, public_key, status, heartbeat_interval, registered_at, last_activated_at, last_deactivated_at, unregistered_at, online_until`

// scanNode reads a row of nodeCols and settles it at now: a node written
// online whose time ran out is offline since then.
func scanNode(sc interface{ Scan(...any) error }, now float64) (*nodeRow, error) {
	n := &nodeRow{}
	var id int64
	if err := sc.Scan(&n.seq, &id, &n.key, &n.status, &n.interval, &n.registered, &n.activated, &n.deactivated, &n.unregistered, &n.until); err != nil {
		return nil, err
	}
	n.id = uint64(id)
	if n.status == state.NodeOnline && n.until.Float64 <= now {
		n.status = state.NodeOffline
		n.deactivated = n.until
	}
	return n, nil
}

func isoOf(v sql.NullFloat64) *string {
	if !v.Valid {
		return nil
	}
	s := linkrules.ISOSeconds(v.Float64)
	return &s
}

func (n *nodeRow) info() *flwr129.NodeInfo {
	i := &flwr129.NodeInfo{
		NodeId: n.id, OwnerAid: linkrules.NoopFlwrAID, OwnerName: linkrules.NoopAccountName, Status: n.status,
		RegisteredAt: linkrules.ISOSeconds(n.registered), LastActivatedAt: isoOf(n.activated), LastDeactivatedAt: isoOf(n.deactivated),
		UnregisteredAt: isoOf(n.unregistered), HeartbeatInterval: n.interval, PublicKey: n.key,
	}
	if n.until.Valid {
		u := n.until.Float64
		i.OnlineUntil = &u
	}
	return i
}

// node returns the node of id, or of publicKey when it is not nil; nil
// when there is none. In a write, its row is locked.
func (s *State) node(ctx context.Context, tx *txn, id uint64, publicKey []byte, now float64, lock bool) (*nodeRow, error) {
	q, arg := `SELECT `+nodeCols+` FROM link_nodes WHERE id = $1`, any(dbID(id))
	if publicKey != nil {
		q, arg = `SELECT `+nodeCols+` FROM link_nodes WHERE public_key = $1`, publicKey
	}
	if lock {
		q += s.d.forUpdate
	}
	n, err := scanNode(tx.QueryRowContext(ctx, q, arg), now)
	if err == sql.ErrNoRows {
		return nil, nil
	}
	return n, err
}

// saveNode writes what may change of a node.
func (s *State) saveNode(ctx context.Context, tx *txn, n *nodeRow) error {
	_, err := tx.ExecContext(ctx, `UPDATE link_nodes SET status = $1, heartbeat_interval = $2, last_activated_at = $3, last_deactivated_at = $4,
		unregistered_at = $5, online_until = $6 WHERE id = $7`, n.status, n.interval, n.activated, n.deactivated, n.unregistered, n.until, dbID(n.id))
	return err
}

func valid(v float64) sql.NullFloat64 { return sql.NullFloat64{Float64: v, Valid: true} }

// RegisterNode implements state.LinkState.
func (s *State) RegisterNode(ctx context.Context, publicKey []byte, heartbeatInterval float64) (uint64, error) {
	if len(publicKey) == 0 {
		return 0, status.Error(codes.InvalidArgument, "no public key: send the node's public key (PEM)")
	}
	var id uint64
	self := 0
	if heartbeatInterval == 0 {
		self = 1
	}
	err := s.linkWrite(ctx, "RegisterNode", func(tx *txn, now float64, ops *linkOps) error {
		roomed := false
		for {
			var used int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_nodes WHERE public_key = $1`, publicKey).Scan(&used); err != nil {
				return err
			}
			if used > 0 {
				return status.Error(codes.FailedPrecondition, "Public key already in use")
			}
			if !roomed {
				if err := s.linkNodeRoom(ctx, tx, self == 1, now, ops); err != nil {
					return err
				}
				roomed = true
			}
			var err error
			if id, err = linkrules.RandomID(s.rand, state.SuperLinkNodeID); err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO link_nodes (id, public_key, status, heartbeat_interval, registered_at, self_registered) VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT DO NOTHING`, dbID(id), publicKey, state.NodeRegistered, heartbeatInterval, now, self)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n == 1 {
				ops.then(func() { s.log.Info("node registered", "node_id", id, "generation", "1.29") })
				return err
			}
			// The id was taken, or another replica registered the key
			// meanwhile: look again.
		}
	})
	return id, err
}

// ActivateNode implements state.LinkState.
func (s *State) ActivateNode(ctx context.Context, publicKey []byte, heartbeatInterval float64) (uint64, error) {
	var id uint64
	err := s.linkWrite(ctx, "ActivateNode", func(tx *txn, now float64, ops *linkOps) error {
		n, err := s.node(ctx, tx, 0, publicKey, now, true)
		if err != nil {
			return err
		}
		if n == nil || n.status == state.NodeUnregistered {
			return status.Error(codes.FailedPrecondition, "No SuperNode found with the given public key.")
		}
		if err := linkrules.CheckHeartbeatInterval(heartbeatInterval); err != nil {
			return err
		}
		if n.status != state.NodeRegistered && n.status != state.NodeOffline {
			return status.Errorf(codes.FailedPrecondition, "SuperNode with node ID %d could not be activated.", n.id)
		}
		n.status, n.activated = state.NodeOnline, valid(now)
		n.until, n.interval = valid(now+state.HeartbeatPatience*heartbeatInterval), heartbeatInterval
		id = n.id
		ops.then(func() {
			s.log.Info("node joined", "node_id", id, "heartbeat_interval", heartbeatInterval, "generation", "1.29")
		})
		return s.saveNode(ctx, tx, n)
	})
	return id, err
}

// DeactivateNode implements state.LinkState.
func (s *State) DeactivateNode(ctx context.Context, nodeID uint64) error {
	return s.linkWrite(ctx, "DeactivateNode", func(tx *txn, now float64, ops *linkOps) error {
		n, err := s.node(ctx, tx, nodeID, nil, now, true)
		if err != nil {
			return err
		}
		if n == nil || n.status != state.NodeOnline {
			return status.Errorf(codes.FailedPrecondition, "SuperNode with node ID %d could not be deactivated.", nodeID)
		}
		n.status, n.deactivated, n.until = state.NodeOffline, valid(now), valid(now)
		ops.then(func() { s.log.Info("node left", "node_id", nodeID, "reason", "deactivate_node", "generation", "1.29") })
		return s.saveNode(ctx, tx, n)
	})
}

// UnregisterNode implements state.LinkState.
func (s *State) UnregisterNode(ctx context.Context, nodeID uint64) error {
	return s.linkWrite(ctx, "UnregisterNode", func(tx *txn, now float64, ops *linkOps) error {
		n, err := s.node(ctx, tx, nodeID, nil, now, true)
		if err != nil {
			return err
		}
		if n == nil || n.status == state.NodeUnregistered {
			return status.Errorf(codes.NotFound, "Node ID %d already unregistered, not found or the request was unauthorized.", nodeID)
		}
		n.status, n.unregistered = state.NodeUnregistered, valid(now)
		if !n.until.Valid || n.until.Float64 > now {
			n.until = valid(now)
		}
		ops.then(func() { s.log.Info("node unregistered", "node_id", nodeID, "generation", "1.29") })
		return s.saveNode(ctx, tx, n)
	})
}

// NodeHeartbeat implements state.LinkState.
func (s *State) NodeHeartbeat(ctx context.Context, nodeID uint64, heartbeatInterval float64) (bool, error) {
	if err := linkrules.CheckHeartbeatInterval(heartbeatInterval); err != nil {
		return false, err
	}
	found := false
	err := s.linkWrite(ctx, "NodeHeartbeat", func(tx *txn, now float64, ops *linkOps) error {
		n, err := s.node(ctx, tx, nodeID, nil, now, true)
		found = err == nil && n != nil && n.status != state.NodeUnregistered
		if !found {
			return err
		}
		if n.status != state.NodeOnline {
			n.status, n.activated = state.NodeOnline, valid(now)
			ops.then(func() { s.log.Info("node back online", "node_id", nodeID, "generation", "1.29") })
		}
		n.until, n.interval = valid(now+state.HeartbeatPatience*heartbeatInterval), heartbeatInterval
		return s.saveNode(ctx, tx, n)
	})
	return found && err == nil, err
}

// NodeOfKey implements state.LinkState.
func (s *State) NodeOfKey(ctx context.Context, publicKey []byte) (uint64, bool, error) {
	var n *nodeRow
	err := s.linkRead(ctx, "NodeOfKey", func(tx *txn, now float64) error {
		var err error
		n, err = s.node(ctx, tx, 0, publicKey, now, false)
		return err
	})
	if err != nil || n == nil || n.status == state.NodeUnregistered {
		return 0, false, err
	}
	return n.id, true, nil
}

// LinkNodes implements state.LinkState.
func (s *State) LinkNodes(ctx context.Context) ([]*flwr129.NodeInfo, error) {
	var out []*flwr129.NodeInfo
	err := s.linkRead(ctx, "LinkNodes", func(tx *txn, now float64) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT `+nodeCols+` FROM link_nodes ORDER BY seq`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			n, err := scanNode(rows, now)
			if err != nil {
				return err
			}
			out = append(out, n.info())
		}
		return rows.Err()
	})
	return out, err
}

// runRow is a row of link_runs.
type runRow struct {
	r          *flwr129.Run // with its status as of now
	token      string
	tokenUntil float64
}

const runCols = `id, run, status, sub_status, details, starting_at, running_at, finished_at, bytes_sent, bytes_recv, clientapp_runtime, token, token_until`

// linkStatusSQL is a run's status as of $1, as scanRun settles it.
const linkStatusSQL = `CASE WHEN token <> '' AND token_until < $1 AND status <> 'finished' THEN 'finished' ELSE status END`

// scanRun reads a row of runCols and settles it at now: a run whose token
// expired has failed.
func scanRun(sc interface{ Scan(...any) error }, now float64) (*runRow, error) {
	var id, sent, recv int64
	var fixed []byte
	var st flwr129.RunStatus
	var starting, running, finished string
	var runtime float64
	rr := &runRow{r: &flwr129.Run{}}
	if err := sc.Scan(&id, &fixed, &st.Status, &st.SubStatus, &st.Details, &starting, &running, &finished, &sent, &recv, &runtime, &rr.token, &rr.tokenUntil); err != nil {
		return nil, err
	}
	if err := proto.Unmarshal(fixed, rr.r); err != nil {
		return nil, err
	}
	r := rr.r
	r.RunId, r.Status, r.StartingAt, r.RunningAt, r.FinishedAt = uint64(id), &st, starting, running, finished
	r.BytesSent, r.BytesRecv, r.ClientappRuntime = uint64(sent), uint64(recv), runtime
	if rr.token != "" && rr.tokenUntil < now && st.Status != state.StatusFinished {
		r.Status = &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusFailed, Details: linkrules.HeartbeatFailed}
		r.FinishedAt = linkrules.ISOSeconds(rr.tokenUntil)
	}
	return rr, nil
}

// linkRun returns run id (NotFound when unknown), its row locked in a write
// when lock is set.
func (s *State) linkRun(ctx context.Context, tx *txn, id uint64, now float64, lock bool) (*runRow, error) {
	q := `SELECT ` + runCols + ` FROM link_runs WHERE id = $1`
	if lock {
		q += s.d.forUpdate
	}
	rr, err := scanRun(tx.QueryRowContext(ctx, q, dbID(id)), now)
	if err == sql.ErrNoRows {
		return nil, status.Errorf(codes.NotFound, "Run ID not found: %d", id)
	}
	return rr, err
}

// runningRun returns run id when it is running, else Flower's error.
func (s *State) runningRun(ctx context.Context, tx *txn, id uint64, now float64) (*runRow, error) {
	rr, err := s.linkRun(ctx, tx, id, now, false)
	if err != nil {
		return nil, err
	}
	return rr, linkrules.RequireRunning(rr.r.Status)
}

// CreateLinkRun implements state.LinkState.
func (s *State) CreateLinkRun(ctx context.Context, nr state.NewRun) (uint64, error) {
	fab := nr.Fab
	if fab == nil || inflatable.ID(fab.GetContent()) != fab.GetHashStr() {
		return 0, status.Error(codes.InvalidArgument, "the FAB's hash_str is not the SHA-256 of its content")
	}
	fabBytes, err := proto.Marshal(fab)
	if err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "the FAB: %v", err)
	}
	var id uint64
	err = s.linkWrite(ctx, "CreateLinkRun", func(tx *txn, now float64, ops *linkOps) error {
		var held int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM link_fabs WHERE hash_str = $1`, fab.HashStr).Scan(&held); err != nil {
			return err
		}
		size := int64(len(fab.Content))
		if held > 0 {
			size = -1
		}
		if err := s.linkRunRoom(ctx, tx, size, now); err != nil {
			return err
		}
		// Flower: the last verifications written win; the content is the
		// same, its hash says so.
		if _, err := tx.ExecContext(ctx, `INSERT INTO link_fabs (hash_str, fab, size) VALUES ($1, $2, $3) ON CONFLICT (hash_str) DO UPDATE SET fab = excluded.fab`,
			fab.HashStr, fabBytes, len(fab.Content)); err != nil {
			return err
		}
		for {
			var err error
			if id, err = linkrules.RandomID(s.rand); err != nil {
				return err
			}
			fixed, err := proto.MarshalOptions{Deterministic: true}.Marshal(&flwr129.Run{
				FabId: nr.FabID, FabVersion: nr.FabVersion, FabHash: fab.HashStr, OverrideConfig: nr.OverrideConfig,
				PendingAt: linkrules.ISOSeconds(now), FlwrAid: nr.FlwrAID, Federation: nr.Federation, RunType: nr.RunType,
			})
			if err != nil {
				return status.Errorf(codes.InvalidArgument, "the run: %v", err)
			}
			appCtx, err := proto.Marshal(&flwr129.Context{RunId: id, NodeId: state.SuperLinkNodeID, State: &flwr129.RecordDict{}})
			if err != nil {
				return err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO link_runs (id, run, status, context) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
				dbID(id), fixed, state.StatusPending, appCtx)
			if err != nil {
				return err
			}
			if n, err := res.RowsAffected(); err != nil || n == 1 {
				ops.then(func() {
					s.log.Info("run created", "run_id", id, "fab_id", nr.FabID, "fab_hash", fab.HashStr, "generation", "1.29")
				})
				return err
			}
		}
	})
	return id, err
}

// Run implements state.LinkState.
func (s *State) Run(ctx context.Context, runID uint64) (*flwr129.Run, error) {
	var out *flwr129.Run
	err := s.linkRead(ctx, "Run", func(tx *txn, now float64) error {
		rr, err := s.linkRun(ctx, tx, runID, now, false)
		if err == nil {
			out = rr.r
		}
		return err
	})
	return out, err
}

// LinkRuns implements state.LinkState.
func (s *State) LinkRuns(ctx context.Context, limit int, statuses ...string) ([]*flwr129.Run, error) {
	var out []*flwr129.Run
	err := s.linkRead(ctx, "LinkRuns", func(tx *txn, now float64) error {
		out = nil
		q := `SELECT ` + runCols + ` FROM link_runs`
		var args []any
		if len(statuses) > 0 {
			args = []any{now}
			ph := make([]string, len(statuses))
			for i, st := range statuses {
				ph[i] = "$" + strconv.Itoa(i+2)
				args = append(args, st)
			}
			q += ` WHERE ` + linkStatusSQL + ` IN (` + strings.Join(ph, ", ") + `)`
		}
		rows, err := tx.QueryContext(ctx, q+` ORDER BY seq DESC LIMIT `+s.d.limit(limit), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			rr, err := scanRun(rows, now)
			if err != nil {
				return err
			}
			out = append(out, rr.r)
		}
		return rows.Err()
	})
	return out, err
}

// Fab implements state.LinkState.
func (s *State) Fab(ctx context.Context, hash string) (*flwr129.Fab, error) {
	var out *flwr129.Fab
	err := s.linkRead(ctx, "Fab", func(tx *txn, now float64) error {
		var err error
		out, err = s.fab(ctx, tx, hash)
		return err
	})
	return out, err
}

func (s *State) fab(ctx context.Context, tx *txn, hash string) (*flwr129.Fab, error) {
	var b []byte
	err := tx.QueryRowContext(ctx, `SELECT fab FROM link_fabs WHERE hash_str = $1`, hash).Scan(&b)
	if err == sql.ErrNoRows {
		return nil, status.Errorf(codes.NotFound, "Found no FAB with hash: %.80s", hash)
	}
	if err != nil {
		return nil, err
	}
	f := &flwr129.Fab{}
	return f, proto.Unmarshal(b, f)
}

// setStatus moves run rr to next along Flower's transitions, in tx and in
// rr.r; a run that finishes releases what it held.
func (s *State) setStatus(ctx context.Context, tx *txn, ops *linkOps, rr *runRow, next *flwr129.RunStatus, now float64) error {
	if err := linkrules.CheckTransition(rr.r.Status, next); err != nil {
		return err
	}
	r := rr.r
	r.Status = &flwr129.RunStatus{Status: next.GetStatus(), SubStatus: next.GetSubStatus(), Details: next.GetDetails()}
	at := linkrules.ISOSeconds(now)
	switch next.GetStatus() {
	case state.StatusStarting:
		r.StartingAt = at
	case state.StatusRunning:
		r.RunningAt = at
	case state.StatusFinished:
		r.FinishedAt = at
	}
	if _, err := tx.ExecContext(ctx, `UPDATE link_runs SET status = $1, sub_status = $2, details = $3, starting_at = $4, running_at = $5, finished_at = $6 WHERE id = $7`,
		r.Status.Status, r.Status.SubStatus, r.Status.Details, r.StartingAt, r.RunningAt, r.FinishedAt, dbID(r.RunId)); err != nil {
		return err
	}
	if next.GetStatus() == state.StatusFinished {
		rr.token = ""
		if err := s.linkFinished(ctx, tx, ops, dbID(r.RunId)); err != nil {
			return err
		}
		id, sub := r.RunId, next.GetSubStatus()
		ops.then(func() { s.log.Info("run finished", "run_id", id, "sub_status", sub, "generation", "1.29") })
	}
	return nil
}

// UpdateRunStatus implements state.LinkState.
func (s *State) UpdateRunStatus(ctx context.Context, runID uint64, next *flwr129.RunStatus) error {
	return s.linkWrite(ctx, "UpdateRunStatus", func(tx *txn, now float64, ops *linkOps) error {
		rr, err := s.linkRun(ctx, tx, runID, now, true)
		if err != nil {
			return err
		}
		return s.setStatus(ctx, tx, ops, rr, next, now)
	})
}

// StopRun implements state.LinkState.
func (s *State) StopRun(ctx context.Context, runID uint64) (bool, error) {
	err := s.linkWrite(ctx, "StopRun", func(tx *txn, now float64, ops *linkOps) error {
		rr, err := s.linkRun(ctx, tx, runID, now, true)
		if err != nil {
			return err
		}
		if rr.r.Status.Status == state.StatusFinished {
			return status.Errorf(codes.FailedPrecondition, "Run ID %d is already finished", runID)
		}
		return s.setStatus(ctx, tx, ops, rr, &flwr129.RunStatus{Status: state.StatusFinished, SubStatus: state.SubStatusStopped}, now)
	})
	return err == nil, err
}

// RequestToken implements state.LinkState.
func (s *State) RequestToken(ctx context.Context, runID uint64) (string, error) {
	var tok string
	err := s.linkWrite(ctx, "RequestToken", func(tx *txn, now float64, ops *linkOps) error {
		tok = ""
		rr, err := s.linkRun(ctx, tx, runID, now, true)
		if status.Code(err) == codes.NotFound {
			return nil
		}
		if err != nil || rr.token != "" || rr.r.Status.Status != state.StatusPending {
			return err
		}
		t, err := linkrules.RandomToken(s.rand)
		if err != nil {
			return err
		}
		if err := s.setStatus(ctx, tx, ops, rr, &flwr129.RunStatus{Status: state.StatusStarting}, now); err != nil {
			return nil
		}
		tok = t
		_, err = tx.ExecContext(ctx, `UPDATE link_runs SET token = $1, token_until = $2 WHERE id = $3`, tok, now+state.HeartbeatDefaultInterval, dbID(runID))
		return err
	})
	if err != nil {
		return "", err
	}
	return tok, nil
}

// liveToken is the condition on link_runs of a live token $1 at $2.
const liveToken = `token = $1 AND token <> '' AND status <> 'finished' AND token_until >= $2`

// RunOfToken implements state.LinkState.
func (s *State) RunOfToken(ctx context.Context, token string) (uint64, bool, error) {
	var id int64
	found := false
	err := s.linkRead(ctx, "RunOfToken", func(tx *txn, now float64) error {
		err := tx.QueryRowContext(ctx, `SELECT id FROM link_runs WHERE `+liveToken, token, now).Scan(&id)
		found = err == nil
		if err == sql.ErrNoRows {
			return nil
		}
		return err
	})
	return uint64(id), found && err == nil, err
}

// AppHeartbeat implements state.LinkState.
func (s *State) AppHeartbeat(ctx context.Context, token string) (bool, error) {
	found := false
	err := s.linkWrite(ctx, "AppHeartbeat", func(tx *txn, now float64, ops *linkOps) error {
		res, err := tx.ExecContext(ctx, `UPDATE link_runs SET token_until = $3 WHERE `+liveToken,
			token, now, now+state.HeartbeatPatience*state.HeartbeatDefaultInterval)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		found = n == 1
		return err
	})
	return found && err == nil, err
}

// StartApp implements state.LinkState.
func (s *State) StartApp(ctx context.Context, runID uint64) (*flwr129.Context, *flwr129.Run, *flwr129.Fab, error) {
	var c *flwr129.Context
	var r *flwr129.Run
	var f *flwr129.Fab
	err := s.linkWrite(ctx, "StartApp", func(tx *txn, now float64, ops *linkOps) error {
		fail := status.Errorf(codes.FailedPrecondition, "Failed to start run %d", runID)
		rr, err := s.linkRun(ctx, tx, runID, now, true)
		if status.Code(err) == codes.NotFound {
			return fail
		}
		if err != nil {
			return err
		}
		if f, err = s.fab(ctx, tx, rr.r.FabHash); status.Code(err) == codes.NotFound {
			return fail
		} else if err != nil {
			return err
		}
		again := rr.r.Status.Status == state.StatusRunning // the ServerApp asks again
		if !again {
			if err := s.setStatus(ctx, tx, ops, rr, &flwr129.RunStatus{Status: state.StatusRunning}, now); err != nil {
				return fail
			}
			ops.then(func() { s.log.Info("run started", "run_id", runID, "generation", "1.29") })
		}
		var b []byte
		if err := tx.QueryRowContext(ctx, `SELECT context FROM link_runs WHERE id = $1`, dbID(runID)).Scan(&b); err != nil {
			return err
		}
		c = &flwr129.Context{}
		if err := proto.Unmarshal(b, c); err != nil {
			return err
		}
		r = rr.r
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	return c, r, f, nil
}

// SetAppContext implements state.LinkState.
func (s *State) SetAppContext(ctx context.Context, runID uint64, c *flwr129.Context) error {
	b, err := proto.Marshal(c)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "the context: %v", err)
	}
	return s.linkWrite(ctx, "SetAppContext", func(tx *txn, now float64, ops *linkOps) error {
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `UPDATE link_runs SET context = $1 WHERE id = $2`, b, dbID(runID))
		return err
	})
}

// PushLogs implements state.LinkState. The run's row is locked, so that
// the stamps of a run increase in the order its lines commit, whichever
// replica writes them.
func (s *State) PushLogs(ctx context.Context, runID uint64, text string) error {
	return s.linkWrite(ctx, "PushLogs", func(tx *txn, now float64, ops *linkOps) error {
		if _, err := s.linkRun(ctx, tx, runID, now, true); err != nil {
			return err
		}
		var last float64
		if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(at), 0) FROM link_logs WHERE run_id = $1`, dbID(runID)).Scan(&last); err != nil {
			return err
		}
		at := now
		for _, text := range linkrules.SplitLog(text) {
			if last >= at {
				at = last + linkrules.LogStampStep // stamps strictly increase, so that "after" never skips a line
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO link_logs (run_id, at, text) VALUES ($1, $2, $3)`, dbID(runID), at, []byte(text)); err != nil {
				return err
			}
			last = at
		}
		var total int64
		if err := tx.QueryRowContext(ctx, `UPDATE link_runs SET log_bytes = log_bytes + $1 WHERE id = $2 RETURNING log_bytes`, len(text), dbID(runID)).Scan(&total); err != nil {
			return err
		}
		if total <= linkrules.MaxLogBytes {
			return nil
		}
		return s.trimLogs(ctx, tx, runID, total)
	})
}

// trimLogs drops a run's oldest output until it holds at most
// linkrules.MaxLogBytes, keeping the last entry.
func (s *State) trimLogs(ctx context.Context, tx *txn, runID uint64, total int64) error {
	rows, err := tx.QueryContext(ctx, `SELECT seq, length(text) FROM link_logs WHERE run_id = $1 ORDER BY seq`, dbID(runID))
	if err != nil {
		return err
	}
	type entry struct{ seq, n int64 }
	var list []entry
	for rows.Next() {
		var e entry
		if err := rows.Scan(&e.seq, &e.n); err != nil {
			rows.Close()
			return err
		}
		list = append(list, e)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	for len(list) > 1 && total > linkrules.MaxLogBytes {
		if _, err := tx.ExecContext(ctx, `DELETE FROM link_logs WHERE seq = $1`, list[0].seq); err != nil {
			return err
		}
		total -= list[0].n
		list = list[1:]
	}
	_, err = tx.ExecContext(ctx, `UPDATE link_runs SET log_bytes = $1 WHERE id = $2`, total, dbID(runID))
	return err
}

// Logs implements state.LinkState.
func (s *State) Logs(ctx context.Context, runID uint64, after float64, max int) (string, float64, bool, error) {
	var text []byte
	var latest float64
	var finished bool
	err := s.linkRead(ctx, "Logs", func(tx *txn, now float64) error {
		text, latest = nil, 0
		rr, err := s.linkRun(ctx, tx, runID, now, false)
		if err != nil {
			return err
		}
		finished = rr.r.Status.Status == state.StatusFinished
		rows, err := tx.QueryContext(ctx, `SELECT text, at FROM link_logs WHERE run_id = $1 AND at > $2 ORDER BY seq`, dbID(runID), after)
		if err != nil {
			return err
		}
		defer rows.Close()
		for n := 0; rows.Next(); n++ {
			var b sql.RawBytes
			var at float64
			if err := rows.Scan(&b, &at); err != nil {
				return err
			}
			if max > 0 && n > 0 && len(text)+len(b) > max {
				finished = false // more to come
				break
			}
			text = append(text, b...)
			latest = at
		}
		return rows.Err()
	})
	return string(text), latest, finished, err
}

// OnlineNodes implements state.LinkState.
func (s *State) OnlineNodes(ctx context.Context, runID uint64) ([]uint64, error) {
	var out []uint64
	err := s.linkRead(ctx, "OnlineNodes", func(tx *txn, now float64) error {
		out = nil
		if _, err := s.runningRun(ctx, tx, runID, now); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT id FROM link_nodes WHERE status = $1 AND online_until > $2 ORDER BY seq`, state.NodeOnline, now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return err
			}
			out = append(out, uint64(id))
		}
		return rows.Err()
	})
	return out, err
}

// LinkStats implements state.LinkState.
func (s *State) LinkStats(ctx context.Context) (state.LinkStats, error) {
	var st state.LinkStats
	err := s.linkRead(ctx, "LinkStats", func(tx *txn, now float64) error {
		st = state.LinkStats{Runs: map[string]int{}}
		var ins, replies int
		if err := tx.QueryRowContext(ctx, `SELECT
			(SELECT COUNT(*) FROM link_nodes),
			(SELECT COUNT(*) FROM link_nodes WHERE status = 'online' AND online_until > $1),
			(SELECT COUNT(*) FROM link_ins),
			(SELECT COUNT(*) FROM link_replies),
			(SELECT COUNT(*) FROM link_objects),
			(SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM link_objects WHERE available = 1)`, now).
			Scan(&st.Nodes, &st.NodesOnline, &ins, &replies, &st.Objects, &st.ObjectBytes); err != nil {
			return err
		}
		st.Messages = ins + replies
		rows, err := tx.QueryContext(ctx, `SELECT `+linkStatusSQL+`, COUNT(*) FROM link_runs GROUP BY 1`, now)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var n int
			if err := rows.Scan(&k, &n); err != nil {
				return err
			}
			st.Runs[k] = n
		}
		return rows.Err()
	})
	return st, err
}
