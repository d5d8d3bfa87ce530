package sqlstate

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Errors of OpenSQLite that callers may branch on; each comes wrapped in a
// message that names the file and the fix.
var (
	ErrLocked    = errors.New("the database is in use by another SuperLink")
	ErrNotSQLite = errors.New("the file is not a SQLite database")
	ErrReadOnly  = errors.New("the database cannot be written")
)

// SQLiteOptions configure OpenSQLite.
type SQLiteOptions struct {
	Options
	// Shared lets several States in this process open the same file, for
	// tests of what several processes on one database do. Default: false,
	// the file is locked for one State, and a second SuperLink (or
	// OpenSQLite) on it is refused with ErrLocked.
	Shared bool
	// CheckInterval is how often the State looks at the path to find the
	// file deleted or replaced (renamed over) while it serves it; every
	// write looks too, before it commits. Default DefaultCheckInterval.
	CheckInterval time.Duration
	// OnLost, when not nil, is called once, in a goroutine of its own, when
	// the file was found deleted or replaced, with an error matching
	// ErrLost: the State then answers every call with Unavailable and its
	// Check fails, and its owner should stop serving, so that the process
	// is started again on the file now at the path. Default nil (the State
	// logs the loss and fails every call).
	OnLost func(error)
}

var sqliteDialect = &dialect{
	name:            "SQLite",
	migrations:      "sqlite",
	readOnly:        &sql.TxOptions{ReadOnly: true},
	serializeWrites: true,
	ownsDatabase:    true,
	limit: func(n int) string {
		if n <= 0 {
			return "-1"
		}
		return strconv.Itoa(n)
	},
	classify: classifySQLite,
	alive:    "EXISTS (SELECT 1 FROM replicas WHERE replicas.id = %s)",
	check:    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
}

// sqliteHeader starts every SQLite database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// OpenSQLite opens the state in the SQLite file path, creating it (mode
// 0600) when it does not exist, in WAL mode, with synchronous=FULL so that
// what was committed survives a crash of the machine too, and upgrades its
// schema. The file is locked for this State until Close: the file itself,
// and a lock file beside it (path-lock, 0600, left in place), which holds
// also when the database file is deleted or replaced while served. Such a
// loss is noticed (SQLiteOptions.CheckInterval, OnLost) and ends the State.
//
// Every refusal names the file and the fix: a missing folder, a folder
// given as the file, a file that is not SQLite (ErrNotSQLite) or not a
// Sepal state (ErrForeign), one written by a newer Sepal (ErrNewerSchema),
// one another SuperLink holds (ErrLocked), one that cannot be written
// (ErrReadOnly). A file or folder that other users can read is opened, and
// said so in the log.
func OpenSQLite(ctx context.Context, path string, o SQLiteOptions) (*State, error) {
	o.Options = o.Options.WithDefaults()
	if path == "" {
		return nil, errors.New("the state database path is empty: give a file, such as state.db")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	dir := filepath.Dir(abs)
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("state database %s: the folder %s does not exist: create it (mkdir -p -m 700 %s) or give a path in an existing folder", path, dir, dir)
	case err != nil:
		return nil, fmt.Errorf("state database %s: %w", path, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("state database %s: %s is not a folder: give a path in a folder", path, dir)
	case fi.Mode().Perm()&0o077 != 0:
		o.Logger.Info("the state database's folder is open to other users; the file is 0600, but consider: chmod 700 "+dir, "database", path, "folder_mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("state database %s: is a folder: give a file in it, such as %s", path, filepath.Join(path, "state.db"))
	} else if err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("state database %s: is not a regular file: give a path to a file", path)
	}

	// The lock file first: a second SuperLink on the path stops here, also
	// when the database file was deleted or replaced under the first.
	var lock *os.File
	if !o.Shared {
		if lock, err = lockFile(path, abs); err != nil {
			if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
				return nil, fileError(path, dir, err)
			}
			return nil, err
		}
	}
	// Our own handle on the file: created 0600, checked, and locked.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if lock != nil {
			lock.Close()
		}
		return nil, fileError(path, dir, err)
	}
	fail := func(err error) (*State, error) {
		f.Close()
		if lock != nil {
			lock.Close()
		}
		return nil, err
	}
	if fi, err := f.Stat(); err == nil && fi.Mode().Perm()&0o077 != 0 {
		o.Logger.Warn("the state database is open to other users, who can read every task and parameter in it: chmod 600 "+path, "database", path, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
	if !o.Shared {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return fail(fmt.Errorf("state database %s: %w: stop that SuperLink first, or give this one another file", path, ErrLocked))
			}
			return fail(fmt.Errorf("state database %s: locking it: %w", path, err))
		}
	}
	head := make([]byte, len(sqliteHeader))
	switch n, err := io.ReadFull(f, head); {
	case n == 0 && (err == io.EOF || err == nil):
		// empty: a new database
	case err != nil && err != io.ErrUnexpectedEOF:
		return fail(fmt.Errorf("state database %s: reading it: %w", path, err))
	case !bytes.Equal(head[:n], sqliteHeader):
		return fail(fmt.Errorf("state database %s: %w (it does not start as one): give a new file, or one a Sepal SuperLink wrote", path, ErrNotSQLite))
	}
	if err := syscall.Access(dir, 2 /* W_OK */); err != nil {
		return fail(fmt.Errorf("state database %s: %w: the folder %s is not writable, and SQLite keeps %s-wal and %s-shm beside the file (%v): chmod u+w %s, or give a path in another folder",
			path, ErrReadOnly, dir, filepath.Base(abs), filepath.Base(abs), err, dir))
	}

	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "page_size(65536)") // before WAL: only a new file takes it
	// Checkpoint the WAL into the file once it holds 4 MiB (64 pages), and
	// cut it back to 16 MiB after, so that neither file keeps the size of
	// the largest push for good.
	q.Add("_pragma", "wal_autocheckpoint(64)")
	q.Add("_pragma", "journal_size_limit(16777216)")
	q.Set("_journal_mode", "WAL")
	q.Set("_synchronous", "FULL")
	q.Set("_txlock", "immediate")
	dsn := (&url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}).String()
	conns, err := sqlite.NewConnector(dsn)
	if err != nil {
		return fail(fmt.Errorf("state database %s: %w", path, err))
	}
	// Each connection keeps the statements it runs prepared (stmtcache.go).
	db := sql.OpenDB(stmtConnector{conns})
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(0)
	from, to, err := migrate(ctx, db, sqliteDialect, sqliteTables)
	if err != nil {
		db.Close()
		return fail(openError(path, err))
	}
	watch, err := newFileWatch(path, abs, f, o.Logger, o.OnLost)
	if err != nil {
		db.Close()
		return fail(fmt.Errorf("state database %s: %w", path, err))
	}
	s := newState(db, sqliteDialect, path, o.Options)
	s.file = watch
	// Alone on the file (its lock), this State knows that the replicas
	// recorded before it are gone.
	if err := s.join(ctx, !o.Shared); err != nil {
		db.Close()
		return fail(openError(path, err))
	}
	interval := o.CheckInterval
	if interval <= 0 {
		interval = DefaultCheckInterval
	}
	watch.run(interval)
	s.onClose = func() error { // releases the locks
		watch.close()
		err := f.Close()
		if lock != nil {
			lock.Close()
		}
		return err
	}
	if from != to {
		if from == 0 {
			o.Logger.Info("state database created", "database", path, "schema_version", to)
		} else {
			o.Logger.Info("state database upgraded", "database", path, "schema_version_was", from, "schema_version", to)
		}
	}
	return s, nil
}

