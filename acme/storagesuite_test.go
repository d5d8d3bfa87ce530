package acme

// certmagic's expectations of a Storage, as one table that every storage
// runs (certmagic ships no such suite). Each case quotes the doc comment
// of certmagic's Storage or Locker (storage.go, v0.25.6) that it checks.
// The table runs against certmagic.FileStorage too, certmagic's own
// reference implementation, which proves that the table asks for what
// certmagic means and no more.

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// storagePair returns two handles on one empty store, as two replicas
// would hold: locks taken through one must hold against the other.
type storagePair func(t *testing.T) (a, b certmagic.Storage)

type storageCase struct {
	name string
	doc  string // the doc comment checked
	run  func(t *testing.T, a, b certmagic.Storage)
}

// runStorageSuite runs every case of storageCases on a fresh pair.
func runStorageSuite(t *testing.T, newPair storagePair) {
	for _, c := range storageCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a, b := newPair(t)
			c.run(t, a, b)
			if t.Failed() {
				t.Logf("certmagic: %s", c.doc)
			}
		})
	}
}

// A key shaped as certmagic makes them, with characters that a LIKE
// pattern would take for wildcards.
const (
	siteDir  = "certificates/acme-v02.api.letsencrypt.org-directory/superlink.example.org"
	siteCert = siteDir + "/superlink.example.org.crt"
	siteKey  = siteDir + "/superlink.example.org.key"
	oddKey   = "acme/x_y/50%_off"
)

func mustStore(t *testing.T, s certmagic.Storage, key string, value []byte) {
	t.Helper()
	if err := s.Store(context.Background(), key, value); err != nil {
		t.Fatalf("Store(%q): %v", key, err)
	}
}

func mustLoad(t *testing.T, s certmagic.Storage, key string) []byte {
	t.Helper()
	v, err := s.Load(context.Background(), key)
	if err != nil {
		t.Fatalf("Load(%q): %v", key, err)
	}
	return v
}

func wantNotExist(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v, want an error matching fs.ErrNotExist", what, err)
	}
}

func list(t *testing.T, s certmagic.Storage, path string, recursive bool) []string {
	t.Helper()
	keys, err := s.List(context.Background(), path, recursive)
	if err != nil {
		t.Fatalf("List(%q, %v): %v", path, recursive, err)
	}
	sort.Strings(keys)
	return keys
}

