package acme

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/internal/postgres"
	"github.com/sepal-fl/sepal/internal/testkit"
)

func TestMain(m *testing.M) {
	if dsn := os.Getenv("ACME_TEST_LOCK_HOLDER"); dsn != "" {
		lockHolder(dsn)
		return
	}
	pgtest.Main(m)
}

// lockHolder is a replica that takes a lock and hangs on to it until it
// is killed.
func lockHolder(dsn string) {
	s, err := OpenPostgresStorage(context.Background(), dsn, PostgresOptions{LockTTL: 2 * time.Second})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if err := s.Lock(context.Background(), "issue_cert_superlink.example.org"); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("locked", os.Getpid())
	time.Sleep(time.Minute)
	os.Exit(3)
}

func openPG(t *testing.T, dsn string, o PostgresOptions) *PostgresStorage {
	t.Helper()
	s, err := OpenPostgresStorage(context.Background(), dsn, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStorageSuitePostgres(t *testing.T) {
	t.Parallel()
	runStorageSuite(t, func(t *testing.T) (certmagic.Storage, certmagic.Storage) {
		dsn := pgtest.NewDatabase(t)
		o := PostgresOptions{LockPollInterval: 100 * time.Millisecond}
		return openPG(t, dsn, o), openPG(t, dsn, o)
	})
}

// A replica killed while it holds a lock does not block the others for
// longer than its lease: right after the kill the lock is still held;
// within LockTTL (2 s) plus a poll it is taken over, and the take-over is
// logged with the dead holder's pid.
func TestPostgresLockExpiresWhenHolderDies(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	var logs testkit.SyncBuffer
	s := openPG(t, dsn, PostgresOptions{LockPollInterval: 100 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})

	cmd, line := testkit.StartSelf(t, "ACME_TEST_LOCK_HOLDER="+dsn)
	if !strings.HasPrefix(line, "locked ") {
		t.Fatalf("the holder: %q", line)
	}
	pid := strings.TrimPrefix(line, "locked ")

	ctx := context.Background()
	if ok, err := s.TryLock(ctx, "issue_cert_superlink.example.org"); ok || err != nil {
		t.Fatalf("TryLock while a live replica holds the lock: %v, %v", ok, err)
	}
	// Past a few heartbeats (every 500 ms), the live holder keeps it.
	time.Sleep(3 * time.Second)
	if ok, err := s.TryLock(ctx, "issue_cert_superlink.example.org"); ok || err != nil {
		t.Fatalf("TryLock 3s into a 2s lease that the live holder renews: %v, %v", ok, err)
	}

	_ = cmd.Process.Signal(os.Kill)
	_, _ = cmd.Process.Wait()
	killed := time.Now()
	if ok, _ := s.TryLock(ctx, "issue_cert_superlink.example.org"); ok {
		t.Fatalf("the lock was free at once after the kill; its lease should still run")
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Lock(lctx, "issue_cert_superlink.example.org"); err != nil {
		t.Fatalf("the lock of a killed holder was not taken over within 10s: %v", err)
	}
	took := time.Since(killed)
	t.Logf("measured: lock taken over %v after its holder was killed (lease 2s, heartbeat 500ms, poll 100ms)", took.Round(time.Millisecond))
	if took > 2*time.Second+time.Second {
		t.Errorf("take-over took %v, more than the 2s lease plus a second", took)
	}
	if !strings.Contains(logs.String(), "took over a lock") || !strings.Contains(logs.String(), "pid="+pid) {
		t.Errorf("the take-over was not logged with the dead holder's pid %s:\n%s", pid, logs.String())
	}
	if err := s.Unlock(ctx, "issue_cert_superlink.example.org"); err != nil {
		t.Error(err)
	}
}

// Three replicas, three goroutines each, on one lock name: one holder at
// a time, every critical section run.
func TestPostgresConcurrentLockers(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDatabase(t)
	var replicas []certmagic.Locker
	for range 3 {
		replicas = append(replicas, openPG(t, dsn, PostgresOptions{LockPollInterval: 20 * time.Millisecond}))
	}
	var lockers []certmagic.Locker
	for _, r := range replicas {
		lockers = append(lockers, r, r, r)
	}
	contend(t, lockers, "issue_cert_x", 5, 2*time.Millisecond)
}

// A holder whose lease ended (it stalled past LockTTL) finds the lock
// taken: Unlock says so and leaves the new holder's lock alone; Close
// frees the locks a replica holds at once.
func TestPostgresLostLeaseAndClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	a := openPG(t, dsn, PostgresOptions{})
	b := openPG(t, dsn, PostgresOptions{})
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	// As if a had stalled past its lease.
	if _, err := a.pool.Exec(ctx, "UPDATE acme_locks SET expires = now() - interval '1 second'"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "l"); !ok || err != nil {
		t.Fatalf("TryLock of an ended lease: %v, %v", ok, err)
	}
	if err := a.Unlock(ctx, "l"); err == nil || !strings.Contains(err.Error(), "another replica may hold") {
		t.Errorf("Unlock of a lost lease: %v", err)
	}
	if ok, _ := a.TryLock(ctx, "l"); ok {
		t.Fatalf("the old holder's Unlock released the new holder's lock")
	}
	if err := a.Unlock(ctx, "never-locked"); err == nil {
		t.Errorf("Unlock of a lock never taken returned nil")
	}
	b.Close()
	if ok, err := a.TryLock(ctx, "l"); !ok || err != nil {
		t.Fatalf("after the holder's Close the lock is still held: %v, %v", ok, err)
	}
	a.Unlock(ctx, "l")
}

// Two acquisitions of one lock in one process, the first after its lease
// ended: the first Unlock ends the lost one and leaves the second's lock
// (held, renewed, released by the second Unlock); the lost one's
// heartbeat is stopped when the lock is taken over.
func TestPostgresLostLeaseInProcess(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	s := openPG(t, dsn, PostgresOptions{LockTTL: 2 * time.Second})
	other := openPG(t, dsn, PostgresOptions{})
	if err := s.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	// As if the first holder had stalled past its lease.
	if _, err := s.pool.Exec(ctx, "UPDATE acme_locks SET expires = now() - interval '1 second'"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.TryLock(ctx, "l"); !ok || err != nil {
		t.Fatalf("the second TryLock, after the first lease ended: %v, %v", ok, err)
	}
	s.mu.Lock()
	hs := append([]*heldLock(nil), s.held["l"]...)
	s.mu.Unlock()
	if len(hs) != 2 || hs[0].owner == hs[1].owner {
		t.Fatalf("held: %d acquisitions, want 2 with their own owners", len(hs))
	}
	select {
	case <-hs[0].done:
	default:
		t.Errorf("the lost acquisition's heartbeat still runs")
	}
	if err := s.Unlock(ctx, "l"); err == nil || !strings.Contains(err.Error(), "lease had ended") {
		t.Errorf("the first Unlock (its lease lost): %v", err)
	}
	var owner string
	if err := s.pool.QueryRow(ctx, "SELECT owner FROM acme_locks WHERE name = 'l'").Scan(&owner); err != nil || owner != hs[1].owner {
		t.Fatalf("after the first Unlock the lock is %q (%v), want the second acquisition's %q", owner, err, hs[1].owner)
	}
	// Past the 2s lease the second acquisition still holds it: renewed.
	time.Sleep(2500 * time.Millisecond)
	if ok, err := other.TryLock(ctx, "l"); ok || err != nil {
		t.Fatalf("another replica took the lock of the second acquisition: %v, %v", ok, err)
	}
	if err := s.Unlock(ctx, "l"); err != nil {
		t.Fatalf("the second Unlock: %v", err)
	}
	if ok, err := other.TryLock(ctx, "l"); !ok || err != nil {
		t.Fatalf("after the second Unlock the lock is not free: %v, %v", ok, err)
	}
	if err := s.Unlock(ctx, "l"); err == nil {
		t.Errorf("a third Unlock returned nil")
	}
	other.Unlock(ctx, "l")
}

// Lock and TryLock fail after Close; a TryLock racing Close either is
// released by Close or gives its lock back itself, so that no lock is
// left held, and no heartbeat runs against the closed pool.
func TestPostgresLockAfterClose(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	watcher := openPG(t, dsn, PostgresOptions{})
	for round := range 5 {
		s := openPG(t, dsn, PostgresOptions{})
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() { _, _ = s.TryLock(ctx, fmt.Sprintf("race-%d", i)) })
		}
		time.Sleep(time.Duration(round) * time.Millisecond) // Close before, among and after the TryLocks
		s.Close()
		wg.Wait()
		s.mu.Lock()
		left := len(s.held)
		s.mu.Unlock()
		if left != 0 {
			t.Fatalf("%d locks registered after Close", left)
		}
		var n int
		if err := watcher.pool.QueryRow(ctx, "SELECT count(*) FROM acme_locks WHERE owner LIKE $1 || '%'", s.owner).Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d locks of a closed storage left in the table (%v)", n, err)
		}
		if ok, err := s.TryLock(ctx, "after"); ok || err == nil || !strings.Contains(err.Error(), "storage is closed") {
			t.Fatalf("TryLock after Close: %v, %v", ok, err)
		}
		if err := s.Lock(ctx, "after"); err == nil || !strings.Contains(err.Error(), "storage is closed") {
			t.Fatalf("Lock after Close: %v", err)
		}
	}
}

