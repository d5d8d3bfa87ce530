package acme

// certmagic's Storage on PostgreSQL, so that several SuperLinks share one
// ACME account, one certificate and its renewals, and the challenge
// tokens that let any of them answer the CA's validation.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sepal-fl/sepal/internal/postgres"
)

// Defaults of PostgresOptions.
const (
	DefaultLockTTL          = 10 * time.Second
	DefaultLockPollInterval = time.Second
)

// postgresSchema is the storage's tables. Keys are compared byte by byte
// (COLLATE "C"), so that the keys under a "directory" p are exactly those
// in [p+"/", p+"0"): '0' follows '/' in ASCII.
var postgresSchema = postgres.Schema{Name: "acme storage", Migrations: []string{
	`CREATE TABLE acme_keys (
		key      text COLLATE "C" PRIMARY KEY,
		value    bytea NOT NULL,
		modified timestamptz NOT NULL DEFAULT now());
	CREATE TABLE acme_locks (
		name     text COLLATE "C" PRIMARY KEY,
		owner    text NOT NULL,
		acquired timestamptz NOT NULL DEFAULT now(),
		expires  timestamptz NOT NULL)`,
}}

// PostgresOptions configures a PostgresStorage. Zero values take the
// documented defaults.
type PostgresOptions struct {
	// LockTTL is the lease of a lock: a holder that stops renewing it (its
	// process died, or it cannot reach the database) loses it this long
	// after its last renewal, and another replica may take it. The holder
	// renews it every LockTTL/4 while it holds it. Default DefaultLockTTL.
	LockTTL time.Duration

	// LockPollInterval is how often Lock tries again while another holder
	// has the lock. Default DefaultLockPollInterval.
	LockPollInterval time.Duration

	// MaxConns caps the connection pool. Default 4.
	MaxConns int32

	// What names the storage in error messages, such as the flag that
	// gave the connection string. Default "the ACME storage".
	What string

	// Logger receives lock take-overs and lost leases. Default: discard.
	Logger *slog.Logger
}

// PostgresStorage is a certmagic.Storage (and certmagic.TryLocker) on a
// PostgreSQL database, through pgx: keys and values in the table
// acme_keys, locks in acme_locks, both created and migrated by
// OpenPostgresStorage. Every method is safe for concurrent use, honours
// its context, and is one statement (so atomic) against the database;
// Load returns what the last Store of the key committed. Missing keys
// give errors that match fs.ErrNotExist, as certmagic expects.
//
// Keys follow certmagic's rules: "/" separates components, no leading or
// trailing "/", no empty component. A key may be both a file and the
// prefix of other keys; Stat then reports the file.
//
// Locks are leases, not session-level advisory locks: a row with an owner
// and an expiry in the database's own clock (so the replicas' clocks do
// not matter), renewed by a heartbeat every LockTTL/4 while held. A holder
// that is killed, hangs, or is cut off from the database loses its lock
// LockTTL after its last heartbeat; another replica then takes it over. An
// advisory lock held on a connection is freed at once when the holder's
// process is killed (its socket closes), but under a network partition
// the server keeps the session, and the lock, until TCP keepalive gives
// up (over two hours with Linux defaults); it also pins one connection
// per lock and does not survive a transaction-pooling proxy. A lease is
// bounded by LockTTL in every case, at the price of others waiting up to
// LockTTL after a crash. As certmagic's Locker allows, a holder that
// stalls for longer than LockTTL may find its lock taken (it logs so);
// certmagic re-checks storage after taking a lock, so the cost is at most
// a repeated order.
type PostgresStorage struct {
	pool  *pgxpool.Pool
	o     PostgresOptions
	dsn   string // redacted
	owner string // this process: host, pid and a random id

	mu     sync.Mutex
	closed bool           // Close was called: no more locks
	taking sync.WaitGroup // TryLocks under way, which Close waits for
	// held maps a lock name to this process's acquisitions of it, oldest
	// first, each with its own owner. Only the last can still hold the
	// lock: one is added only when the lease before it had ended, so the
	// others lost theirs and wait for their Unlock.
	held map[string][]*heldLock
}

// heldLock is one acquisition of a lock by this process, with its
// heartbeat.
type heldLock struct {
	owner string
	stop  chan struct{}
	done  chan struct{}
}

