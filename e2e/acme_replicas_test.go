package e2e

// Three SuperLinks with --acme-domain on one PostgreSQL (--acme-storage
// postgres://...) behave as one: one order, one certificate served by
// all, the CA's validation answered by whichever replica it reaches,
// renewals served by all, and a replica killed while it holds the
// renewal lock does not stop the next renewal.
//
// Pebble connects for validation to one port of 127.0.0.1. A small TCP
// proxy there stands for the load balancer in front of the replicas: it
// sends each validation connection to a replica that does NOT hold
// certmagic's issue lock (read from the acme_locks table), so every
// validation is answered from the challenge token in the shared storage,
// never from the memory of the replica that placed the order.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sepal-fl/sepal/internal/pgtest"
)

const issueLock = "issue_cert_" + acmeDomain

// replicaSet is three (or more) SuperLinks on one database.
type replicaSet struct {
	t      *testing.T
	db     *pgxpool.Pool
	links  []*acmeLink
	target func(l *acmeLink) string // where the proxy sends a validation
	roots  *x509.CertPool

	mu     sync.Mutex
	killed map[int]bool // replica index -> killed by the test
	routes []route
}

// route is one validation connection the proxy forwarded.
type route struct {
	holder, target int // replica indexes; holder -1 when no replica held the lock
	at             time.Time
	mark           int // length of the target's output when the connection came
}

var pidRE = regexp.MustCompile(`\bpid=(\d+)\b`)

// holder returns the index of the replica that holds the issue lock (an
// unexpired row in acme_locks), or -1.
func (rs *replicaSet) holder(ctx context.Context) int {
	var owner string
	err := rs.db.QueryRow(ctx, "SELECT owner FROM acme_locks WHERE name = $1 AND expires > now()", issueLock).Scan(&owner)
	if err != nil {
		return -1
	}
	return rs.byPid(owner)
}

// byPid returns the index of the replica whose pid an owner string names,
// or -1.
func (rs *replicaSet) byPid(owner string) int {
	m := pidRE.FindStringSubmatch(owner)
	if m == nil {
		return -1
	}
	pid, _ := strconv.Atoi(m[1])
	for i, l := range rs.links {
		if l.cmd.Process.Pid == pid {
			return i
		}
	}
	return -1
}

// serveProxy accepts on ln and forwards each connection to a live replica
// that accepts connections, other than the lock holder when another does.
func (rs *replicaSet) serveProxy(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			h := rs.holder(ctx)
			cancel()
			// Like a load balancer's health check: a replica that does not
			// accept yet (still starting) is passed over; the holder only
			// when no other replica accepts within 5 s.
			rs.mu.Lock()
			var order []int
			for i := range rs.links {
				if i != h && !rs.killed[i] {
					order = append(order, i)
				}
			}
			if h >= 0 && !rs.killed[h] {
				order = append(order, h)
			}
			rs.mu.Unlock()
			var u net.Conn
			target := -1
			// Replicas started with the holder may take a moment to listen:
			// wait up to 5 s for another before falling back on the holder.
			for deadline := time.Now().Add(5 * time.Second); target < 0; time.Sleep(50 * time.Millisecond) {
				for _, i := range order {
					if i == h && time.Now().Before(deadline) {
						continue
					}
					var err error
					if u, err = net.DialTimeout("tcp", rs.target(rs.links[i]), time.Second); err == nil {
						target = i
						break
					}
				}
				if time.Now().After(deadline) {
					break
				}
			}
			if target < 0 {
				return
			}
			defer u.Close()
			rs.mu.Lock()
			rs.routes = append(rs.routes, route{holder: h, target: target, at: time.Now(), mark: len(rs.links[target].out.String())})
			rs.mu.Unlock()
			done := make(chan struct{}, 2)
			go func() { io.Copy(u, c); done <- struct{}{} }()
			go func() { io.Copy(c, u); done <- struct{}{} }()
			<-done
		}()
	}
}

// serials returns the serial each live replica serves (hex; "" where the
// handshake failed).
func (rs *replicaSet) serials() []string {
	out := make([]string, len(rs.links))
	for i, l := range rs.links {
		rs.mu.Lock()
		dead := rs.killed[i]
		rs.mu.Unlock()
		if dead {
			continue
		}
		if leaf, err := handshakeTLS(l.fleet, acmeTLS(rs.roots, acmeDomain)); err == nil {
			out[i] = leaf.SerialNumber.Text(16)
		}
	}
	return out
}