// The database going away is an error, never "not found" (which would
// make certmagic order a new certificate), and the storage works again
// when it comes back, without being reopened.
func TestPostgresDatabaseGoesAway(t *testing.T) {
	t.Parallel()
	srv := pgtest.NewServer(t)
	dsn := srv.NewDatabase(t)
	s := openPG(t, dsn, PostgresOptions{})
	ctx := context.Background()
	mustStore(t, s, siteCert, []byte("kept"))
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err := s.Load(qctx, siteCert)
	cancel()
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load with the database down: %v; want an error that is not fs.ErrNotExist", err)
	}
	if _, err := s.List(ctx, "certificates", true); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List with the database down: %v", err)
	}
	if err := s.Lock(ctx, "x"); err == nil {
		t.Errorf("Lock with the database down returned nil")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := mustLoad(t, s, siteCert); string(got) != "kept" {
		t.Errorf("after the database came back: %q", got)
	}
}

// Start-up: replicas opening an empty database at once all succeed; a
// database from a newer Sepal and bad credentials are refused with one
// message naming the flag, without the password.
func TestPostgresStartup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := OpenPostgresStorage(ctx, dsn, PostgresOptions{})
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: %v", i, err)
		}
	}
	s := openPG(t, dsn, PostgresOptions{})
	if strings.Contains(s.String(), pgtest.Shared(t).Password) || !strings.Contains(s.String(), "xxxxx") {
		t.Errorf("String() = %q: the password is not redacted", s.String())
	}
	if _, err := s.pool.Exec(ctx, "UPDATE sepal_schema SET version = 99 WHERE name = 'acme storage'"); err != nil {
		t.Fatal(err)
	}
	_, err := OpenPostgresStorage(ctx, dsn, PostgresOptions{What: "--acme-storage"})
	if !errors.Is(err, postgres.ErrNewerSchema) || !strings.Contains(err.Error(), "--acme-storage") || !strings.Contains(err.Error(), "version 99") {
		t.Errorf("a database from a newer Sepal: %v", err)
	}
	pw := pgtest.Shared(t).Password
	_, err = OpenPostgresStorage(ctx, strings.Replace(dsn, pw, "wrong", 1), PostgresOptions{What: "--acme-storage"})
	if err == nil || !strings.Contains(err.Error(), "--acme-storage postgres://postgres:xxxxx@") || !strings.Contains(err.Error(), "refused the credentials") {
		t.Errorf("wrong password: %v", err)
	}
}

