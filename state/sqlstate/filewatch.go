package sqlstate

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A SQLite file deleted or replaced (renamed over) while a State serves it
// is still open in the process, so SQLite goes on writing to the old file,
// which no one will read again: everything committed from then on would be
// lost, and a new file at the path (or another SuperLink on it) would meet
// this one's -wal and -shm. So a State on a file watches the path: when
// the file there is no longer the one it opened (another device and inode,
// or none), the State is lost for good. It answers every call with
// Unavailable from then on, its Check fails, it logs one line, and it tells
// its owner (SQLiteOptions.OnLost), who stops serving so that a supervisor
// starts the SuperLink again on the file now at the path.

// ErrLost is matched (errors.Is) by the errors of a State whose SQLite file
// was deleted or replaced while it served it (see SQLiteOptions.OnLost).
var ErrLost = errors.New("the state database file is no longer the one the SuperLink opened")

// DefaultCheckInterval is the default of SQLiteOptions.CheckInterval.
const DefaultCheckInterval = 500 * time.Millisecond

// lostError is the error of every call to a lost State: Unavailable for
// gRPC (a client retries it, and reaches the SuperLink started again),
// ErrLost for errors.Is.
type lostError struct{ msg string }

func (e *lostError) Error() string              { return e.msg }
func (e *lostError) GRPCStatus() *status.Status { return status.New(codes.Unavailable, e.msg) }
func (e *lostError) Is(target error) bool       { return target == ErrLost }

// fileWatch compares the path of a State's file with the file it opened.
type fileWatch struct {
	path     string // as given, for messages
	abs      string
	dev, ino uint64 // of the file opened
	log      *slog.Logger
	onLost   func(error)

	lost atomic.Pointer[lostError]
	stop chan struct{}
	done sync.WaitGroup
}

// newFileWatch watches abs, whose open file f is the one to serve from.
func newFileWatch(path, abs string, f *os.File, log *slog.Logger, onLost func(error)) (*fileWatch, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("no device and inode for %s", path)
	}
	return &fileWatch{path: path, abs: abs, dev: uint64(st.Dev), ino: st.Ino, log: log, onLost: onLost, stop: make(chan struct{})}, nil
}

// err returns the error of a lost file, or nil.
func (w *fileWatch) err() error {
	if e := w.lost.Load(); e != nil {
		return e
	}
	return nil
}

// check looks at the path once: nil while the file there is the one
// opened (or the path cannot be looked at now, say EIO: the next check
// tries again), else the lost error, which stays. The first time it finds
// the file lost it logs so and calls onLost. It costs one stat(2).
func (w *fileWatch) check() error {
	if e := w.lost.Load(); e != nil {
		return e
	}
	fi, err := os.Stat(w.abs)
	var why string
	switch {
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		why = "was deleted (or renamed away)"
	case err != nil:
		return nil
	default:
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || uint64(st.Dev) == w.dev && st.Ino == w.ino {
			return nil
		}
		why = "was replaced by another file (renamed over, or deleted and made again)"
	}
	e := &lostError{msg: fmt.Sprintf("state database %s: %v: it %s while this SuperLink served it; nothing more is read from it or written to it: start the SuperLink again to serve from the file now at that path",
		w.path, ErrLost, why)}
	if !w.lost.CompareAndSwap(nil, e) {
		return w.lost.Load()
	}
	w.log.Error("state database file "+why+" while served: every call fails from now on, until the SuperLink is started again on the file at that path",
		"database", w.path)
	if w.onLost != nil {
		go w.onLost(e)
	}
	return e
}

// run checks every interval until close.
func (w *fileWatch) run(interval time.Duration) {
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				if w.check() != nil {
					return
				}
			}
		}
	}()
}

// close stops the checks.
func (w *fileWatch) close() {
	close(w.stop)
	w.done.Wait()
}

// lockFile takes the lock of the database at abs: an exclusive flock(2) on
// abs+"-lock" (created 0600), a file beside the database that outlives it,
// so that a second SuperLink cannot start on the path while this one
// holds the lock, also once the database file was deleted or replaced. A
// lock file replaced between its open and its lock is opened again. It
// returns the locked file, held until the State closes; an error that
// wraps ErrLocked; or the *fs.PathError of a lock file that cannot be
// opened.
func lockFile(path, abs string) (*os.File, error) {
	name := abs + "-lock"
	for range 3 {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err // an *fs.PathError, for the caller to explain
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("state database %s: %w: stop that SuperLink first, or give this one another file (it holds the lock file %s)", path, ErrLocked, name)
			}
			return nil, fmt.Errorf("state database %s: locking %s: %w", path, name, err)
		}
		if same(f, name) {
			return f, nil
		}
		f.Close() // deleted or replaced before we locked it: lock the one there now
	}
	return nil, fmt.Errorf("state database %s: its lock file %s keeps being replaced: stop whatever replaces it", path, name)
}

// same reports whether the file at name is f.
func same(f *os.File, name string) bool {
	a, err := f.Stat()
	if err != nil {
		return false
	}
	b, err := os.Stat(name)
	return err == nil && os.SameFile(a, b)
}
