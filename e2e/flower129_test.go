package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/flowerenv"
)

// flower129 is one deployment of real Flower 1.29.0 around Sepal's
// SuperLink: the SuperLink over TLS, two stock SuperNodes, and a flwr
// configuration that reaches its Control API.
type flower129 struct {
	f       flowerenv.Flower
	dir     string
	env     []string
	link    *superLink
	app     string // a copy of quickstart-numpy
	fleet   string
	appIo   string // ServerAppIo and the Driver API, on one port
	control string
}

// startFlower129 starts Sepal's SuperLink with Flower 1.29.0's command
// line (extra added), two stock flower-supernodes and a flwr
// configuration named local-tls. The Driver API and ServerAppIo share
// one port, as they do by default.
func startFlower129(t *testing.T, extra ...string) *flower129 {
	d := newFlower129(t)
	fleet, appIo, control := freeAddr(t), freeAddr(t), freeAddr(t)
	d.fleet, d.appIo, d.control = fleet, appIo, control
	args := append([]string{
		"--ssl-ca-certfile", "certificates/ca.crt", "--ssl-certfile", "certificates/server.pem", "--ssl-keyfile", "certificates/server.key",
		"--serverappio-api-address", appIo, "--control-api-address", control,
	}, extra...)
	d.link = startSuperLink(t, linkOptions{dir: d.dir, env: d.env, args: args, fleet: fleet, fleetFlag: "--fleet-api-address", driver: appIo})
	for i := range 2 {
		d.superNode(t, fleet, i)
	}
	d.useFlwr(t, control)
	return d
}

// newFlower129 prepares Flower 1.29.0 and a folder with certificates
// (flower-certs) for a deployment.
func newFlower129(t *testing.T) *flower129 {
	f := flowerenv.Flower129(t)
	d := &flower129{f: f, dir: t.TempDir()}
	d.env = []string{"PATH=" + f.Bin + string(os.PathListSeparator) + os.Getenv("PATH"), "FLWR_HOME=" + filepath.Join(d.dir, "flwr")}
	if out, code := run(t, 30*time.Second, d.dir, nil, "flower-certs"); code != 0 {
		t.Fatalf("flower-certs exited %d:\n%s", code, out)
	}
	return d
}

// superNode starts stock flower-supernode number i of 2, dialling fleet
// over TLS, with extra flags.
func (d *flower129) superNode(t *testing.T, fleet string, i int, extra ...string) *proc {
	return start(t, d.dir, d.env, filepath.Join(d.f.Bin, "flower-supernode"), append([]string{"--root-certificates", "certificates/ca.crt",
		"--superlink", fleet, "--clientappio-api-address", freeAddr(t),
		"--node-config", fmt.Sprintf("partition-id=%d num-partitions=2", i)}, extra...)...)
}

// useFlwr copies quickstart-numpy into the deployment's folder and
// writes a flwr configuration whose connection local-tls reaches the
// Control API at control over TLS.
func (d *flower129) useFlwr(t *testing.T, control string) {
	d.control = control
	d.app = filepath.Join(d.dir, "quickstart-numpy")
	if out, err := exec.Command("cp", "-r", filepath.Join(d.f.Source, "examples", "quickstart-numpy"), d.app).CombinedOutput(); err != nil {
		t.Fatalf("copying quickstart-numpy: %v\n%s", err, out)
	}
	exec.Command("chmod", "-R", "u+w", d.app).Run()
	if out, code := d.flwr(t, 60*time.Second, "config", "list"); code != 0 {
		t.Fatalf("flwr config list exited %d:\n%s", code, out)
	}
	d.connection(t, "local-tls", control)
}