func sqliteTables(ctx context.Context, tx *sql.Tx) ([]string, error) {
	rows, err := tx.QueryContext(ctx, `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, rows.Err()
}

// fileError explains why the file cannot be opened for writing.
func fileError(path, dir string, err error) error {
	switch {
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("state database %s: %w: it is on a read-only file system: give a path on a writable one", path, ErrReadOnly)
	case errors.Is(err, fs.ErrPermission):
		if _, serr := os.Stat(path); serr == nil {
			return fmt.Errorf("state database %s: %w: permission denied: the SuperLink must write its state there: chmod u+w %s (as its owner), or give another file", path, ErrReadOnly, path)
		}
		return fmt.Errorf("state database %s: %w: the folder %s is not writable: chmod u+w %s, or give a path in another folder", path, ErrReadOnly, dir, dir)
	case errors.Is(err, syscall.ENOSPC):
		return fmt.Errorf("state database %s: the disk is full: free some space, or give a path on another disk", path)
	}
	return fmt.Errorf("state database %s: %w", path, err)
}

// openError explains a failure to open or migrate the database.
func openError(path string, err error) error {
	var se *sqlite.Error
	switch {
	case errors.Is(err, ErrNewerSchema):
		return fmt.Errorf("state database %s: %w: upgrade this Sepal, or give another file", path, err)
	case errors.Is(err, ErrForeign):
		return fmt.Errorf("state database %s: %w; Flower's own state database cannot be read: give a new file", path, err)
	case errors.As(err, &se):
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT:
			return fmt.Errorf("state database %s: %w (%v): give a new file, or one a Sepal SuperLink wrote", path, ErrNotSQLite, err)
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("state database %s: %w (another program holds a lock on it: %v): stop it, or give another file", path, ErrLocked, err)
		case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM:
			return fmt.Errorf("state database %s: %w (%v): make it and its folder writable for the SuperLink, or give another file", path, ErrReadOnly, err)
		case sqlite3.SQLITE_FULL:
			return fmt.Errorf("state database %s: the disk is full (%v): free some space, or give a path on another disk", path, err)
		}
	}
	return fmt.Errorf("state database %s: %w", path, err)
}

// classifySQLite maps a SQLite error met while serving.
func classifySQLite(err error) (codes.Code, string) {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return codes.Internal, ""
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_FULL:
		return codes.Unavailable, "the disk is full: free some space; nothing committed before is lost, and the call can be retried"
	case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
		return codes.Unavailable, "the database is busy; retry"
	case sqlite3.SQLITE_IOERR:
		return codes.Unavailable, "the disk failed a read or write; check the disk (dmesg); nothing committed before is lost"
	case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM:
		return codes.Unavailable, "the database can no longer be written: check the file's permissions and its file system"
	}
	return codes.Internal, ""
}