// A certificate renewed by one replica into the shared storage is served
// by another within StorageCheckInterval; one caught half-written (the
// certificate stored, its key not yet) is not served.
func TestRenewalInStorageReachesReplicas(t *testing.T) {
	t.Parallel()
	for _, store := range []string{"postgres", "folder"} {
		t.Run(store, func(t *testing.T) {
			var a, b certmagic.Storage
			if store == "postgres" {
				dsn := pgtest.NewDatabase(t)
				a, b = openPG(t, dsn, PostgresOptions{}), openPG(t, dsn, PostgresOptions{})
			} else {
				dir := t.TempDir()
				a, b = &certmagic.FileStorage{Path: dir}, &certmagic.FileStorage{Path: dir}
			}
			const domain = "replicated.test"
			first := seedCertmagicStorage(t, a, domain)
			var logs testkit.SyncBuffer
			const interval = 200 * time.Millisecond
			src, err := New(context.Background(), Options{Domains: []string{domain}, CA: unreachableCA,
				Storage: t.TempDir(), CertmagicStorage: b, TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 10 * time.Second,
				StorageCheckInterval: interval, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			serial := func() string {
				c, err := src.GetCertificate(&tls.ClientHelloInfo{ServerName: domain})
				if err != nil {
					t.Fatal(err)
				}
				return c.Leaf.SerialNumber.Text(16)
			}
			if got := serial(); got != first.Leaf.SerialNumber.Text(16) {
				t.Fatalf("serving %s, want the stored %x", got, first.Leaf.SerialNumber)
			}

			// The other replica renews: a certificate that expires later,
			// caught with its key not yet written.
			renewed := newTestPair(t, domain, first.Leaf.NotAfter.Add(time.Hour))
			storeCertmagicPair(t, a, domain, renewed, false)
			time.Sleep(5 * interval)
			if got := serial(); got != first.Leaf.SerialNumber.Text(16) {
				t.Fatalf("served %s, a certificate whose key was not stored yet", got)
			}
			stored := time.Now()
			storeCertmagicPair(t, a, domain, renewed, true)
			want := renewed.Leaf.SerialNumber.Text(16)
			for serial() != want {
				if time.Since(stored) > 10*interval {
					t.Fatalf("the renewed certificate was not served %v after it was stored:\n%s", time.Since(stored), logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("measured: renewed certificate served %v after it was stored (StorageCheckInterval %v)",
				time.Since(stored).Round(time.Millisecond), interval)
			if !strings.Contains(logs.String(), "renewed by another process") {
				t.Errorf("the switch was not logged:\n%s", logs.String())
			}
			if n := len(src.b.(*certmagicBackend).cache.AllMatchingCertificates(domain)); n != 1 {
				t.Errorf("%d certificates cached for %s, want the renewed one only", n, domain)
			}
		})
	}
}
