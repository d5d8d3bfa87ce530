// Package sqlstate is the SuperLink state in a SQL database, both
// generations (state.State and, in link.go, state.LinkState): SQLite (a
// file, through a pure-Go driver: OpenSQLite) or PostgreSQL (through pgx:
// OpenPostgres), with one SQL text for both; a dialect adds what differs.
// Everything lives in the database: every call is one transaction,
// committed before it returns, and nothing that matters is kept only in
// the process, so the state survives a restart or a crash of the
// SuperLink, and several processes may share one database, as replicas
// of one SuperLink (replicas.go): any answers any call, and a TaskIns
// still goes to exactly one node.
//
// The schema is created and upgraded by the State itself, from numbered
// migrations embedded in the binary (migrations/): in SQLite recorded in
// the table schema_migrations, in PostgreSQL through internal/postgres's
// Schema (the table sepal_schema, under a lock, as the ACME storage's); a
// database of a newer schema is refused. Parameter arrays are stored once
// by content, in chunks (see blobs.go).
package sqlstate

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/linkrules"
	"github.com/sepal-fl/sepal/state/internal/rules"
)

// Options configure a State (state.Options). The zero value is ready to
// use.
type Options = state.Options

// State is the SQL state.State. It is safe for concurrent use, and several
// States (in one process or several) may share one database.
type State struct {
	db    *sql.DB
	d     *dialect
	name  string // the database, as messages name it (a file path, a redacted URL)
	log   *slog.Logger
	ev    rules.Events
	now   func() time.Time
	rand  io.Reader
	cache *blobCache
	lim   state.LinkLimits
	// sigs keeps the node signatures that served calls in the process,
	// where one process owns the database (SQLite); nil where replicas
	// share them in link_signatures, which a SuperLink purges at most once
	// a second (sigPurged, in seconds).
	sigs      *linkrules.Signatures
	sigPurged atomic.Int64
	// replica is this State's id among the States on the database, and
	// locker holds what shows it alive, if the dialect needs that (see
	// replicas.go).
	replica atomic.Int64
	locker  replicaLocker

	// wmu serialises this process's write transactions where the database
	// takes one writer at a time anyway (SQLite): waiting here is cheaper
	// and fairer than SQLite's busy handler.
	wmu       sync.Mutex
	undo      undoQueue
	outage    outageWatch
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	onClose   func() error

	failMu   sync.Mutex
	lastFail string
	lastLog  time.Time

	// file watches a SQLite file for its deletion or replacement (nil
	// for PostgreSQL).
	file *fileWatch
}

var (
	_ state.State      = (*State)(nil)
	_ state.BlobFinder = (*State)(nil)
)

// newState returns a State on db, whose schema is current, before it
// joins the database (join).
func newState(db *sql.DB, d *dialect, name string, o Options) *State {
	o = o.WithDefaults()
	s := &State{db: db, d: d, name: name, log: o.Logger, ev: rules.Events{Log: o.Logger}, now: o.Now, rand: o.Rand, cache: newBlobCache(o.Now), lim: o.Link}
	if d.ownsDatabase {
		s.sigs = linkrules.NewSignatures(o.Link.MaxSignatures)
	}
	return s
}

func micro(t time.Time) int64     { return t.UnixMicro() }
func fromMicro(v int64) time.Time { return time.UnixMicro(v) }
func nowMicro() int64             { return time.Now().UnixMicro() }

// FindBlob returns an array the process holds, for the codec
// (state.BlobFinder).
func (s *State) FindBlob(hash uint64, n int, eq func([]byte) bool) []byte {
	return s.cache.find(hash, n, eq)
}

// NoteBlob records the hash the codec computed for an array it decoded
// (state.BlobFinder).
func (s *State) NoteBlob(b []byte, hash uint64) { s.cache.hashes.NoteBlob(b, hash) }

var errClosed = status.Error(codes.Unavailable, "the SuperLink is stopping: its state is closed")

// txFunc is the body of one call's transaction. after runs once it has
// committed (logging, the cache).
type txFunc func(tx *txn) (after func(), err error)

// write runs fn in a write transaction and commits it; method names the
// RPC in errors.
func (s *State) write(ctx context.Context, method string, fn txFunc) error {
	err, _ := s.writeMaybe(ctx, method, fn)
	return err
}

// writeMaybe is write, also saying, when it fails, whether the failure
// came from the commit itself: the transaction may then have been
// committed though the call fails (the connection broke while committing).
func (s *State) writeMaybe(ctx context.Context, method string, fn txFunc) (err error, maybeCommitted bool) {
	if s.d.serializeWrites {
		s.wmu.Lock()
		defer s.wmu.Unlock()
	}
	s.endOutage(ctx)
	return s.run(ctx, method, nil, fn)
}

// read runs fn in a read-only transaction.
func (s *State) read(ctx context.Context, method string, fn func(tx *txn) error) error {
	err, _ := s.run(ctx, method, s.d.readOnly, func(tx *txn) (func(), error) { return nil, fn(tx) })
	return err
}