var (
	_ certmagic.Storage   = (*PostgresStorage)(nil)
	_ certmagic.TryLocker = (*PostgresStorage)(nil)
)

// OpenPostgresStorage connects to the database named by dsn (a libpq URL
// or key/value string; the password may come from $PGPASSWORD or a
// passfile), checks that it is reachable and accepts the credentials,
// and creates or migrates the storage's tables under a lock (several
// replicas starting at once on an empty database do not race). A database
// migrated by a newer Sepal is refused. Errors say what is wrong and name
// o.What and the connection string without its password.
func OpenPostgresStorage(ctx context.Context, dsn string, o PostgresOptions) (*PostgresStorage, error) {
	if o.What == "" {
		o.What = "the ACME storage"
	}
	if o.LockTTL < 0 || o.LockPollInterval < 0 {
		return nil, errors.New("LockTTL and LockPollInterval must not be negative")
	}
	if o.LockTTL == 0 {
		o.LockTTL = DefaultLockTTL
	}
	if o.LockPollInterval == 0 {
		o.LockPollInterval = DefaultLockPollInterval
	}
	if o.MaxConns == 0 {
		o.MaxConns = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	pool, err := postgres.Open(ctx, dsn, postgres.Options{What: o.What, MaxConns: o.MaxConns})
	if err != nil {
		return nil, err
	}
	if _, _, err := postgresSchema.Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, postgres.Explain(err, o.What, dsn)
	}
	host, _ := os.Hostname()
	return &PostgresStorage{
		pool:  pool,
		o:     o,
		dsn:   postgres.Redact(dsn),
		owner: fmt.Sprintf("host=%s pid=%d id=%s", host, os.Getpid(), randomID()),
		held:  map[string][]*heldLock{},
	}, nil
}

func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// String describes the storage for logs, without the password.
func (s *PostgresStorage) String() string { return "PostgreSQL " + s.dsn }

// Owner is how this process appears in the owner column of acme_locks:
// "host=H pid=P id=X", each lock adding " lock=N".
func (s *PostgresStorage) Owner() string { return s.owner }

// Close releases the locks this process holds (so that others need not
// wait for their leases to end), stops their heartbeats and closes the
// connections; Lock and TryLock fail after it. A TryLock under way is
// waited for, and the lock it takes released. It is safe to call more
// than once.
func (s *PostgresStorage) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.taking.Wait()
	s.mu.Lock()
	held := s.held
	s.held = map[string][]*heldLock{}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for name, hs := range held {
		for _, h := range hs {
			h.stopHeartbeat()
		}
		_, _ = s.pool.Exec(ctx, "DELETE FROM acme_locks WHERE name = $1 AND owner = $2", name, hs[len(hs)-1].owner)
	}
	s.pool.Close()
	return nil
}

// errClosed is the error of TryLock and Lock after Close.
func errClosed(name string) error {
	return fmt.Errorf("taking the ACME storage lock %q: the storage is closed", name)
}

// checkKey refuses keys that certmagic never makes.
func checkKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || strings.Contains(key, "//") {
		return fmt.Errorf("ACME storage key %q: keys are non-empty, /-separated, without a leading or trailing /", key)
	}
	return nil
}

// errNotExist wraps fs.ErrNotExist with the key.
func errNotExist(key string) error {
	return fmt.Errorf("ACME storage key %q: %w", key, fs.ErrNotExist)
}

// Store puts value at key, replacing any value there, in one statement.
func (s *PostgresStorage) Store(ctx context.Context, key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO acme_keys (key, value, modified) VALUES ($1, $2, now())
		ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, modified = EXCLUDED.modified`, key, value)
	if err != nil {
		return fmt.Errorf("storing %q in the ACME storage: %w", key, err)
	}
	return nil
}

// Load returns the value at key, or an error matching fs.ErrNotExist.
func (s *PostgresStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	var v []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM acme_keys WHERE key = $1", key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNotExist(key)
	}
	if err != nil {
		return nil, fmt.Errorf("loading %q from the ACME storage: %w", key, err)
	}
	return v, nil
}

// Delete removes key and every key under it (key + "/..."). A key that
// does not exist is not an error; an error means nothing was deleted.
func (s *PostgresStorage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	_, err := s.pool.Exec(ctx, `DELETE FROM acme_keys WHERE key = $1 OR (key >= $1 || '/' AND key < $1 || '0')`, key)
	if err != nil {
		return fmt.Errorf("deleting %q from the ACME storage: %w", key, err)
	}
	return nil
}

// Exists reports whether key is a file or the prefix of one. It is false
// when the database cannot be asked.
func (s *PostgresStorage) Exists(ctx context.Context, key string) bool {
	if checkKey(key) != nil {
		return false
	}
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM acme_keys
		WHERE key = $1 OR (key >= $1 || '/' AND key < $1 || '0'))`, key).Scan(&ok)
	return err == nil && ok
}

