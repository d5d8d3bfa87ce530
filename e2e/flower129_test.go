package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/flowerenv"
)

// flower129 is one deployment of real Flower 1.29.0 around Sepal's
// SuperLink: the SuperLink over TLS, two stock SuperNodes, and a flwr
// configuration that reaches its Control API.
type flower129 struct {
	f       flowerenv.Flower
	dir     string
	env     []string
	link    *proc
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
	f := flowerenv.Flower129(t)
	d := &flower129{f: f, dir: t.TempDir()}
	d.env = []string{"PATH=" + f.Bin + string(os.PathListSeparator) + os.Getenv("PATH"), "FLWR_HOME=" + filepath.Join(d.dir, "flwr")}
	if out, code := run(t, 30*time.Second, d.dir, nil, "flower-certs"); code != 0 {
		t.Fatalf("flower-certs exited %d:\n%s", code, out)
	}
	fleet, appIo, control := freeAddr(t), freeAddr(t), freeAddr(t)
	d.fleet, d.appIo, d.control = fleet, appIo, control
	args := append([]string{
		"--ssl-ca-certfile", "certificates/ca.crt", "--ssl-certfile", "certificates/server.pem", "--ssl-keyfile", "certificates/server.key",
		"--fleet-api-address", fleet, "--driver-api-address", appIo, "--serverappio-api-address", appIo, "--control-api-address", control,
	}, extra...)
	d.link = start(t, d.dir, d.env, "flower-superlink", args...)
	waitListening(t, d.link, 20*time.Second, fleet, appIo, control)
	for i := range 2 {
		start(t, d.dir, d.env, filepath.Join(f.Bin, "flower-supernode"), "--root-certificates", "certificates/ca.crt",
			"--superlink", fleet, "--clientappio-api-address", freeAddr(t),
			"--node-config", fmt.Sprintf("partition-id=%d num-partitions=2", i))
	}
	d.app = filepath.Join(d.dir, "quickstart-numpy")
	if out, err := exec.Command("cp", "-r", filepath.Join(f.Source, "examples", "quickstart-numpy"), d.app).CombinedOutput(); err != nil {
		t.Fatalf("copying quickstart-numpy: %v\n%s", err, out)
	}
	exec.Command("chmod", "-R", "u+w", d.app).Run()
	if out, code := d.flwr(t, 60*time.Second, "config", "list"); code != 0 {
		t.Fatalf("flwr config list exited %d:\n%s", code, out)
	}
	cfg, err := os.OpenFile(filepath.Join(d.dir, "flwr", "config.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(cfg, "\n[superlink.local-tls]\naddress = %q\nroot-certificates = %q\n", control, filepath.Join(d.dir, "certificates", "ca.crt"))
	cfg.Close()
	return d
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

// runQuickstart runs quickstart-numpy for rounds rounds with --stream and
// checks every round's results and the end.
func (d *flower129) runQuickstart(t *testing.T, rounds int) string {
	t.Helper()
	began := time.Now()
	out, code := d.flwr(t, 4*time.Minute, quickstartArgs(rounds)...)
	if code != 0 {
		t.Fatalf("flwr run exited %d:\n%s", code, out)
	}
	id := checkQuickstart(t, out, rounds)
	t.Logf("flwr run of %d rounds: %v", rounds, time.Since(began).Round(100*time.Millisecond))
	return id
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
// default) and with the test starting it (process isolation). Under
// subprocess isolation a real Flower 1.8.0 run goes through the same
// ports at the same time as the first 1.29 run, and the metrics and the
// status page show both (bothGenerations).
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
		d := startFlower129(t, "--isolation", "process")
		appIo := regexp.MustCompile(`serverappio_api_address=(\S+)`).FindStringSubmatch(d.link.out.String())
		if appIo == nil {
			t.Fatalf("the SuperLink did not say where ServerAppIo listens:\n%s", d.link.out.String())
		}
		if strings.Contains(d.link.out.String(), "started flower-superexec") {
			t.Fatal("the SuperLink started flower-superexec under --isolation process")
		}
		start(t, d.dir, d.env, filepath.Join(d.f.Bin, "flower-superexec"), "--insecure", "--appio-api-address", appIo[1], "--plugin-type", "serverapp")
		d.runQuickstart(t, 2)
	})
}
