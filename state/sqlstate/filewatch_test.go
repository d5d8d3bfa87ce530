package sqlstate_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

// lostState is a State on a SQLite file, with what it logs and the
// errors its OnLost received.
type lostState struct {
	path string
	s    *sqlstate.State
	log  *testkit.SyncBuffer
	lost chan error
}

func openWatched(t *testing.T, interval time.Duration) *lostState {
	t.Helper()
	l := &lostState{path: filepath.Join(t.TempDir(), "state.db"), log: &testkit.SyncBuffer{}, lost: make(chan error, 4)}
	s, err := sqlstate.OpenSQLite(context.Background(), l.path, sqlstate.SQLiteOptions{
		Options:       sqlstate.Options{Logger: slog.New(slog.NewTextHandler(l.log, nil))},
		CheckInterval: interval,
		OnLost:        func(err error) { l.lost <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	l.s = s
	if _, err := s.CreateNode(context.Background(), state.NewNode{PingInterval: 30}); err != nil {
		t.Fatal(err)
	}
	return l
}

// wantLost checks that err is the error of a lost State: Unavailable for
// the client, ErrLost for the SuperLink, naming the file and what
// happened to it.
func wantLost(t *testing.T, what string, err error, path, why string) {
	t.Helper()
	if status.Code(err) != codes.Unavailable || !errors.Is(err, sqlstate.ErrLost) ||
		!strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), why) {
		t.Errorf("%s: %v, want Unavailable, ErrLost, naming %s and saying it %s", what, err, path, why)
	}
}

// A SQLite file deleted while the State serves it: the next write fails
// before it commits (nothing goes to the deleted file), the periodic
// check finds it without any call, OnLost hears it once, Check fails, one
// line is logged, and every call fails from then on, also once a new file
// appears at the path.
func TestSQLiteFileDeleted(t *testing.T) {
	ctx := context.Background()
	// Found by a write, before the first periodic check.
	l := openWatched(t, time.Hour)
	if err := os.Remove(l.path); err != nil {
		t.Fatal(err)
	}
	_, err := l.s.CreateNode(ctx, state.NewNode{PingInterval: 30})
	wantLost(t, "CreateNode after the deletion", err, l.path, "was deleted")
	select {
	case err := <-l.lost:
		wantLost(t, "OnLost", err, l.path, "was deleted")
	case <-time.After(10 * time.Second):
		t.Fatal("OnLost was not called")
	}
	wantLost(t, "Check", l.s.Check(ctx), l.path, "was deleted")
	_, err = l.s.GetNodes(ctx, 1)
	wantLost(t, "GetNodes", err, l.path, "was deleted")
	// A new file at the path changes nothing for this State.
	if err := os.WriteFile(l.path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = l.s.CreateRun(ctx)
	wantLost(t, "CreateRun once a new file is there", err, l.path, "was deleted")
	if n := strings.Count(l.log.String(), "state database file was deleted"); n != 1 {
		t.Errorf("logged the loss %d times, want once:\n%s", n, l.log)
	}
	select {
	case err := <-l.lost:
		t.Errorf("OnLost called again: %v", err)
	default:
	}

	// Found by the periodic check alone.
	l = openWatched(t, 20*time.Millisecond)
	removed := time.Now()
	if err := os.Remove(l.path); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-l.lost:
		wantLost(t, "OnLost", err, l.path, "was deleted")
		t.Logf("noticed by the periodic check %v after the deletion", time.Since(removed).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the periodic check did not notice the deletion")
	}
}

// A file renamed over the State's: another file at the path, lost too.
func TestSQLiteFileReplaced(t *testing.T) {
	l := openWatched(t, time.Hour)
	other := filepath.Join(filepath.Dir(l.path), "other.db")
	if err := os.WriteFile(other, []byte("SQLite format 3\x00"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, l.path); err != nil {
		t.Fatal(err)
	}
	_, err := l.s.CreateNode(context.Background(), state.NewNode{PingInterval: 30})
	wantLost(t, "CreateNode after the replacement", err, l.path, "was replaced by another file")
	wantLost(t, "Check", l.s.Check(context.Background()), l.path, "was replaced by another file")
}

// A second State cannot open the path while the first holds it, also once
// the first's file was deleted or replaced (the lock is on a file beside
// it); once the first closes, the path opens.
func TestSQLiteLockOutlivesFile(t *testing.T) {
	quiet := sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}}
	for _, c := range []struct {
		name   string
		change func(path string) error
	}{
		{"nothing changed", func(string) error { return nil }},
		{"deleted", os.Remove},
		{"deleted with its -wal and -shm", func(path string) error {
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			return nil
		}},
		{"replaced", func(path string) error {
			other := path + ".new"
			if err := os.WriteFile(other, nil, 0o600); err != nil {
				return err
			}
			return os.Rename(other, path)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			first, err := sqlstate.OpenSQLite(context.Background(), path, quiet)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.change(path); err != nil {
				t.Fatal(err)
			}
			second, err := sqlstate.OpenSQLite(context.Background(), path, quiet)
			if !errors.Is(err, sqlstate.ErrLocked) || !strings.Contains(err.Error(), "stop that SuperLink first") {
				if second != nil {
					second.Close()
				}
				t.Fatalf("a second State on the path: %v, want ErrLocked", err)
			}
			first.Close()
			second, err = sqlstate.OpenSQLite(context.Background(), path, quiet)
			if err != nil {
				t.Fatalf("after the first closed: %v", err)
			}
			second.Close()
		})
	}
}