func (s *State) run(ctx context.Context, method string, opts *sql.TxOptions, fn txFunc) (error, bool) {
	for attempt := 1; ; attempt++ {
		err, committing := s.runOnce(ctx, opts, fn)
		if err == nil {
			return nil, false
		}
		if _, ok := status.FromError(err); ok {
			return err, false
		}
		// A transaction the database rolled back whole (a deadlock
		// between replicas, say), or one whose connection broke before
		// it committed (the server restarted since it was last used),
		// runs again, after a short random pause.
		if s.d.retry != nil && attempt < maxAttempts && ctx.Err() == nil {
			if again, ok := s.d.retry(err, committing); ok && attempt <= again {
				time.Sleep(time.Duration(attempt) * time.Duration(1+rand.IntN(5)) * time.Millisecond)
				continue
			}
		}
		return s.fail(method, err, committing), committing
	}
}

// maxAttempts bounds the runs of a transaction that keeps conflicting.
const maxAttempts = 8

// txn is one transaction of a call, and the connection it runs on, for
// what a dialect does through the driver itself (dialect.writeChunks).
type txn struct {
	*sql.Tx
	conn *sql.Conn
}

// runOnce runs fn in one transaction. Status errors of fn come back as
// they are, with the transaction rolled back. committing is true when err
// came from the commit (whose outcome is then unknown).
func (s *State) runOnce(ctx context.Context, opts *sql.TxOptions, fn txFunc) (err error, committing bool) {
	if s.closed.Load() {
		return errClosed, false
	}
	if s.file != nil {
		if err := s.file.err(); err != nil {
			return err, false // lost: nothing is read from it or written to it
		}
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err, false
	}
	defer conn.Close()
	sqlTx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		return err, false
	}
	tx := &txn{Tx: sqlTx, conn: conn}
	after, err := fn(tx)
	if err != nil {
		tx.Rollback()
		return err, false
	}
	if opts == nil && s.file != nil {
		// A write commits only to the file at the path, never to one
		// deleted or replaced since the last look.
		if err := s.file.check(); err != nil {
			tx.Rollback()
			return err, false
		}
	}
	if err := tx.Commit(); err != nil {
		return err, true
	}
	s.outage.committed(micro(s.now()))
	if after != nil {
		after()
	}
	return nil, false
}

// fail turns a database error into a status error, and logs it (the same
// failure at most every 10 seconds).
func (s *State) fail(method string, err error, committing bool) error {
	code, ok := classifyContext(err)
	hint := ""
	if !ok {
		code, hint = s.d.classify(err)
	}
	s.outage.failed(code)
	if code != codes.Canceled && code != codes.DeadlineExceeded {
		msg := err.Error()
		s.failMu.Lock()
		now := time.Now()
		if msg != s.lastFail || now.Sub(s.lastLog) > 10*time.Second {
			s.lastFail, s.lastLog = msg, now
			what := "state database failed; the call was not committed"
			if committing {
				what = "state database failed while committing; the call may have been committed or not (a retry is safe)"
			}
			s.log.Error(what, "database", s.name, "method", method, "error", msg, "hint", hint)
		}
		s.failMu.Unlock()
	}
	if hint != "" {
		hint = ": " + hint
	}
	return status.Errorf(code, "%s: the state database %s: %v%s", method, s.name, err, hint)
}

// CreateNode registers a node, within nn's limits.
func (s *State) CreateNode(ctx context.Context, nn state.NewNode) (int64, error) {
	d, err := rules.CheckPingInterval(nn.PingInterval)
	if err != nil {
		return 0, err
	}
	now := s.now()
	var id int64
	err = s.write(ctx, "CreateNode", func(tx *txn) (func(), error) {
		room, err := s.room(ctx, tx, nn, now)
		if err != nil {
			return nil, err
		}
		for _, e := range room {
			if _, _, err := s.forgetNode(ctx, tx, e.ID); err != nil {
				return nil, err
			}
		}
		for {
			if id, err = rules.RandomID(s.rand, nil); err != nil {
				return nil, err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO nodes (id, identity, certificate, ping_interval, created_at, online_until) VALUES ($1, $2, $3, $4, $5, $6)
				ON CONFLICT (id) DO NOTHING`, id, nn.Identity, nn.Certificate, nn.PingInterval, micro(now), micro(now.Add(d)))
			if err != nil {
				return nil, err
			}
			if n, err := res.RowsAffected(); err != nil || n == 1 {
				return func() {
					for _, e := range room {
						s.ev.NodeEvicted(e)
					}
					s.ev.NodeJoined(id, nn.PingInterval, nn.Identity)
				}, err
			}
		}
	})
	return id, err
}

// room returns the nodes to forget so that nn fits its limits at now (none
// when it fits as things are), or the *state.NodeLimitError of a limit
// whose nodes are all online. With a limit, it first locks the row
// 'node_admission' of meta, so that the States on the database admit
// nodes one at a time and each counts what the one before committed.
func (s *State) room(ctx context.Context, tx *txn, nn state.NewNode, now time.Time) ([]state.Evicted, error) {
	perIdentity := nn.MaxPerIdentity > 0 && nn.Identity != ""
	if !perIdentity && nn.MaxNodes <= 0 {
		return nil, nil
	}
	var v int64
	if err := tx.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'node_admission'`+s.d.forUpdate).Scan(&v); err != nil {
		return nil, err
	}
	// offlineLongest finds the node offline the longest of those cond
	// selects, other than not.
	offlineLongest := func(cond string, not int64, args ...any) (state.Evicted, bool, error) {
		var e state.Evicted
		args = append([]any{micro(now), not}, args...)
		err := tx.QueryRowContext(ctx, `SELECT id, ping_interval FROM nodes WHERE online_until <= $1 AND id <> $2`+cond+
			` ORDER BY online_until, seq LIMIT 1`, args...).Scan(&e.ID, &e.PingInterval)
		if err == sql.ErrNoRows {
			return e, false, nil
		}
		return e, err == nil, err
	}
	var out []state.Evicted
	var total int
	if nn.MaxNodes > 0 {
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM nodes`).Scan(&total); err != nil {
			return nil, err
		}
	}
	if perIdentity {
		var count int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM nodes WHERE identity = $1`, nn.Identity).Scan(&count); err != nil {
			return nil, err
		}
		if count >= nn.MaxPerIdentity {
			e, ok, err := offlineLongest(` AND identity = $3`, 0, nn.Identity)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, &state.NodeLimitError{Limit: state.LimitMaxPerIdentity, Max: nn.MaxPerIdentity, Identity: nn.Identity}
			}
			e.Limit = state.LimitMaxPerIdentity
			out = append(out, e)
			total--
		}
	}
	if nn.MaxNodes > 0 && total >= nn.MaxNodes {
		var not int64
		if len(out) > 0 {
			not = out[0].ID
		}
		e, ok, err := offlineLongest("", not)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, &state.NodeLimitError{Limit: state.LimitMaxNodes, Max: nn.MaxNodes}
		}
		e.Limit = state.LimitMaxNodes
		out = append(out, e)
	}
	return out, nil
}

