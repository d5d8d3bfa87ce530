package certfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The environment of the helper process that TestWriteSetKilledAtEveryStep
// runs: this test binary, writing newSet into the folder and killing itself
// with SIGKILL after the given step.
const (
	helperDirEnv  = "SEPAL_TEST_WRITESET_DIR"
	helperStepEnv = "SEPAL_TEST_WRITESET_KILL_AFTER"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperDirEnv); dir != "" {
		os.Exit(writeSetHelper(dir))
	}
	os.Exit(m.Run())
}

// writeSetHelper runs in the helper process: it writes newSet to dir and
// SIGKILLs itself after step n. It returns 0 when the write ended before
// step n (the parent then knows it has seen every step).
func writeSetHelper(dir string) int {
	n, _ := strconv.Atoi(os.Getenv(helperStepEnv))
	count := 0
	stepHook = func(op string) {
		count++
		if count == n {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	if err := WriteSet(dir, newSet); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// Two sets of the same names: a key that must stay private, a certificate,
// and a third file, with contents that differ and cannot be mistaken for a
// part of each other.
var (
	oldSet = []SetFile{
		{Name: "server.key", Data: []byte("-----BEGIN PRIVATE KEY-----\nold key\n-----END PRIVATE KEY-----\n"), Mode: 0o600},
		{Name: "server.pem", Data: []byte("-----BEGIN CERTIFICATE-----\nold certificate\n-----END CERTIFICATE-----\n"), Mode: 0o644},
		{Name: "ca.crt", Data: []byte("-----BEGIN CERTIFICATE-----\nold CA\n-----END CERTIFICATE-----\n"), Mode: 0o644},
	}
	newSet = []SetFile{
		{Name: "server.key", Data: []byte("-----BEGIN PRIVATE KEY-----\nnew key, longer than the old one\n-----END PRIVATE KEY-----\n"), Mode: 0o600},
		{Name: "server.pem", Data: []byte("-----BEGIN CERTIFICATE-----\nnew certificate, longer too\n-----END CERTIFICATE-----\n"), Mode: 0o644},
		{Name: "ca.crt", Data: []byte("-----BEGIN CERTIFICATE-----\nnew CA, longer still\n-----END CERTIFICATE-----\n"), Mode: 0o644},
	}
)

// which says, for each file of the set, whether dir holds its old content
// ("old"), its new content ("new"), nothing ("none"), or something else
// (a part, "other").
func which(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for i, f := range newSet {
		b, err := os.ReadFile(filepath.Join(dir, f.Name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			m[f.Name] = "none"
		case err != nil:
			t.Fatal(err)
		case bytes.Equal(b, f.Data):
			m[f.Name] = "new"
		case bytes.Equal(b, oldSet[i].Data):
			m[f.Name] = "old"
		default:
			m[f.Name] = "other"
		}
	}
	return m
}

// all reports whether every file of m is state.
func all(m map[string]string, state string) bool {
	for _, s := range m {
		if s != state {
			return false
		}
	}
	return true
}

// checkPrivate fails when dir is open to others or a file holding a
// private key (a temporary one too) is.
func checkPrivate(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("folder mode %04o, want 0700", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		b, _ := os.ReadFile(p)
		fi, _ := os.Stat(p)
		if bytes.Contains(b, []byte("PRIVATE KEY")) && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s holds a key with mode %04o", e.Name(), fi.Mode().Perm())
		}
	}
}

// names lists the folder.
func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range entries {
		n = append(n, e.Name())
	}
	return n
}

func TestWriteSet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "certificates")
	if err := WriteSet(dir, oldSet); err != nil {
		t.Fatal(err)
	}
	if w := which(t, dir); !all(w, "old") {
		t.Fatalf("after the first write: %v", w)
	}
	checkPrivate(t, dir)
	for _, f := range oldSet {
		fi, _ := os.Stat(filepath.Join(dir, f.Name))
		if fi.Mode().Perm() != f.Mode {
			t.Errorf("%s mode %04o, want %04o", f.Name, fi.Mode().Perm(), f.Mode)
		}
	}
	if err := WriteSet(dir, newSet); err != nil {
		t.Fatal(err)
	}
	if w := which(t, dir); !all(w, "new") {
		t.Fatalf("after the second write: %v", w)
	}
	if n := names(t, dir); len(n) != 3 {
		t.Errorf("the folder holds %v, want the three files only", n)
	}
	// A set of some of the names replaces those and keeps the others.
	if err := WriteSet(dir, oldSet[:1]); err != nil {
		t.Fatal(err)
	}
	if w := which(t, dir); w["server.key"] != "old" || w["server.pem"] != "new" {
		t.Errorf("a one-file set: %v", w)
	}
}