// List returns the keys under path: with recursive, every file and
// "directory" below it (as certmagic.FileStorage walks a folder);
// otherwise only its direct children. path "" is the root. A path that
// is neither a file nor a prefix gives an error matching fs.ErrNotExist;
// a file has no children.
func (s *PostgresStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	var rows pgx.Rows
	var err error
	if path == "" {
		rows, err = s.pool.Query(ctx, "SELECT key FROM acme_keys")
	} else {
		if err := checkKey(path); err != nil {
			return nil, err
		}
		rows, err = s.pool.Query(ctx, `SELECT key FROM acme_keys WHERE key = $1 OR (key >= $1 || '/' AND key < $1 || '0')`, path)
	}
	if err != nil {
		return nil, fmt.Errorf("listing %q in the ACME storage: %w", path, err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("listing %q in the ACME storage: %w", path, err)
	}
	if len(keys) == 0 && path != "" {
		return nil, errNotExist(path)
	}
	base := ""
	if path != "" {
		base = path + "/"
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range keys {
		if k == path {
			continue // the file itself
		}
		rest := strings.Split(strings.TrimPrefix(k, base), "/")
		n := 1
		if recursive {
			n = len(rest)
		}
		for i := 1; i <= n; i++ {
			child := base + strings.Join(rest[:i], "/")
			if !seen[child] {
				seen[child] = true
				out = append(out, child)
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// Stat describes key: a file (IsTerminal, its size and when it was last
// stored) or a "directory" (the prefix of files; Modified is the latest
// of theirs). A key that is neither gives an error matching
// fs.ErrNotExist.
func (s *PostgresStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := checkKey(key); err != nil {
		return certmagic.KeyInfo{}, err
	}
	var terminal bool
	var size int64
	var modified time.Time
	err := s.pool.QueryRow(ctx, `SELECT key = $1, length(value), modified FROM acme_keys
		WHERE key = $1 OR (key >= $1 || '/' AND key < $1 || '0')
		ORDER BY key = $1 DESC, modified DESC LIMIT 1`, key).Scan(&terminal, &size, &modified)
	if errors.Is(err, pgx.ErrNoRows) {
		return certmagic.KeyInfo{}, errNotExist(key)
	}
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("looking up %q in the ACME storage: %w", key, err)
	}
	if !terminal {
		size = 0
	}
	return certmagic.KeyInfo{Key: key, Modified: modified, Size: size, IsTerminal: terminal}, nil
}

// Lock takes the named lock, waiting (polling every LockPollInterval)
// while another holder's lease runs, until ctx ends. A lease whose holder
// stopped renewing it is taken over. It returns an error when ctx ends or
// the database cannot be asked; then the lock is not held.
func (s *PostgresStorage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the ACME storage lock %q: %w", name, context.Cause(ctx))
		case <-time.After(s.o.LockPollInterval):
		}
	}
}

// TryLock takes the named lock if it is free or its lease has ended, and
// reports whether it did; it never waits for a holder. Each acquisition
// has its own owner in acme_locks, so that Unlock releases only its own.
func (s *PostgresStorage) TryLock(ctx context.Context, name string) (bool, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false, errClosed(name)
	}
	s.taking.Add(1) // before Close's Wait: closed was false under mu
	s.mu.Unlock()
	defer s.taking.Done()
	owner := s.owner + " lock=" + randomID()
	var prevOwner *string
	var prevExpired *float64 // seconds since the previous lease ended
	// The CTE reads the row as it was before, for the log line only.
	err := s.pool.QueryRow(ctx, `WITH prev AS (SELECT owner, extract(epoch FROM now() - expires)::float8 AS late FROM acme_locks WHERE name = $1)
		INSERT INTO acme_locks (name, owner, acquired, expires) VALUES ($1, $2, now(), now() + make_interval(secs => $3))
		ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, acquired = EXCLUDED.acquired, expires = EXCLUDED.expires
		WHERE acme_locks.expires < now()
		RETURNING (SELECT owner FROM prev), (SELECT late FROM prev)`,
		name, owner, s.o.LockTTL.Seconds()).Scan(&prevOwner, &prevExpired)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // held by someone else
	}
	if err != nil {
		return false, fmt.Errorf("taking the ACME storage lock %q: %w", name, err)
	}
	if prevOwner != nil && prevExpired != nil {
		s.o.Logger.Warn("took over a lock whose holder stopped renewing it (a replica died or lost the database)",
			"lock", name, "previous_owner", *prevOwner, "expired_ago", time.Duration(*prevExpired*float64(time.Second)).Round(time.Millisecond).String())
	}
	h := &heldLock{owner: owner, stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		// Close came while the lock was taken and waits for this call,
		// so the pool is still open: give the lock back at once.
		s.mu.Unlock()
		rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_, _ = s.pool.Exec(rctx, "DELETE FROM acme_locks WHERE name = $1 AND owner = $2", name, owner)
		return false, errClosed(name)
	}
	// An acquisition of name already here lost its lease (this one could
	// take the lock only because that lease had ended): stop its
	// heartbeat, and keep it for its own Unlock.
	lost := s.held[name]
	s.held[name] = append(lost, h)
	s.mu.Unlock()
	for _, l := range lost {
		l.stopHeartbeat()
	}
	go s.heartbeat(name, h)
	return true, nil
}

// heartbeat renews h's lease every LockTTL/4 until stopped, and stops on
// its own when the lease was lost.
func (s *PostgresStorage) heartbeat(name string, h *heldLock) {
	defer close(h.done)
	t := time.NewTicker(s.o.LockTTL / 4)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.o.LockTTL/2)
		tag, err := s.pool.Exec(ctx, `UPDATE acme_locks SET expires = now() + make_interval(secs => $3)
			WHERE name = $1 AND owner = $2`, name, h.owner, s.o.LockTTL.Seconds())
		cancel()
		switch {
		case err != nil:
			if !failing {
				s.o.Logger.Warn("cannot renew a lock's lease; it ends if this goes on", "lock", name,
					"lease", s.o.LockTTL.String(), "error", err.Error())
			}
			failing = true
		case tag.RowsAffected() == 0:
			s.o.Logger.Warn("lost a lock: its lease ended and another replica may hold it", "lock", name)
			return
		default:
			if failing {
				s.o.Logger.Info("renewing the lock's lease again", "lock", name)
			}
			failing = false
		}
	}
}