var storageCases = []storageCase{
	{
		name: "missing keys are fs.ErrNotExist",
		doc:  "The Load, List, and Stat methods should return fs.ErrNotExist if the key does not exist.",
		run: func(t *testing.T, a, _ certmagic.Storage) {
			ctx := context.Background()
			_, err := a.Load(ctx, siteCert)
			wantNotExist(t, "Load of a missing key", err)
			_, err = a.Stat(ctx, siteCert)
			wantNotExist(t, "Stat of a missing key", err)
			_, err = a.List(ctx, siteDir, false)
			wantNotExist(t, "List of a missing path", err)
			_, err = a.List(ctx, siteDir, true)
			wantNotExist(t, "recursive List of a missing path", err)
			if a.Exists(ctx, siteCert) {
				t.Errorf("Exists of a missing key is true")
			}
		},
	},
	{
		name: "store then load",
		doc:  "Store puts value at key. It creates the key if it does not exist and overwrites any existing value at this key. Load() should always return the value from the last call to Store() for a given key.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			mustStore(t, a, siteCert, []byte("first"))
			if got := mustLoad(t, b, siteCert); string(got) != "first" {
				t.Errorf("Load through the other handle = %q, want %q", got, "first")
			}
			mustStore(t, b, siteCert, []byte("second"))
			if got := mustLoad(t, a, siteCert); string(got) != "second" {
				t.Errorf("Load after overwrite = %q, want %q", got, "second")
			}
			big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 64<<10) // binary, 256 KiB
			mustStore(t, a, oddKey, big)
			if got := mustLoad(t, a, oddKey); !bytes.Equal(got, big) {
				t.Errorf("a binary value came back changed (%d bytes, want %d)", len(got), len(big))
			}
			mustStore(t, a, siteKey, []byte{})
			if got := mustLoad(t, a, siteKey); len(got) != 0 {
				t.Errorf("an empty value came back as %q", got)
			}
		},
	},
	{
		name: "files and directories",
		doc:  "A \"file\" is a key with a value associated with it. A \"directory\" is a key with no value, but which may be the prefix of other keys. Exists returns true if the key exists either as a directory (prefix to other keys) or a file.",
		run: func(t *testing.T, a, _ certmagic.Storage) {
			ctx := context.Background()
			before := time.Now().Add(-time.Minute)
			mustStore(t, a, siteCert, []byte("cert"))
			for _, k := range []string{siteCert, siteDir, "certificates"} {
				if !a.Exists(ctx, k) {
					t.Errorf("Exists(%q) is false after Store(%q)", k, siteCert)
				}
			}
			fi, err := a.Stat(ctx, siteCert)
			if err != nil || fi.Key != siteCert || !fi.IsTerminal || fi.Size != 4 || fi.Modified.Before(before) || fi.Modified.After(time.Now().Add(time.Minute)) {
				t.Errorf("Stat(file) = %+v, %v; want Key %q, IsTerminal, Size 4, Modified now", fi, err, siteCert)
			}
			fi, err = a.Stat(ctx, siteDir)
			if err != nil || fi.Key != siteDir || fi.IsTerminal {
				t.Errorf("Stat(directory) = %+v, %v; want Key %q and IsTerminal false", fi, err, siteDir)
			}
		},
	},
	{
		name: "prefix is per component",
		doc:  "A \"prefix\" of a key is defined on a component basis, e.g. \"a\" is a prefix of \"a/b\" but not \"ab/c\".",
		run: func(t *testing.T, a, _ certmagic.Storage) {
			ctx := context.Background()
			mustStore(t, a, "a/b", []byte("1"))
			mustStore(t, a, "ab/c", []byte("2"))
			mustStore(t, a, "a.b/c", []byte("3"))
			if got := list(t, a, "a", true); !slices.Equal(got, []string{"a/b"}) {
				t.Errorf("List(a, true) = %q, want [a/b]", got)
			}
			if err := a.Delete(ctx, "a"); err != nil {
				t.Fatal(err)
			}
			if a.Exists(ctx, "a/b") {
				t.Errorf("Delete(a) left a/b")
			}
			if !a.Exists(ctx, "ab/c") || !a.Exists(ctx, "a.b/c") {
				t.Errorf("Delete(a) removed ab/c or a.b/c, which a is not a prefix of")
			}
		},
	},
	{
		name: "list",
		doc:  "List returns all keys in the given path. If recursive is true, non-terminal keys will be enumerated (i.e. \"directories\" should be walked); otherwise, only keys prefixed exactly by prefix will be listed.",
		run: func(t *testing.T, a, _ certmagic.Storage) {
			for _, k := range []string{"d/k1", "d/k/a/b", "d/k/c", "d/x_y/z", "dx/no"} {
				mustStore(t, a, k, []byte(k))
			}
			if got, want := list(t, a, "d", false), []string{"d/k", "d/k1", "d/x_y"}; !slices.Equal(got, want) {
				t.Errorf("List(d, false) = %q, want %q", got, want)
			}
			if got, want := list(t, a, "d", true), []string{"d/k", "d/k/a", "d/k/a/b", "d/k/c", "d/k1", "d/x_y", "d/x_y/z"}; !slices.Equal(got, want) {
				t.Errorf("List(d, true) = %q, want %q", got, want)
			}
			if got, want := list(t, a, "d/k", false), []string{"d/k/a", "d/k/c"}; !slices.Equal(got, want) {
				t.Errorf("List(d/k, false) = %q, want %q", got, want)
			}
			if got := list(t, a, "d/k1", false); len(got) != 0 {
				t.Errorf("List of a file = %q, want nothing", got)
			}
		},
	},
	{
		name: "delete",
		doc:  "Delete deletes the named key. If the name is a directory (i.e. prefix of other keys), all keys prefixed by this key should be deleted. It is not an error if the key does not exist (including when it was already deleted); return nil in that case.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			ctx := context.Background()
			mustStore(t, a, siteCert, []byte("c"))
			mustStore(t, a, siteKey, []byte("k"))
			mustStore(t, a, oddKey, []byte("o"))
			if err := a.Delete(ctx, siteCert); err != nil {
				t.Fatalf("Delete(file): %v", err)
			}
			_, err := b.Load(ctx, siteCert)
			wantNotExist(t, "Load after Delete", err)
			if err := a.Delete(ctx, siteCert); err != nil {
				t.Errorf("Delete of a deleted key: %v, want nil", err)
			}
			if err := a.Delete(ctx, "nothing/here"); err != nil {
				t.Errorf("Delete of a missing key: %v, want nil", err)
			}
			if !b.Exists(ctx, siteKey) {
				t.Fatalf("Delete(file) removed its sibling")
			}
			if err := a.Delete(ctx, "certificates"); err != nil {
				t.Fatalf("Delete(directory): %v", err)
			}
			if b.Exists(ctx, siteKey) || b.Exists(ctx, siteDir) || b.Exists(ctx, "certificates") {
				t.Errorf("Delete(directory) left keys under it")
			}
			if got := mustLoad(t, b, oddKey); string(got) != "o" {
				t.Errorf("Delete(certificates) touched %s", oddKey)
			}
		},
	},
	{
		name: "concurrent stores do not corrupt",
		doc:  "Implementations of Storage MUST be safe for concurrent use ... concurrent calls to Store() should not corrupt a file.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			const n = 8
			values := make([][]byte, n)
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				values[i] = bytes.Repeat([]byte{byte('a' + i)}, 32<<10)
				s := a
				if i%2 == 1 {
					s = b
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- s.Store(context.Background(), siteCert, values[i])
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			got := mustLoad(t, a, siteCert)
			if !slices.ContainsFunc(values, func(v []byte) bool { return bytes.Equal(v, got) }) {
				t.Errorf("after concurrent stores the value is none of them (%d bytes, starting %q)", len(got), got[:min(8, len(got))])
			}
		},
	},
	{
		name: "lock excludes the other replica",
		doc:  "Lock acquires the lock for name, blocking until the lock can be obtained or an error is returned. Only one lock for the given name can exist at a time. A call to Lock for a name which already exists blocks until the named lock is released.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			ctx := context.Background()
			if err := a.Lock(ctx, "issue_cert_superlink.example.org"); err != nil {
				t.Fatal(err)
			}
			got := make(chan error, 1)
			go func() { got <- b.Lock(ctx, "issue_cert_superlink.example.org") }()
			select {
			case err := <-got:
				t.Fatalf("the other replica's Lock returned (%v) while the lock was held", err)
			case <-time.After(1500 * time.Millisecond):
			}
			// Another name is independent.
			octx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := b.Lock(octx, "issue_cert_other.example.org"); err != nil {
				t.Errorf("Lock of another name: %v", err)
			} else if err := b.Unlock(ctx, "issue_cert_other.example.org"); err != nil {
				t.Errorf("Unlock of another name: %v", err)
			}
			cancel()
			released := time.Now()
			if err := a.Unlock(ctx, "issue_cert_superlink.example.org"); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("Lock after release: %v", err)
				}
				t.Logf("the waiting Lock returned %v after the release", time.Since(released).Round(time.Millisecond))
			case <-time.After(5 * time.Second):
				t.Fatalf("Lock still blocked 5s after the holder released it")
			}
			if err := b.Unlock(ctx, "issue_cert_superlink.example.org"); err != nil {
				t.Error(err)
			}
		},
	},
	{
		name: "lock honours cancellation",
		doc:  "Implementations should honor context cancellation.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			ctx := context.Background()
			if err := a.Lock(ctx, "held"); err != nil {
				t.Fatal(err)
			}
			defer a.Unlock(ctx, "held")
			cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := b.Lock(cctx, "held")
			if err == nil {
				b.Unlock(ctx, "held")
				t.Fatalf("Lock of a held name returned nil after its context ended")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("Lock returned %v after its context ended (500ms)", d)
			}
		},
	},
	{
		name: "mutual exclusion under contention",
		doc:  "Locker ... provides a distributed named-mutex service so that multiple consumers can coordinate tasks.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			contend(t, []certmagic.Locker{a, b, a, b}, "contended", 2, 20*time.Millisecond)
		},
	},
	{
		name: "trylock",
		doc:  "TryLock attempts to acquire the lock for name, and returns a boolean that reports whether the lock was successfully aquired or not.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			ta, ok1 := a.(certmagic.TryLocker)
			tb, ok2 := b.(certmagic.TryLocker)
			if !ok1 || !ok2 {
				t.Skipf("%T is not a certmagic.TryLocker", a)
			}
			ctx := context.Background()
			if ok, err := ta.TryLock(ctx, "ari_x"); !ok || err != nil {
				t.Fatalf("TryLock of a free name: %v, %v", ok, err)
			}
			start := time.Now()
			if ok, err := tb.TryLock(ctx, "ari_x"); ok || err != nil {
				t.Fatalf("TryLock of a held name: %v, %v; want false, nil", ok, err)
			}
			// It may try more than once (FileStorage tries twice, a
			// second apart), but does not wait for the holder.
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("TryLock of a held name waited %v", d)
			}
			if err := ta.Unlock(ctx, "ari_x"); err != nil {
				t.Fatal(err)
			}
			if ok, err := tb.TryLock(ctx, "ari_x"); !ok || err != nil {
				t.Fatalf("TryLock after release: %v, %v", ok, err)
			}
			if err := tb.Unlock(ctx, "ari_x"); err != nil {
				t.Fatal(err)
			}
		},
	},
	{
		name: "certmagic uses it",
		doc:  "Processes running in a cluster should use the same Storage value (with the same configuration) in order to share certificates and other TLS resources with the cluster.",
		run: func(t *testing.T, a, b certmagic.Storage) {
			// A certificate stored through one handle as a previous run
			// left it is loaded by a Source on the other.
			pair := seedCertmagicStorage(t, a, "shared.test")
			// The folder is neither needed nor made.
			folder := filepath.Join(t.TempDir(), "unused")
			checkServesStored(t, b, folder, "shared.test", pair)
			if _, err := os.Stat(folder); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the Storage folder was made beside CertmagicStorage (%v)", err)
			}
		},
	},
}