func TestWriteSetRefusesBadNames(t *testing.T) {
	dir := t.TempDir()
	for _, files := range [][]SetFile{
		nil,
		{{Name: ""}},
		{{Name: "a/b"}},
		{{Name: ".hidden"}},
		{{Name: ".."}},
		{{Name: "x"}, {Name: "x"}},
	} {
		if err := WriteSet(dir, files); err == nil {
			t.Errorf("WriteSet(%v) succeeded", files)
		}
	}
	if n := names(t, dir); len(n) != 0 {
		t.Errorf("refused writes left %v", n)
	}
}

// A journal and some temporary files left as a killed writer leaves them:
// RecoverSet completes the committed write, and removes what an
// uncommitted one left.
func TestRecoverSet(t *testing.T) {
	t.Run("committed, two of three renamed", func(t *testing.T) {
		dir := t.TempDir()
		if err := WriteSet(dir, oldSet); err != nil {
			t.Fatal(err)
		}
		write(t, dir, "server.key", newSet[0].Data)
		write(t, dir, "server.pem", newSet[1].Data)
		write(t, dir, ".ca.crt"+setTempSuffix, newSet[2].Data)
		write(t, dir, setJournal, []byte(setJournalV1+"\nserver.key\nserver.pem\nca.crt\n"))
		if !PendingSet(dir) {
			t.Error("PendingSet = false with a journal")
		}
		r, err := RecoverSet(dir)
		if err != nil {
			t.Fatal(err)
		}
		if w := which(t, dir); !all(w, "new") || len(r.Completed) != 3 || len(r.Removed) != 0 {
			t.Errorf("after recovery: %v, %+v", w, r)
		}
		if !strings.Contains(r.String(), "completed an interrupted write of server.key, server.pem, ca.crt") {
			t.Errorf("Recovery.String() = %q", r)
		}
		if n := names(t, dir); len(n) != 3 || PendingSet(dir) {
			t.Errorf("left %v", n)
		}
	})
	t.Run("not committed", func(t *testing.T) {
		dir := t.TempDir()
		if err := WriteSet(dir, oldSet); err != nil {
			t.Fatal(err)
		}
		write(t, dir, ".server.key"+setTempSuffix, newSet[0].Data)
		write(t, dir, ".server.pem"+setTempSuffix, newSet[1].Data[:10])
		write(t, dir, setJournal+setTempSuffix, []byte(setJournalV1+"\nserver.k"))
		old := write(t, dir, ".server.key.tmp-123456", []byte("a key from a killed WriteFileAtomic"))
		young := write(t, dir, ".ca.crt.tmp-654321", []byte("a WriteFileAtomic at work"))
		twoMinutesAgo := time.Now().Add(-2 * time.Minute)
		if err := os.Chtimes(old, twoMinutesAgo, twoMinutesAgo); err != nil {
			t.Fatal(err)
		}
		r, err := RecoverSet(dir)
		if err != nil {
			t.Fatal(err)
		}
		if w := which(t, dir); !all(w, "old") || len(r.Completed) != 0 || len(r.Removed) != 4 {
			t.Errorf("after recovery: %v, %+v", w, r)
		}
		if _, err := os.Stat(young); err != nil {
			t.Errorf("a fresh WriteFileAtomic temporary file was removed: %v", err)
		}
		if !strings.Contains(r.String(), "removed 4 temporary file(s)") {
			t.Errorf("Recovery.String() = %q", r)
		}
	})
	t.Run("journal names a file that is gone", func(t *testing.T) {
		dir := t.TempDir()
		write(t, dir, setJournal, []byte(setJournalV1+"\nserver.key\n"))
		_, err := RecoverSet(dir)
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "server.key")) || !strings.Contains(err.Error(), "changed by hand") {
			t.Errorf("RecoverSet: %v", err)
		}
		// Check names the interrupted write.
		_, err = Check("", filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"), time.Time{})
		var fe *FileError
		if !errors.As(err, &fe) || !fe.Interrupted || !strings.Contains(err.Error(), "was interrupted") || !strings.Contains(err.Error(), RemedyCompleteWrite.String()) {
			t.Errorf("Check in a folder with a pending write: %v", err)
		}
	})
	t.Run("missing folder", func(t *testing.T) {
		r, err := RecoverSet(filepath.Join(t.TempDir(), "nope"))
		if err != nil || !r.Empty() {
			t.Errorf("RecoverSet of a missing folder: %+v, %v", r, err)
		}
	})
}