// waitSame waits until every live replica serves the same serial, other
// than not, and returns it with the time the first replica served it.
func (rs *replicaSet) waitSame(not string, deadline time.Time) (serial string, firstSeen time.Time) {
	rs.t.Helper()
	var last []string
	for time.Now().Before(deadline) {
		last = rs.serials()
		common, same := "", true
		for i, s := range last {
			rs.mu.Lock()
			dead := rs.killed[i]
			rs.mu.Unlock()
			if dead {
				continue
			}
			if s != "" && s != not && firstSeen.IsZero() {
				firstSeen = time.Now()
			}
			if common == "" {
				common = s
			}
			if s == "" || s == not || s != common {
				same = false
			}
		}
		if same {
			return common, firstSeen
		}
		time.Sleep(100 * time.Millisecond)
	}
	rs.t.Fatalf("the replicas did not all serve one certificate (other than %q) in time; they serve %q", not, last)
	return "", time.Time{}
}

// startReplicas starts pebble, a database, the proxy and n SuperLinks on
// the database, all at once.
func startReplicas(t *testing.T, n int, challenge string, extra ...string) (*replicaSet, *pebbleCA) {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	db, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	rs := &replicaSet{t: t, db: db, killed: map[int]bool{}}

	ln, err := net.Listen("tcp", freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	o := pebbleOptions{TLSPort: port(t, ln.Addr().String()), Validity: 30 * time.Second, AuthzReuse: -1}
	rs.target = func(l *acmeLink) string { return l.fleet }
	if challenge == "http-01" {
		o = pebbleOptions{TLSPort: port(t, freeAddr(t)), HTTPPort: port(t, ln.Addr().String()), AuthzReuse: -1}
		rs.target = func(l *acmeLink) string { return l.http }
	}
	pb := startPebble(t, o)
	rs.roots = pb.issuingRoots(t)
	go rs.serveProxy(ln)

	for range n {
		lo := acmeLinkOptions{client: "certmagic", challenge: challenge, storage: dsn,
			extra: append([]string{"--acme-storage-check-interval", "1s"}, extra...)}
		if challenge == "http-01" {
			lo.httpAddr = freeAddr(t)
		}
		rs.links = append(rs.links, startACMELink(t, pb, lo))
	}
	return rs, pb
}

// storedSerial returns the serial of the certificate in the database.
func (rs *replicaSet) storedSerial(t *testing.T) string {
	t.Helper()
	var pemData []byte
	err := rs.db.QueryRow(context.Background(), `SELECT value FROM acme_keys WHERE key LIKE 'certificates/%/' || $1 || '/' || $1 || '.crt'`,
		acmeDomain).Scan(&pemData)
	if err != nil {
		t.Fatalf("reading the stored certificate: %v", err)
	}
	block, _ := pem.Decode(pemData)
	if block == nil {
		t.Fatalf("the stored certificate is not PEM")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Text(16)
}

// newOrders counts the orders pebble placed that are not ARI
// replacements (renewals) of an earlier one.
func newOrders(pb *pebbleCA) int {
	out := pb.pebble.out.String()
	return strings.Count(out, "Added order") - strings.Count(out, "is a replacement of")
}

// checkValidations checks that the proxy sent at least one validation to a
// replica while another held the issue lock, and that the replica it
// reached answered it.
func (rs *replicaSet) checkValidations(challenge string, after time.Time) {
	rs.t.Helper()
	rs.mu.Lock()
	defer rs.mu.Unlock()
	answered := 0
	for _, r := range rs.routes {
		if r.at.Before(after) || r.holder < 0 || r.target < 0 {
			continue
		}
		if r.holder == r.target {
			continue // no other replica accepted yet
		}
		if strings.Contains(rs.links[r.target].out.String()[r.mark:], "answering "+challenge+" challenge") {
			answered++
		}
	}
	rs.t.Logf("%d %s validation connections answered by a replica while another held the lock", answered, challenge)
	if answered == 0 {
		rs.t.Errorf("no %s validation reached a replica other than the one holding the lock (routes %+v)", challenge, rs.routes)
	}
}

func TestACMEReplicas(t *testing.T) {
	needE2E(t)
	t.Run("tls-alpn-01", func(t *testing.T) {
		t.Parallel()
		testACMEReplicasTLSALPN(t)
	})
	t.Run("http-01", func(t *testing.T) {
		t.Parallel()
		testACMEReplicasHTTP(t)
	})
}

// testACMEReplicasTLSALPN: one order, one certificate on all three; a
// renewal by one is served by all within the storage check interval (1 s
// here); the holder of the lock killed mid-renewal does not stop the
// next renewal, which the others take over when its lease (10 s) ends.
func testACMEReplicasTLSALPN(t *testing.T) {
	start := time.Now()
	rs, pb := startReplicas(t, 3, "tls-alpn-01", "--acme-renew-interval", "1s", "--acme-renew-window", "0.5")

	// One order, one certificate, served by all three.
	for _, l := range rs.links {
		waitACMECert(t, l, rs.roots, 60*time.Second)
	}
	s1, _ := rs.waitSame("", time.Now().Add(20*time.Second))
	t.Logf("measured: three replicas serving one certificate %v after they started", time.Since(rs.links[0].started).Round(time.Millisecond))
	if n := newOrders(pb); n != 1 {
		t.Errorf("pebble placed %d new orders for %s, want 1:\n%s", n, acmeDomain, pb.pebble.out.String())
	}
	issued := 0
	for _, l := range rs.links {
		if strings.Contains(l.out.String(), `msg="certificate issued"`) {
			issued++
		} else if !strings.Contains(l.out.String(), `msg="certificate loaded from storage"`) {
			t.Errorf("a replica neither issued nor loaded the certificate:\n%s", l.out.String())
		}
	}
	if issued != 1 {
		t.Errorf("%d replicas say they had the certificate issued, want 1", issued)
	}
	rs.checkValidations("tls-alpn-01", start)

	// A renewal by one replica reaches the others.
	leaf1, err := handshakeTLS(rs.links[0].fleet, acmeTLS(rs.roots, acmeDomain))
	if err != nil {
		t.Fatal(err)
	}
	renewStart := time.Now()
	s2, first := rs.waitSame(s1, leaf1.NotAfter.Add(5*time.Second))
	all := time.Now()
	lag := all.Sub(first)
	t.Logf("measured: renewal %s -> %s; served by every replica %v after the first served it (bound: --acme-storage-check-interval 1s + 1s of polling)",
		s1, s2, lag.Round(time.Millisecond))
	if lag > 3*time.Second {
		t.Errorf("the renewed certificate reached the last replica %v after the first, want at most 3s", lag)
	}
	if n := newOrders(pb); n != 1 {
		t.Errorf("%d new (non-renewal) orders after the renewal, want still 1", n)
	}
	rs.checkValidations("tls-alpn-01", renewStart)

	// Kill the replica that holds the issue lock for a renewal. A replica
	// that only takes the lock to find the renewal done (it waited while
	// another renewed) holds it for a few milliseconds; one that renews
	// holds it for hundreds (order, validation, finalization): kill a
	// holder once it has held the lock for 80 ms.
	var victim int
	var s2Now string // the serial all serve when the victim dies
	var leaf2 *x509.Certificate
	for victim = -1; victim < 0; {
		s2Now, _ = rs.waitSame("", time.Now().Add(30*time.Second))
		if leaf2, err = handshakeTLS(rs.links[0].fleet, acmeTLS(rs.roots, acmeDomain)); err != nil {
			t.Fatal(err)
		}
		for time.Now().Before(leaf2.NotAfter) && victim < 0 {
			var owner string
			var held float64
			err := rs.db.QueryRow(context.Background(), `SELECT owner, extract(epoch FROM now() - acquired)::float8
				FROM acme_locks WHERE name = $1 AND expires > now()`, issueLock).Scan(&owner, &held)
			if err == nil && held >= 0.08 {
				victim = rs.byPid(owner)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if victim < 0 {
			t.Fatalf("no replica held the issue lock to renew %s before it expired", s2Now)
		}
	}
	v := rs.links[victim]
	rs.mu.Lock()
	rs.killed[victim] = true
	rs.mu.Unlock()
	_ = v.cmd.Process.Signal(syscall.SIGKILL)
	killed := time.Now()
	<-v.done
	t.Logf("killed replica %d (pid %d) holding the lock, %v before %s expires", victim, v.cmd.Process.Pid,
		time.Until(leaf2.NotAfter).Round(time.Millisecond), s2Now)
	var owner string
	if err := rs.db.QueryRow(context.Background(), "SELECT owner FROM acme_locks WHERE name = $1", issueLock).Scan(&owner); err != nil || rs.byPid(owner) != victim {
		t.Errorf("right after the kill the lock is held by %q (%v), want the killed replica", owner, err)
	}
	// Mid-renewal: the certificate in storage is still the one being renewed.
	if stored := rs.storedSerial(t); stored != s2Now {
		t.Fatalf("the killed replica had already stored the renewed certificate %s (serving %s): not killed mid-renewal", stored, s2Now)
	}
	s2 = s2Now
	s3, _ := rs.waitSame(s2, leaf2.NotAfter)
	t.Logf("measured: after the lock holder was killed, the survivors serve renewed %s %v later (lease 10s)", s3, time.Since(killed).Round(time.Millisecond))
	took := false
	for i, l := range rs.links {
		if i != victim && strings.Contains(l.out.String(), "took over a lock") &&
			strings.Contains(l.out.String(), fmt.Sprintf("pid=%d ", v.cmd.Process.Pid)) {
			took = true
		}
	}
	if !took {
		t.Errorf("no survivor logged taking over the killed replica's lock")
	}
	for i, l := range rs.links {
		if i != victim {
			if err := checkHealth(t, l.fleet, acmeTLS(rs.roots, acmeDomain)); err != nil {
				t.Errorf("replica %d after the renewal: %v", i, err)
			}
		}
	}
	t.Logf("measured: whole test %v", time.Since(start).Round(time.Millisecond))
}

// testACMEReplicasHTTP: with HTTP-01, too, the replica the CA reaches
// answers from the shared storage.
func testACMEReplicasHTTP(t *testing.T) {
	start := time.Now()
	rs, pb := startReplicas(t, 3, "http-01")
	for _, l := range rs.links {
		waitACMECert(t, l, rs.roots, 60*time.Second)
	}
	rs.waitSame("", time.Now().Add(20*time.Second))
	if n := newOrders(pb); n != 1 {
		t.Errorf("pebble placed %d new orders, want 1", n)
	}
	rs.checkValidations("http-01", start)
}

// A PostgreSQL storage that refuses (wrong password, a database from a
// newer Sepal) stops flower-superlink before it listens, exit 1, with one
// line naming --acme-storage and without the password.
func TestACMEStorageRefused(t *testing.T) {
	needE2E(t)
	t.Parallel()
	srv := pgtest.Shared(t)
	dsn := pgtest.NewDatabase(t)
	newer := pgtest.NewDatabase(t)
	db, err := pgxpool.New(context.Background(), newer)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(context.Background(), `CREATE TABLE sepal_schema (name text PRIMARY KEY, version integer NOT NULL, updated timestamptz NOT NULL DEFAULT now());
		INSERT INTO sepal_schema VALUES ('acme storage', 99, now())`); err != nil {
		t.Fatal(err)
	}
	wrong := strings.Replace(dsn, ":"+srv.Password+"@", ":not-the-password@", 1)
	dir := t.TempDir()
	pass := dir + "/pgpass"
	for _, c := range []struct {
		name string
		dsn  string
		env  []string
		want string
	}{
		{"wrong password", wrong, nil, "refused the credentials"},
		{"newer schema", newer, nil, "version 99"},
		{"key/value with PGPASSFILE", srv.KeyValueDSN("nosuchdb"), []string{"PGPASSFILE=" + pass}, "the database does not exist"},
	} {
		if err := os.WriteFile(pass, []byte(fmt.Sprintf("%s:%d:*:%s:%s\n", srv.Host, srv.Port, srv.User, srv.Password)), 0o600); err != nil {
			t.Fatal(err)
		}
		fleet := freeAddr(t)
		out, code := run(t, 30*time.Second, dir, c.env, "flower-superlink", "--acme-domain", acmeDomain,
			"--acme-storage", c.dsn, "--grpc-rere-fleet-api-address", fleet, "--driver-api-address", freeAddr(t))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		last := lines[len(lines)-1]
		if code != 1 || !strings.Contains(last, "flower-superlink: --acme-storage ") || !strings.Contains(last, c.want) {
			t.Errorf("%s: exit %d, want 1 and a last line naming --acme-storage with %q:\n%s", c.name, code, c.want, out)
		}
		if strings.Contains(out, "not-the-password") || strings.Contains(out, srv.Password) {
			t.Errorf("%s: the password was printed:\n%s", c.name, out)
		}
		if strings.Contains(out, "msg=serving") || strings.Contains(out, "listening") {
			t.Errorf("%s: something listened before the check:\n%s", c.name, out)
		}
	}
}