// contend runs one goroutine per locker (a locker may appear more than
// once), each taking the named lock rounds times and holding it for hold,
// and checks that no two held it at once and that every critical section
// ran.
func contend(t *testing.T, lockers []certmagic.Locker, name string, rounds int, hold time.Duration) {
	t.Helper()
	var inside, maxInside, sections atomic.Int32
	var wg sync.WaitGroup
	for _, l := range lockers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				err := l.Lock(ctx, name)
				cancel()
				if err != nil {
					t.Error(err)
					return
				}
				n := inside.Add(1)
				for m := maxInside.Load(); n > m && !maxInside.CompareAndSwap(m, n); m = maxInside.Load() {
				}
				time.Sleep(hold)
				inside.Add(-1)
				sections.Add(1)
				if err := l.Unlock(context.Background(), name); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if m := maxInside.Load(); m != 1 {
		t.Errorf("%d holders of lock %q at once, want 1", m, name)
	}
	if n, want := sections.Load(), int32(len(lockers)*rounds); n != want {
		t.Errorf("%d critical sections ran, want %d", n, want)
	}
}

// FileStorage, certmagic's own, passes the table: the table is right.
func TestStorageSuiteFileStorage(t *testing.T) {
	t.Parallel()
	runStorageSuite(t, func(t *testing.T) (certmagic.Storage, certmagic.Storage) {
		dir := t.TempDir()
		return &certmagic.FileStorage{Path: dir}, &certmagic.FileStorage{Path: dir}
	})
}