// forgetNode deletes node id, as DeleteNode does, and returns the number
// of its TaskIns it never pulled (0, without error, when it is gone
// already: found reports whether it was there). Its undelivered TaskIns
// stay: the next PullTaskRes for them answers with the NODE_UNAVAILABLE
// result (the pairs are forgotten once the run's ServerApp no longer asks
// for them).
func (s *State) forgetNode(ctx context.Context, tx *txn, id int64) (found bool, undelivered int, err error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE id = $1`, id)
	if err != nil {
		return false, 0, err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, 0, err
	}
	err = tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM task_ins WHERE consumer = $1 AND delivered_at IS NULL`, id).Scan(&undelivered)
	return true, undelivered, err
}

// nodeIdentity returns the identity a node was created with; ok is false
// for an unknown node.
func (s *State) nodeIdentity(ctx context.Context, tx *txn, id int64) (identity string, ok bool, err error) {
	err = tx.QueryRowContext(ctx, `SELECT identity FROM nodes WHERE id = $1`+s.d.forUpdate, id).Scan(&identity)
	if err == sql.ErrNoRows {
		return "", false, nil
	}
	return identity, err == nil, err
}

// DeleteNode forgets a node.
func (s *State) DeleteNode(ctx context.Context, id int64, identity string) error {
	return s.write(ctx, "DeleteNode", func(tx *txn) (func(), error) {
		var known string
		var pi float64
		err := tx.QueryRowContext(ctx, `SELECT identity, ping_interval FROM nodes WHERE id = $1`+s.d.forUpdate, id).Scan(&known, &pi)
		if err == sql.ErrNoRows {
			return nil, rules.ErrNodeNotFound(id)
		}
		if err != nil {
			return nil, err
		}
		if err := rules.CheckIdentity("DeleteNode", id, identity, known); err != nil {
			return nil, err
		}
		_, undelivered, err := s.forgetNode(ctx, tx, id)
		if err != nil {
			return nil, err
		}
		return func() { s.ev.NodeDeleted(id, pi, undelivered) }, nil
	})
}

// RevokeNodes forgets the nodes created with a certificate revoked.
func (s *State) RevokeNodes(ctx context.Context, revoked func(string) bool) ([]int64, error) {
	var gone []state.Revoked
	err := s.write(ctx, "RevokeNodes", func(tx *txn) (func(), error) {
		gone = nil
		rows, err := tx.QueryContext(ctx, `SELECT id, identity, certificate, ping_interval FROM nodes WHERE certificate <> '' ORDER BY seq`)
		if err != nil {
			return nil, err
		}
		var match []state.Revoked
		for rows.Next() {
			var r state.Revoked
			if err := rows.Scan(&r.ID, &r.Identity, &r.Certificate, &r.PingInterval); err != nil {
				rows.Close()
				return nil, err
			}
			if revoked(r.Certificate) {
				match = append(match, r)
			}
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		for _, r := range match {
			found, u, err := s.forgetNode(ctx, tx, r.ID)
			if err != nil {
				return nil, err
			}
			if found { // not forgotten by another State meanwhile
				r.Undelivered = u
				gone = append(gone, r)
			}
		}
		return func() {
			for _, r := range gone {
				s.ev.NodeRevoked(r)
			}
		}, nil
	})
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(gone))
	for i, r := range gone {
		ids[i] = r.ID
	}
	return ids, nil
}