// A writer holding the lock keeps a second one out, at once.
func TestWriteSetLock(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = WriteSet(dir, newSet)
	if err == nil || !strings.Contains(err.Error(), "another process is writing") {
		t.Errorf("WriteSet while locked: %v", err)
	}
	unlock()
	if err := WriteSet(dir, newSet); err != nil {
		t.Errorf("WriteSet once unlocked: %v", err)
	}
}

// TestWriteSetKilledAtEveryStep kills a writer (SIGKILL, in a process of
// its own) after each of its steps in turn, over an existing set and in a
// new folder, and checks what it leaves: the folder and every key private,
// no file cut short, the old set whole unless the write was committed, and
// after RecoverSet exactly one whole set and nothing else.
func TestWriteSetKilledAtEveryStep(t *testing.T) {
	for _, fresh := range []bool{false, true} {
		t.Run(fmt.Sprintf("fresh=%v", fresh), func(t *testing.T) {
			var ops []string
			for n := 1; ; n++ {
				dir := filepath.Join(t.TempDir(), "certificates")
				if !fresh {
					if err := WriteSet(dir, oldSet); err != nil {
						t.Fatal(err)
					}
				}
				cmd := exec.Command(os.Args[0])
				cmd.Env = append(os.Environ(), helperDirEnv+"="+dir, helperStepEnv+"="+strconv.Itoa(n))
				out, err := cmd.CombinedOutput()
				if err == nil {
					if w := which(t, dir); !all(w, "new") {
						t.Fatalf("a write that ran to its end left %v", w)
					}
					if n < 10 {
						t.Fatalf("the write ended after %d steps; the hook is not called", n-1)
					}
					t.Logf("killed after each of %d steps", n-1)
					break
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
					t.Fatalf("step %d: the helper did not die by SIGKILL: %v\n%s", n, err, out)
				}
				if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
					continue // killed before the folder was made
				}
				checkPrivate(t, dir)
				w := which(t, dir)
				for name, s := range w {
					if s == "other" {
						t.Errorf("step %d: %s holds neither its old nor its new content", n, name)
					}
				}
				before := "old"
				if fresh {
					before = "none"
				}
				if !PendingSet(dir) && !all(w, before) && !all(w, "new") {
					t.Errorf("step %d: without a journal the set is mixed: %v", n, w)
				}
				committed := PendingSet(dir) || all(w, "new")
				r, err := RecoverSet(dir)
				if err != nil {
					t.Fatalf("step %d: RecoverSet: %v", n, err)
				}
				w = which(t, dir)
				switch {
				case committed && !all(w, "new"):
					t.Errorf("step %d: a committed write was not completed: %v (%+v)", n, w, r)
				case !committed && !all(w, before):
					t.Errorf("step %d: an uncommitted write was not undone: %v (%+v)", n, w, r)
				}
				if got := names(t, dir); len(got) != 3 && !(fresh && !committed && len(got) == 0) {
					t.Errorf("step %d: after RecoverSet the folder holds %v", n, got)
				}
				checkPrivate(t, dir)
				ops = append(ops, fmt.Sprint(committed))
			}
			if !slices.Contains(ops, "true") || !slices.Contains(ops, "false") {
				t.Errorf("the kills did not fall both before and after the commit: %v", ops)
			}
		})
	}
}
