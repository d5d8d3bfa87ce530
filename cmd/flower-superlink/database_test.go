package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

var quiet = sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}}

func TestDatabaseFlag(t *testing.T) {
	for _, tc := range []struct {
		value, err string
	}{
		{":memory:", ""},
		{":flwr-in-memory-state:", ""},
		{"some/dir/state.db", ""}, // checked when opened, not when parsed
		{"", "--database is empty: give a file"},
		{"postgres://u:secret@db/sepal", ""}, // checked when opened
		{"host=db dbname=sepal", ""},
	} {
		wantParse(t, []string{"--database", tc.value}, tc.err)
	}
}

// wantParse parses --insecure and args, and wants them taken (wantErr "")
// or refused with a usage error holding wantErr.
func wantParse(t *testing.T, args []string, wantErr string) {
	t.Helper()
	_, err := parseArgs(append([]string{"--insecure"}, args...), io.Discard)
	var ue *cli.UsageError
	switch {
	case wantErr == "" && err != nil:
		t.Errorf("%q: %v", args, err)
	case wantErr != "" && (!errors.As(err, &ue) || !strings.Contains(err.Error(), wantErr)):
		t.Errorf("%q: %v, want a usage error with %q", args, err, wantErr)
	}
}

// runRefused runs the command with --database db and wants it to stop
// before serving with an error holding each of want.
func runRefused(t *testing.T, db string, want ...string) {
	t.Helper()
	runRefusedErr(t, db, want...)
}

// runRefusedErr is runRefused, returning the refusal.
func runRefusedErr(t *testing.T, db string, want ...string) error {
	t.Helper()
	return runRefusedArgs(t, []string{"--database", db}, want...)
}

// runRefusedArgs runs the command with --insecure and args and wants it
// to stop before serving with an error holding each of want.
func runRefusedArgs(t *testing.T, args []string, want ...string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"--insecure",
		"--driver-api-address", "127.0.0.1:0", "--grpc-rere-fleet-api-address", "127.0.0.1:0"}, args...), io.Discard, io.Discard)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("%q: served (err %v), want a refusal", args, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q: %q lacks %q", args, err, w)
		}
	}
	return err
}

// TestDatabaseRefusals: each --database the SuperLink cannot use stops it
// before it listens, with one message that names the file and the fix, and
// the file is left as it was.
func TestDatabaseRefusals(t *testing.T) {
	dir := t.TempDir()
	t.Run("missing folder", func(t *testing.T) {
		p := filepath.Join(dir, "nope", "state.db")
		runRefused(t, p, p, "does not exist: create it (mkdir -p -m 700 "+filepath.Join(dir, "nope")+")")
	})
	t.Run("a folder", func(t *testing.T) {
		runRefused(t, dir, dir, "is a folder: give a file in it, such as "+filepath.Join(dir, "state.db"))
	})
	t.Run("not SQLite", func(t *testing.T) {
		p := filepath.Join(dir, "notes.txt")
		content := []byte("these are my notes, not a database\n")
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		runRefused(t, p, p, "not a SQLite database", "give a new file")
		if got, _ := os.ReadFile(p); !bytes.Equal(got, content) {
			t.Error("the file was changed")
		}
	})
	t.Run("SQLite but not ours", func(t *testing.T) {
		p := filepath.Join(dir, "flower.db")
		db, err := sql.Open("sqlite", p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`CREATE TABLE node (node_id INTEGER, online_until REAL)`); err != nil {
			t.Fatal(err)
		}
		db.Close()
		runRefused(t, p, p, "holds something other than a Sepal SuperLink state (its tables: node)", "give a new file")
	})
	t.Run("locked by another SuperLink", func(t *testing.T) {
		p := filepath.Join(dir, "busy.db")
		s, err := sqlstate.OpenSQLite(context.Background(), p, quiet)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		runRefused(t, p, p, "in use by another SuperLink: stop that SuperLink first, or give this one another file")
	})
	t.Run("newer schema", func(t *testing.T) {
		p := filepath.Join(dir, "newer.db")
		s, err := sqlstate.OpenSQLite(context.Background(), p, quiet)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		db, err := sql.Open("sqlite", p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, '0099_future.sql', 0)`); err != nil {
			t.Fatal(err)
		}
		db.Close()
		before, _ := os.ReadFile(p)
		runRefused(t, p, p, "written by a newer Sepal (schema version 99; this one knows up to", "upgrade this Sepal, or give another file")
		if after, _ := os.ReadFile(p); !bytes.Equal(before, after) {
			t.Error("the newer file was changed")
		}
	})
	t.Run("read-only", func(t *testing.T) {
		ro := readOnlyDir(t)
		p := filepath.Join(ro, "state.db")
		runRefused(t, p, p, "cannot be written")
	})
}

// readOnlyDir returns a folder holding a state database (state.db) that
// the SuperLink cannot write: a read-only mount when run as root (whom
// file modes do not stop), else a 0400 file in a 0500 folder.
func readOnlyDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	s, err := sqlstate.OpenSQLite(context.Background(), filepath.Join(dir, "state.db"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if os.Geteuid() != 0 {
		os.Chmod(filepath.Join(dir, "state.db"), 0o400)
		os.Chmod(dir, 0o500)
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		return dir
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (root): %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	b, err := os.ReadFile(filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "state.db"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v %s", err, out)
	}
	return mnt
}

// TestObjectDirFlag: --object-dir is for the state in memory; a directory
// objects cannot go to stops the SuperLink before it listens, naming the
// flag, the directory and the fix.
func TestObjectDirFlag(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--object-dir", dir}, ""},
		{[]string{"--object-dir", "memory"}, ""},
		{[]string{"--object-dir", ""}, "--object-dir is empty: give a directory"},
		{[]string{"--object-dir", dir, "--database", filepath.Join(dir, "state.db")}, "--object-dir is for the state in memory"},
		{[]string{"--object-dir", dir, "--database", "postgres://u:secret@db/sepal"}, "postgres://u:xxxxx@db/sepal the objects are kept in the database"},
	} {
		wantParse(t, tc.args, tc.err)
	}
	missing := filepath.Join(dir, "missing")
	runRefusedArgs(t, []string{"--object-dir", missing},
		"--object-dir "+missing+": objects cannot be kept there", "give a writable directory, or --object-dir memory")
}