// Ping refreshes a node's liveness; false for an unknown node.
func (s *State) Ping(ctx context.Context, id int64, pingInterval float64, identity string) (bool, error) {
	d, err := rules.CheckPingInterval(pingInterval)
	if err != nil {
		return false, err
	}
	now := s.now()
	found := false
	err = s.write(ctx, "Ping", func(tx *txn) (func(), error) {
		var known string
		var offline int
		err := tx.QueryRowContext(ctx, `SELECT identity, offline FROM nodes WHERE id = $1`+s.d.forUpdate, id).Scan(&known, &offline)
		if err == sql.ErrNoRows {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if err := rules.CheckIdentity("Ping", id, identity, known); err != nil {
			return nil, err
		}
		found = true
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET online_until = $1, ping_interval = $2, offline = 0 WHERE id = $3`,
			micro(now.Add(d)), pingInterval, id); err != nil {
			return nil, err
		}
		if offline == 0 {
			return nil, nil
		}
		return func() { s.ev.NodeBack(id, pingInterval) }, nil
	})
	return found, err
}

// missedPing is a node found offline for the first time.
type missedPing struct {
	id int64
	pi float64
}

// noticeOffline marks the nodes past their ping interval at now as offline
// and returns those newly marked, to be logged once committed.
func (s *State) noticeOffline(ctx context.Context, tx *txn, now time.Time) ([]missedPing, error) {
	rows, err := tx.QueryContext(ctx, `UPDATE nodes SET offline = 1 WHERE offline = 0 AND online_until <= $1 RETURNING id, ping_interval`, micro(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []missedPing
	for rows.Next() {
		var m missedPing
		if err := rows.Scan(&m.id, &m.pi); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

func (s *State) logMissed(ms []missedPing) {
	for _, m := range ms {
		s.ev.NodeMissedPing(m.id, m.pi)
	}
}

// Sweep notices nodes that missed their ping, forgets tasks past ttl +
// ExpiryGrace and the "already answered" memory of the same age, fails the
// 1.29 runs whose ServerApp went silent and forgets the 1.29 messages past
// their TTL, and records that a SuperLink was running now (the restart
// grace counts from the last such record).
func (s *State) Sweep(ctx context.Context) error {
	now := s.now()
	err := s.write(ctx, "Sweep", func(tx *txn) (func(), error) {
		missed, err := s.noticeOffline(ctx, tx, now)
		if err != nil {
			return nil, err
		}
		ops := &linkOps{} // the 1.29 generation's expiry, when no call did it
		if err := s.linkExpire(ctx, tx, linkrules.Seconds(now), ops); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM gone WHERE until_at < $1`, micro(now)); err != nil {
			return nil, err
		}
		type expired struct {
			id                  string
			run                 int64
			delivered, answered bool
		}
		rows, err := tx.QueryContext(ctx, `SELECT id, run_id, delivered_at IS NOT NULL, answered FROM task_ins WHERE expires_at < $1`+s.d.forUpdate+s.d.skipLocked, micro(now))
		if err != nil {
			return nil, err
		}
		var list []expired
		for rows.Next() {
			var e expired
			if err := rows.Scan(&e.id, &e.run, &e.delivered, &e.answered); err != nil {
				rows.Close()
				return nil, err
			}
			list = append(list, e)
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		var released []sum
		for _, e := range list {
			gone, err := s.deletePair(ctx, tx, e.id)
			if err != nil {
				return nil, err
			}
			released = append(released, gone...)
		}
		if err := s.heartbeat(ctx, tx, now); err != nil {
			return nil, err
		}
		if err := s.forgetDeadReplicas(ctx, tx); err != nil {
			return nil, err
		}
		return func() {
			s.logMissed(missed)
			for _, e := range list {
				id, _ := uuid.Parse(e.id)
				s.ev.TaskExpired(id, e.run, e.delivered, e.answered)
			}
			s.ev.TasksExpired(len(list))
			s.cache.release(released)
			ops.done(s)
			s.cache.sweep()
		}, nil
	})
	return err
}

// heartbeat records that a SuperLink was running at now (each replica
// records its time; the latest stays).
func (s *State) heartbeat(ctx context.Context, tx *txn, now time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('heartbeat', $1)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE excluded.value > meta.value`, micro(now))
	return err
}

// CreateRun creates a run.
func (s *State) CreateRun(ctx context.Context) (int64, error) {
	now := s.now()
	var id int64
	err := s.write(ctx, "CreateRun", func(tx *txn) (func(), error) {
		for {
			var err error
			if id, err = rules.RandomID(s.rand, nil); err != nil {
				return nil, err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO runs (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, id, micro(now))
			if err != nil {
				return nil, err
			}
			if n, err := res.RowsAffected(); err != nil || n == 1 {
				return func() { s.ev.RunCreated(id) }, err
			}
		}
	})
	return id, err
}

func (s *State) runExists(ctx context.Context, tx *txn, id int64) (bool, error) {
	var one int
	err := tx.QueryRowContext(ctx, `SELECT 1 FROM runs WHERE id = $1`, id).Scan(&one)
	if err == sql.ErrNoRows {
		return false, nil
	}
	return err == nil, err
}

// GetNodes returns the online nodes in join order, or nothing for an
// unknown run (as 1.8.0).
func (s *State) GetNodes(ctx context.Context, runID int64) ([]*flwrproto.Node, error) {
	now := s.now()
	var out []*flwrproto.Node
	err := s.write(ctx, "GetNodes", func(tx *txn) (func(), error) {
		out = nil
		if ok, err := s.runExists(ctx, tx, runID); !ok || err != nil {
			return nil, err
		}
		missed, err := s.noticeOffline(ctx, tx, now)
		if err != nil {
			return nil, err
		}
		rows, err := tx.QueryContext(ctx, `SELECT id FROM nodes WHERE online_until > $1 ORDER BY seq`, micro(now))
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				return nil, err
			}
			out = append(out, &flwrproto.Node{NodeId: id})
		}
		return func() { s.logMissed(missed) }, rows.Err()
	})
	return out, err
}

// PushTaskIns validates every TaskIns, then stores them all or none.
func (s *State) PushTaskIns(ctx context.Context, list []*flwrproto.TaskIns) ([]string, error) {
	if err := rules.ValidateTaskInsList(list); err != nil {
		return nil, err
	}
	// Ids, times, hashes and encoding before the transaction.
	now := s.now()
	pushed := rules.Seconds(now)
	ids := make([]string, len(list))
	refs := make([][]blobRef, len(list))
	msgs := make([][]byte, len(list))
	for i, t := range list {
		id, err := rules.NewTaskID(s.rand)
		if err != nil {
			return nil, err
		}
		t.TaskId, ids[i] = id.String(), id.String()
		t.Task.PushedAt = pushed
		refs[i] = s.cache.prepareBlobs(t.Task.Recordset)
		if msgs[i], err = proto.Marshal(t); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "PushTaskIns: task_ins_list[%d]: %v", i, err)
		}
	}
	err := s.write(ctx, "PushTaskIns", func(tx *txn) (func(), error) {
		identities := make([]string, len(list))
		for i, t := range list {
			if ok, err := s.runExists(ctx, tx, t.RunId); err != nil {
				return nil, err
			} else if !ok {
				return nil, rules.ErrRunNotFound(i, t.RunId)
			}
			c := t.Task.Consumer.NodeId
			identity, ok, err := s.nodeIdentity(ctx, tx, c)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, rules.ErrConsumerNotFound(i, c)
			}
			identities[i] = identity
		}
		for i, t := range list {
			if _, err := tx.ExecContext(ctx, `INSERT INTO task_ins (id, run_id, consumer, consumer_identity, expires_at, msg) VALUES ($1, $2, $3, $4, $5, $6)`,
				ids[i], t.RunId, t.Task.Consumer.NodeId, identities[i], micro(rules.Expiry(now, t.Task.Ttl)), msgs[i]); err != nil {
				return nil, err
			}
			if err := s.putBlobs(ctx, tx, ids[i], 0, refs[i]); err != nil {
				return nil, err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE runs SET last_group = $1, ins_pushed = ins_pushed + 1 WHERE id = $2`, t.GroupId, t.RunId); err != nil {
				return nil, err
			}
		}
		return func() { s.keep(refs) }, nil
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// keep puts the arrays just stored into the cache.
func (s *State) keep(refs [][]blobRef) {
	for _, rs := range refs {
		for _, r := range rs {
			s.cache.put(r.sum, r.data)
		}
	}
}