// connection adds a connection to flwr's configuration: name reaches the
// Control API at address over TLS.
func (d *flower129) connection(t *testing.T, name, address string) {
	cfg, err := os.OpenFile(filepath.Join(d.dir, "flwr", "config.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cfg.Close()
	fmt.Fprintf(cfg, "\n[superlink.%s]\naddress = %q\nroot-certificates = %q\n", name, address, filepath.Join(d.dir, "certificates", "ca.crt"))
}

// flwr runs Flower's flwr command in the app's folder.
func (d *flower129) flwr(t *testing.T, timeout time.Duration, args ...string) (string, int) {
	t.Helper()
	dir := d.app
	if _, err := os.Stat(dir); err != nil {
		dir = d.dir
	}
	return run(t, timeout, dir, d.env, filepath.Join(d.f.Bin, "flwr"), args...)
}

var startedRun = regexp.MustCompile(`Successfully started run (\d+)`)

// quickstartArgs are the flwr arguments of a streamed quickstart-numpy run
// of rounds rounds.
func quickstartArgs(rounds int) []string {
	return []string{"run", ".", "local-tls", "--stream", "--run-config", fmt.Sprintf("num-server-rounds=%d", rounds)}
}

// checkQuickstart checks the output of a streamed quickstart-numpy run:
// every round trained on both SuperNodes, and the end. It returns the
// run's id.
func checkQuickstart(t *testing.T, out string, rounds int) string {
	t.Helper()
	m := startedRun.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flwr run did not start a run:\n%s", out)
	}
	for k := 1; k <= rounds; k++ {
		if !strings.Contains(out, fmt.Sprintf("[ROUND %d/%d]", k, rounds)) {
			t.Fatalf("no [ROUND %d/%d] in the run's log:\n%s", k, rounds, out)
		}
	}
	// Each round trains and evaluates on both SuperNodes.
	if n := strings.Count(out, "aggregate_train: Received 2 results and 0 failures"); n != rounds {
		t.Fatalf("%d rounds trained on 2 nodes without failures, want %d:\n%s", n, rounds, out)
	}
	if !strings.Contains(out, "Strategy execution finished") {
		t.Fatalf("the run did not finish:\n%s", out)
	}
	return m[1]
}

// TestFlower129 runs real Flower 1.29.0 (two stock SuperNodes, flwr,
// Flower's SuperExec and ServerApp) on Sepal's SuperLink over TLS, with
// ServerAppIo on the Driver API's port: a quickstart-numpy run streamed to
// the end, flwr ls and flwr log of it, and flwr stop of a long run, with
// the SuperLink starting flower-superexec (subprocess isolation, the
// default); and with the test starting it (process isolation) and the
// SuperLink on --database FILE, killed with SIGKILL mid-run and started
// again: the run completes. Under subprocess isolation a real Flower 1.8.0
// run goes through the same ports at the same time as the first 1.29 run,
// and the metrics and the status page show both (bothGenerations).
func TestFlower129(t *testing.T) {
	needE2E(t)
	t.Run("subprocess", func(t *testing.T) {
		t.Parallel()
		metricsAddr := freeAddr(t)
		d := startFlower129(t, "--isolation", "subprocess", "--metrics-address", metricsAddr)
		id := d.bothGenerations(t, metricsAddr, 2)

		out, code := d.flwr(t, time.Minute, "ls", "local-tls", "--format", "json")
		if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "finished:completed") {
			t.Fatalf("flwr ls (exit %d) does not list run %s as finished:completed:\n%s", code, id, out)
		}
		out, code = d.flwr(t, time.Minute, "log", id, "local-tls")
		if code != 0 || !strings.Contains(out, "[ROUND 2/2]") {
			t.Fatalf("flwr log %s (exit %d) did not stream the run's log:\n%s", id, code, out)
		}

		// A long run, stopped once it trains.
		out, code = d.flwr(t, time.Minute, "run", ".", "local-tls", "--run-config", "num-server-rounds=100")
		m := startedRun.FindStringSubmatch(out)
		if code != 0 || m == nil {
			t.Fatalf("flwr run exited %d:\n%s", code, out)
		}
		long := m[1]
		deadline := time.Now().Add(2 * time.Minute)
		for {
			out, _ = d.flwr(t, time.Minute, "ls", "local-tls", "--run-id", long, "--format", "json")
			if strings.Contains(out, `"status": "running"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %s is not running after 2 minutes:\n%s", long, out)
			}
			time.Sleep(time.Second)
		}
		out, code = d.flwr(t, time.Minute, "stop", long, "local-tls")
		if code != 0 {
			t.Fatalf("flwr stop exited %d:\n%s", code, out)
		}
		out, _ = d.flwr(t, time.Minute, "ls", "local-tls", "--run-id", long, "--format", "json")
		if !strings.Contains(out, "finished:stopped") {
			t.Fatalf("run %s after flwr stop:\n%s", long, out)
		}
	})
	t.Run("process", func(t *testing.T) {
		t.Parallel()
		// The state in a file, and Flower's ServerApp started by the test,
		// so that it outlives the SuperLink, which is killed mid-run.
		d := startFlower129(t, "--isolation", "process", "--database", "state.db")
		appIo := regexp.MustCompile(`serverappio_api_address=(\S+)`).FindStringSubmatch(d.link.out.String())
		if appIo == nil {
			t.Fatalf("the SuperLink did not say where ServerAppIo listens:\n%s", d.link.out.String())
		}
		if strings.Contains(d.link.out.String(), "started flower-superexec") {
			t.Fatal("the SuperLink started flower-superexec under --isolation process")
		}
		start(t, d.dir, d.env, filepath.Join(d.f.Bin, "flower-superexec"), "--insecure", "--appio-api-address", appIo[1], "--plugin-type", "serverapp")
		d.runKilledMidway(t, 3, d.killAndRestart)
	})
}

// killAndRestart kills the SuperLink with SIGKILL and starts it again on
// the same command line (its --database file, its ports).
func (d *flower129) killAndRestart(t *testing.T, _ string) {
	t.Helper()
	if err := d.link.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	d.link.wait(t, 10*time.Second)
	killed := time.Now()
	d.link = d.link.again(t)
	t.Logf("SuperLink killed with SIGKILL, serving again %v later", time.Since(killed).Round(10*time.Millisecond))
}

// runKilledMidway runs quickstart-numpy for rounds rounds, calls kill
// (with the run's id) once round 2 began (as the run's log says), and
// checks that the run completes with every round's results: Flower
// 1.29.0's SuperNodes and ServerApp retry, and the state lost nothing.
func (d *flower129) runKilledMidway(t *testing.T, rounds int, kill func(t *testing.T, runID string)) {
	t.Helper()
	began := time.Now()
	out, code := d.flwr(t, time.Minute, "run", ".", "local-tls", "--run-config", fmt.Sprintf("num-server-rounds=%d", rounds))
	m := startedRun.FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("flwr run exited %d:\n%s", code, out)
	}
	id := m[1]
	d.waitLog(t, id, fmt.Sprintf("[ROUND 2/%d]", rounds), 3*time.Minute)
	t.Logf("round 2 began %v into the run", time.Since(began).Round(100*time.Millisecond))
	kill(t, id)

	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out, "finished:") {
		if time.Now().After(deadline) {
			t.Fatalf("run %s has not finished 3 minutes after the kill:\n%s", id, out)
		}
		time.Sleep(2 * time.Second)
		out, _ = d.flwr(t, time.Minute, "ls", "local-tls", "--run-id", id, "--format", "json")
	}
	if !strings.Contains(out, "finished:completed") {
		t.Fatalf("run %s after the kill:\n%s", id, out)
	}
	t.Logf("run of %d rounds with the SuperLink killed midway: %v", rounds, time.Since(began).Round(100*time.Millisecond))
	// Its log, kept across the kill, has every round's results, all of
	// them (a line may come twice: the ServerApp pushes again what a
	// killed SuperLink may have stored).
	out, code = d.flwr(t, time.Minute, "log", id, "local-tls")
	if code != 0 {
		t.Fatalf("flwr log %s exited %d:\n%s", id, code, out)
	}
	for k := 1; k <= rounds; k++ {
		if !strings.Contains(out, fmt.Sprintf("[ROUND %d/%d]", k, rounds)) {
			t.Fatalf("no [ROUND %d/%d] in the run's log:\n%s", k, rounds, out)
		}
	}
	if n := strings.Count(out, "aggregate_train: Received 2 results and 0 failures"); n < rounds {
		t.Fatalf("%d rounds trained on 2 nodes without failures, want %d:\n%s", n, rounds, out)
	}
	if bad := regexp.MustCompile(`Received [01] results|and [1-9][0-9]* failures`).FindString(out); bad != "" {
		t.Fatalf("a round lost results (%q):\n%s", bad, out)
	}
	if !strings.Contains(out, "Strategy execution finished") {
		t.Fatalf("the run did not finish its strategy:\n%s", out)
	}
}

// waitLog follows run id's log through the Control API (StreamLogs, as
// flwr log does) until it holds want.
func (d *flower129) waitLog(t *testing.T, id, want string, timeout time.Duration) {
	t.Helper()
	run, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := credentials.NewClientTLSFromFile(filepath.Join(d.dir, "certificates", "ca.crt"), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(d.control, append(flwr129.ClientOptions(), grpc.WithTransportCredentials(creds))...)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := flwr129.NewControlClient(cc).StreamLogs(ctx, &flwr129.StreamLogsRequest{RunId: run})
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	for !strings.Contains(got.String(), want) {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("run %s's log did not show %q (%v):\n%s", id, want, err, got.String())
		}
		got.WriteString(r.GetLogOutput())
	}
}
