package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestDatabaseFileDeleted: a SuperLink serving --database state.db whose
// file is deleted (or replaced by another, renamed over it) notices within
// its check interval, or at the next write, and says so in one log line; it
// turns NOT_SERVING (a health watcher hears it), /readyz fails, a second
// SuperLink on the path is refused while the first still drains, the
// first exits 1 naming the file, and a SuperLink started again on the path
// (as a supervisor does) serves from the file now there.
func TestDatabaseFileDeleted(t *testing.T) {
	needE2E(t)
	t.Parallel()
	for _, c := range []struct {
		name, why string
		change    func(path string) error
	}{
		{"deleted", "was deleted", os.Remove},
		{"replaced", "was replaced by another file", func(path string) error {
			other := path + ".restored"
			if err := os.WriteFile(other, nil, 0o600); err != nil {
				return err
			}
			return os.Rename(other, path)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			sl := startSuperLink(t, linkOptions{certs: true, metrics: true, args: []string{"--database", "state.db"}})
			dir, metrics := sl.dir, sl.metrics
			waitReady(t, metrics, 200, 10*time.Second)
			node := start(t, dir, nil, "flower-client-app", "client:app", "--root-certificates", slCA, "--server", sl.fleet,
				"--poll-interval", "200ms")
			node.waitOutput(t, `msg="node registered"`, 30*time.Second)

			// A health watcher on the Fleet API: it hears NOT_SERVING, and
			// its stream keeps the SuperLink draining (up to its 5 s grace)
			// until it lets go.
			conn, err := grpc.NewClient(sl.fleet, grpc.WithTransportCredentials(credentials.NewTLS(sl.tls)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			wctx, stopWatch := context.WithCancel(context.Background())
			defer stopWatch()
			watch, err := healthpb.NewHealthClient(conn).Watch(wctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if r, err := watch.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health before: %v, %v", r, err)
			}

			path := filepath.Join(dir, "state.db")
			changed := time.Now()
			if err := c.change(path); err != nil {
				t.Fatal(err)
			}
			line := "state database file " + c.why
			sl.waitOutput(t, line, 10*time.Second)
			noticed := time.Since(changed)
			if n := strings.Count(sl.out.String(), `msg="`+line); n != 1 {
				t.Errorf("the loss is logged %d times, want once:\n%s", n, sl.out.String())
			}
			r, err := watch.Recv()
			if err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("health after the loss: %v, %v; want NOT_SERVING", r, err)
			}
			if code, body := readyz(metrics); code == 200 {
				t.Errorf("/readyz answers 200 after the loss: %s", body)
			}

			// The first still runs (the watcher holds its drain): a second
			// SuperLink on the path is refused.
			select {
			case <-sl.done:
				t.Fatalf("the SuperLink ended while a health watcher held its drain:\n%s", sl.out.String())
			default:
			}
			out, code := run(t, 30*time.Second, dir, nil, "flower-superlink", append(slSeedArgs, "--database", "state.db",
				"--driver-api-address", freeAddr(t), "--grpc-rere-fleet-api-address", freeAddr(t))...)
			if code != 1 || !strings.Contains(out, "in use by another SuperLink") {
				t.Errorf("a second SuperLink on the path while the first runs: exit %d, want 1 and in use:\n%s", code, out)
			}
			stopWatch()
			if code := sl.wait(t, 15*time.Second); code != 1 {
				t.Errorf("the SuperLink exited %d after the loss, want 1:\n%s", code, sl.out.String())
			}
			lines := strings.Split(strings.TrimSpace(sl.out.String()), "\n")
			if last := lines[len(lines)-1]; !strings.HasPrefix(last, "flower-superlink: state database state.db: ") ||
				!strings.Contains(last, c.why) || !strings.Contains(last, "start the SuperLink again") {
				t.Errorf("the last line does not name the file and what happened to it: %q", last)
			}
			t.Logf("%s: noticed %v after the change (a node polls every 200 ms; the SuperLink looks every 500 ms)", c.name, noticed.Round(time.Millisecond))

			// Started again on the same command line, as a supervisor does:
			// it serves from the file now at the path, and the node, which
			// kept retrying, registers there again.
			sl.again(t)
			waitCount(t, node, `msg="node registered"`, 2, 30*time.Second)
			stopClients(t, []*proc{node})
		})
	}
}

// readyz returns the status code and body of /readyz at addr (0 when it
// does not answer).
func readyz(addr string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitReady waits up to d for /readyz at addr to answer code.
func waitReady(t *testing.T, addr string, code int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got, body := readyz(addr)
		if got == code {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz answers %d (%s), want %d", got, body, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