// PullTaskIns hands at most one undelivered TaskIns to node id, marking it
// delivered so that it is never handed out again, by any State on the
// database. A TaskIns already answered (NODE_UNAVAILABLE, made up while
// its node was away) is not handed out.
//
// One exception, for crashes: a TaskIns delivered to the node by a State
// that is no longer alive (it closed, or its process died: replicas.go),
// and not answered, is handed to the same node again when it asks. A node
// asks only when it has no task (a SuperNode pulls, answers, then pulls
// again), so it did not get that one: the SuperLink stopped after
// committing the delivery and before the response reached the node. So is
// one whose delivery's commit failed with the connection (undeliver.go).
func (s *State) PullTaskIns(ctx context.Context, id int64, identity string) ([]*flwrproto.TaskIns, error) {
	now := s.now()
	me := s.replica.Load()
	var out []*flwrproto.TaskIns
	var taken int64 // the seq of the TaskIns delivered, 0 for none
	err, maybe := s.writeMaybe(ctx, "PullTaskIns", func(tx *txn) (func(), error) {
		out, taken = nil, 0
		undid, err := s.undeliver(ctx, tx)
		if err != nil {
			return nil, err
		}
		after := func() { s.undelivered(undid) }
		known, ok, err := s.nodeIdentity(ctx, tx, id)
		if err != nil || !ok {
			return after, err
		}
		if err := rules.CheckIdentity("PullTaskIns", id, identity, known); err != nil {
			return nil, err
		}
		for attempt := 1; ; attempt++ {
			var seq int64
			var by sql.NullInt64 // the replica that delivered it before
			err := tx.QueryRowContext(ctx, `SELECT seq, delivered_by FROM task_ins WHERE consumer = $1 AND delivered_at IS NOT NULL AND answered = 0
				AND NOT `+s.d.aliveSQL("task_ins.delivered_by")+` ORDER BY seq LIMIT 1`+s.d.forUpdate+s.d.skipLocked, id).Scan(&seq, &by)
			again := err == nil
			if err == sql.ErrNoRows {
				// answered = 0: a TaskIns answered NODE_UNAVAILABLE while
				// its node was away is not delivered when the node is back.
				err = tx.QueryRowContext(ctx, `SELECT seq FROM task_ins WHERE consumer = $1 AND delivered_at IS NULL AND answered = 0 ORDER BY seq LIMIT 1`+s.d.forUpdate+s.d.skipLocked, id).Scan(&seq)
			}
			if err == sql.ErrNoRows {
				return after, nil
			}
			if err != nil {
				return nil, err
			}
			var tid string
			var msg []byte
			err = tx.QueryRowContext(ctx, `UPDATE task_ins SET delivered_at = $1, delivered_by = $2
				WHERE seq = $3 AND answered = 0 AND (delivered_at IS NULL OR NOT `+s.d.aliveSQL("task_ins.delivered_by")+`)
				RETURNING id, msg`, micro(now), me, seq).Scan(&tid, &msg)
			if err == sql.ErrNoRows {
				// The row is locked (SQLite: this transaction is the only
				// writer; PostgreSQL: FOR UPDATE) and matched the SELECT,
				// so only the liveness of the replica that delivered it
				// before can have changed (a PostgreSQL replica whose lock
				// was lost takes it again), and the next SELECT sees that.
				// Anything else is a bug: fail rather than loop on the row.
				if attempt < pickAttempts {
					continue
				}
				return nil, status.Errorf(codes.Internal, "PullTaskIns: node %d: TaskIns seq %d matched the query that picks it %d times but never the update that delivers it", id, seq, attempt)
			}
			if err != nil {
				return nil, err
			}
			t := &flwrproto.TaskIns{}
			if err := proto.Unmarshal(msg, t); err != nil {
				return nil, err
			}
			if err := s.getBlobs(ctx, tx, tid, 0, t.GetTask().GetRecordset()); err != nil {
				return nil, err
			}
			t.Task.DeliveredAt = rules.DeliveredAt(now)
			out, taken = []*flwrproto.TaskIns{t}, seq
			if again {
				return func() {
					after()
					s.log.Info("task delivered again: its node asks for work without having answered it, so the response was lost when the SuperLink that sent it stopped",
						"task_id", tid, "node_id", id, "delivered_by_replica", by.Int64)
				}, nil
			}
			return after, nil
		}
	})
	if err != nil && maybe && taken != 0 {
		// The delivery may be committed, and the node is told it failed:
		// make the TaskIns deliverable again, once the database answers.
		s.undeliverLater(undelivery{seq: taken, at: micro(now), by: me})
	}
	return out, err
}