func (h *heldLock) stopHeartbeat() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

// Unlock releases a lock taken by Lock or TryLock in this process. It is
// an error when this process does not hold it (never taken, or its lease
// ended and another replica took it) or the database cannot be reached;
// in the latter case the lease simply runs out.
//
// Unlock names the lock only, so when one acquisition of name in this
// process lost its lease and another one here took the lock over, Unlocks
// pair with the acquisitions in order: the first ends the oldest, the
// lost one (an error, and the newer holder keeps the lock), the next the
// newer one.
func (s *PostgresStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	hs := s.held[name]
	if len(hs) == 0 {
		s.mu.Unlock()
		return fmt.Errorf("unlocking the ACME storage lock %q: this process does not hold that lock", name)
	}
	h, lost := hs[0], len(hs) > 1
	if lost {
		s.held[name] = hs[1:]
	} else {
		delete(s.held, name)
	}
	s.mu.Unlock()
	h.stopHeartbeat()
	if lost {
		return fmt.Errorf("unlocking the ACME storage lock %q: the lease had ended and a newer Lock in this process holds the lock, which stays held", name)
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM acme_locks WHERE name = $1 AND owner = $2", name, h.owner)
	if err != nil {
		return fmt.Errorf("unlocking the ACME storage lock %q: %w (its lease ends by itself within %v)", name, err, s.o.LockTTL)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("unlocking the ACME storage lock %q: the lease had ended and another replica may hold the lock", name)
	}
	return nil
}