// pickAttempts bounds the TaskIns a PullTaskIns picks that its update then
// does not match (see PullTaskIns).
const pickAttempts = 4

// PushTaskRes validates every TaskRes against the TaskIns it answers, then
// stores them all or none.
func (s *State) PushTaskRes(ctx context.Context, list []*flwrproto.TaskRes, identity string) (map[string]uint32, error) {
	parents, err := rules.ValidateTaskResList(list)
	if err != nil {
		return nil, err
	}
	pushed := rules.Seconds(s.now())
	refs := make([][]blobRef, len(list))
	msgs := make([][]byte, len(list))
	ids := make([]string, len(list))
	for i, t := range list {
		id, err := rules.NewTaskID(s.rand)
		if err != nil {
			return nil, err
		}
		ids[i] = id.String()
		t.TaskId = ids[i]
		t.Task.PushedAt = pushed
		refs[i] = s.cache.prepareBlobs(t.Task.Recordset)
		if msgs[i], err = proto.Marshal(t); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "PushTaskRes: task_res_list[%d]: %v", i, err)
		}
	}
	results := make(map[string]uint32, len(list))
	err = s.write(ctx, "PushTaskRes", func(tx *txn) (func(), error) {
		seen := map[uuid.UUID]bool{}
		late := make([]bool, len(list)) // accepted, not stored
		for i, t := range list {
			p := parents[i].String()
			var f rules.ParentFacts
			err := tx.QueryRowContext(ctx, `SELECT consumer, consumer_identity, run_id, delivered_at IS NOT NULL, answered FROM task_ins WHERE id = $1`+s.d.forUpdate, p).
				Scan(&f.Consumer, &f.Identity, &f.Run, &f.Delivered, &f.Answered)
			f.Stored = err == nil
			if err == sql.ErrNoRows {
				err = tx.QueryRowContext(ctx, `SELECT consumer, consumer_identity FROM gone WHERE ins_id = $1`, p).Scan(&f.Consumer, &f.Identity)
				f.Gone = err == nil
			}
			if err != nil && err != sql.ErrNoRows {
				return nil, err
			}
			if late[i], err = rules.AcceptTaskRes(i, t, parents[i], identity, f, seen); err != nil {
				return nil, err
			}
		}
		var stored [][]blobRef
		for i := range list {
			results[ids[i]] = 0
			if late[i] {
				continue
			}
			p := parents[i].String()
			if _, err := tx.ExecContext(ctx, `INSERT INTO task_res (ins_id, msg) VALUES ($1, $2)`, p, msgs[i]); err != nil {
				return nil, err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE task_ins SET answered = 1 WHERE id = $1`, p); err != nil {
				return nil, err
			}
			if err := s.putBlobs(ctx, tx, p, 1, refs[i]); err != nil {
				return nil, err
			}
			stored = append(stored, refs[i])
		}
		return func() {
			for i, t := range list {
				if late[i] {
					s.ev.ResultDiscarded(parents[i], t.Task.Producer.NodeId)
				}
			}
			s.keep(stored)
		}, nil
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// PullTaskRes returns the results for the given TaskIns ids, in the order
// asked. For a TaskIns without result whose consumer is offline or deleted
// it makes up (and stores) the NODE_UNAVAILABLE result, as 1.8.0 does.
//
// A result delivered stays (its TaskIns's arrays are released) until the
// run's next PullTaskRes does not ask for it: then the ServerApp has it,
// and the pair is forgotten. A ServerApp that asks again for a result it
// was sent did not get the response (a connection lost, a SuperLink killed
// while answering), and gets the same result again.
func (s *State) PullTaskRes(ctx context.Context, taskIDs []string) ([]*flwrproto.TaskRes, error) {
	ids, err := rules.ParseTaskIDs(taskIDs)
	if err != nil {
		return nil, err
	}
	now := s.now()
	delivered := rules.DeliveredAt(now)
	var out []*flwrproto.TaskRes
	err = s.write(ctx, "PullTaskRes", func(tx *txn) (func(), error) {
		out = nil
		var missed []missedPing
		var released []sum
		asked := make(map[string]bool, len(ids))
		var runs []int64
		for _, uid := range ids {
			id := uid.String()
			asked[id] = true
			var consumer, run int64
			var answered bool
			var resDelivered sql.NullInt64
			err := tx.QueryRowContext(ctx, `SELECT consumer, run_id, answered, res_delivered_at FROM task_ins WHERE id = $1`+s.d.forUpdate, id).
				Scan(&consumer, &run, &answered, &resDelivered)
			if err == sql.ErrNoRows {
				continue
			}
			if err != nil {
				return nil, err
			}
			if !slices.Contains(runs, run) {
				runs = append(runs, run)
			}
			var r *flwrproto.TaskRes
			if answered {
				var rmsg []byte
				if err := tx.QueryRowContext(ctx, `SELECT msg FROM task_res WHERE ins_id = $1`, id).Scan(&rmsg); err != nil {
					return nil, err
				}
				r = &flwrproto.TaskRes{}
				if err := proto.Unmarshal(rmsg, r); err != nil {
					return nil, err
				}
				if err := s.getBlobs(ctx, tx, id, 1, r.GetTask().GetRecordset()); err != nil {
					return nil, err
				}
			} else {
				var until int64
				var offline int
				var pi float64
				err := tx.QueryRowContext(ctx, `SELECT online_until, offline, ping_interval FROM nodes WHERE id = $1`+s.d.forUpdate, consumer).Scan(&until, &offline, &pi)
				switch {
				case err == nil && until > micro(now):
					continue // online: its result may still come
				case err == nil && offline == 0:
					if _, err := tx.ExecContext(ctx, `UPDATE nodes SET offline = 1 WHERE id = $1`, consumer); err != nil {
						return nil, err
					}
					missed = append(missed, missedPing{consumer, pi})
				case err != nil && err != sql.ErrNoRows:
					return nil, err
				}
				// The TaskIns's message only now: the result made up
				// from it is the one case that needs it.
				var msg []byte
				if err := tx.QueryRowContext(ctx, `SELECT msg FROM task_ins WHERE id = $1`, id).Scan(&msg); err != nil {
					return nil, err
				}
				ins := &flwrproto.TaskIns{}
				if err := proto.Unmarshal(msg, ins); err != nil {
					return nil, err
				}
				rid, err := rules.NewTaskID(s.rand)
				if err != nil {
					return nil, err
				}
				r = rules.NodeUnavailable(ins, rid, now)
				rmsg, err := proto.Marshal(r)
				if err != nil {
					return nil, err
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO task_res (ins_id, msg) VALUES ($1, $2)`, id, rmsg); err != nil {
					return nil, err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE task_ins SET answered = 1 WHERE id = $1`, id); err != nil {
					return nil, err
				}
			}
			if !resDelivered.Valid {
				if _, err := tx.ExecContext(ctx, `UPDATE task_ins SET res_delivered_at = $1 WHERE id = $2`, micro(now), id); err != nil {
					return nil, err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE runs SET res_pulled = res_pulled + 1 WHERE id = $1`, run); err != nil {
					return nil, err
				}
				gone, err := s.dropBlobs(ctx, tx, id, 0) // the TaskIns's arrays: no longer needed
				if err != nil {
					return nil, err
				}
				released = append(released, gone...)
			}
			r.Task.DeliveredAt = delivered
			out = append(out, r)
		}
		// The runs' results delivered before and not asked for again: the
		// ServerApp has them. Forget the pairs, remembering each consumer
		// until its TaskIns would have expired.
		for _, run := range runs {
			rows, err := tx.QueryContext(ctx, `SELECT id, consumer, consumer_identity, expires_at FROM task_ins WHERE run_id = $1 AND res_delivered_at IS NOT NULL`+s.d.forUpdate, run)
			if err != nil {
				return nil, err
			}
			type pair struct {
				id, identity      string
				consumer, expires int64
			}
			var acked []pair
			for rows.Next() {
				var p pair
				if err := rows.Scan(&p.id, &p.consumer, &p.identity, &p.expires); err != nil {
					rows.Close()
					return nil, err
				}
				if !asked[p.id] {
					acked = append(acked, p)
				}
			}
			if err := rows.Close(); err != nil {
				return nil, err
			}
			for _, p := range acked {
				if _, err := tx.ExecContext(ctx, `INSERT INTO gone (ins_id, consumer, consumer_identity, until_at) VALUES ($1, $2, $3, $4)
					ON CONFLICT (ins_id) DO NOTHING`, p.id, p.consumer, p.identity, p.expires); err != nil {
					return nil, err
				}
				gone, err := s.deletePair(ctx, tx, p.id)
				if err != nil {
					return nil, err
				}
				released = append(released, gone...)
			}
		}
		return func() {
			s.logMissed(missed)
			s.cache.release(released)
		}, nil
	})
	return out, err
}

// deletePair forgets a TaskIns and its result and releases their arrays.
func (s *State) deletePair(ctx context.Context, tx *txn, id string) ([]sum, error) {
	gone, err := s.dropBlobs(ctx, tx, id, -1)
	if err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM task_res WHERE ins_id = $1`, id); err != nil {
		return nil, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM task_ins WHERE id = $1`, id); err != nil {
		return nil, err
	}
	return gone, nil
}

// Stats counts what the database holds.
func (s *State) Stats(ctx context.Context) (state.Stats, error) {
	now := micro(s.now())
	var st state.Stats
	err := s.read(ctx, "Stats", func(tx *txn) error {
		return tx.QueryRowContext(ctx, `SELECT
			(SELECT COUNT(*) FROM nodes),
			(SELECT COUNT(*) FROM nodes WHERE online_until > $1),
			(SELECT COUNT(*) FROM runs),
			(SELECT COUNT(*) FROM task_ins WHERE delivered_at IS NULL AND answered = 0),
			(SELECT COUNT(*) FROM task_ins WHERE delivered_at IS NOT NULL AND answered = 0),
			(SELECT COUNT(*) FROM task_ins WHERE answered = 1 AND res_delivered_at IS NULL),
			(SELECT COUNT(*) FROM blobs),
			(SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM blobs)`, now).
			Scan(&st.Nodes, &st.NodesOnline, &st.Runs, &st.TaskInsWaiting, &st.TaskInsDelivered, &st.TaskResWaiting, &st.Blobs, &st.BlobBytes)
	})
	return st, err
}

// Nodes returns every registered node in join order.
func (s *State) Nodes(ctx context.Context) ([]state.NodeInfo, error) {
	now := s.now()
	var out []state.NodeInfo
	err := s.read(ctx, "Nodes", func(tx *txn) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT id, identity, certificate, ping_interval, created_at, online_until FROM nodes ORDER BY seq`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var n state.NodeInfo
			var created, until int64
			if err := rows.Scan(&n.ID, &n.Identity, &n.Certificate, &n.PingInterval, &created, &until); err != nil {
				return err
			}
			n.Created, n.OnlineUntil = fromMicro(created), fromMicro(until)
			n.Online = n.OnlineUntil.After(now)
			out = append(out, n)
		}
		return rows.Err()
	})
	return out, err
}

// Runs returns up to limit runs, the last created first.
func (s *State) Runs(ctx context.Context, limit int) ([]state.RunInfo, error) {
	var out []state.RunInfo
	err := s.read(ctx, "Runs", func(tx *txn) error {
		out = nil
		rows, err := tx.QueryContext(ctx, `SELECT id, created_at, last_group, ins_pushed, res_pulled FROM runs ORDER BY seq DESC LIMIT `+s.d.limit(limit))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r state.RunInfo
			var created int64
			if err := rows.Scan(&r.ID, &created, &r.LastGroup, &r.TaskInsPushed, &r.TaskResPulled); err != nil {
				return err
			}
			r.Created = fromMicro(created)
			out = append(out, r)
		}
		return rows.Err()
	})
	return out, err
}

// Check reports whether the database answers and, for a SQLite file,
// whether the file at its path is still the one it serves (ErrLost).
func (s *State) Check(ctx context.Context) error {
	if s.file != nil {
		if err := s.file.check(); err != nil {
			return err
		}
	}
	return s.read(ctx, "Check", func(tx *txn) error {
		var v int
		return tx.QueryRowContext(ctx, s.d.check).Scan(&v)
	})
}

// Close records the time (for the restart grace), leaves the database (the
// TaskIns this State delivered and were not answered may go again to their
// nodes), closes it and releases it for another SuperLink. Later calls
// fail with Unavailable.
func (s *State) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		now := s.now()
		hbErr := s.write(ctx, "Close", func(tx *txn) (func(), error) {
			if err := s.leave(ctx, tx); err != nil {
				return nil, err
			}
			return nil, s.heartbeat(ctx, tx, now)
		})
		s.closed.Store(true)
		if s.locker != nil {
			s.locker.close()
		}
		s.closeErr = s.db.Close()
		if s.onClose != nil {
			if err := s.onClose(); s.closeErr == nil {
				s.closeErr = err
			}
		}
		if s.closeErr == nil && hbErr != nil {
			s.closeErr = hbErr
		}
	})
	return s.closeErr
}
