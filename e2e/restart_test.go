package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/internal/flowerenv"
	"github.com/sepal-fl/sepal/internal/testkit"
)

// The restart tests run flower-superlink as systemd runs it under socket
// activation: a supervisor (here, the test) binds the listening sockets
// once and passes them to each process it starts (LISTEN_PID,
// LISTEN_FDS, LISTEN_FDNAMES, the sockets from descriptor 3 on), so that
// the ports stay open while the SuperLink stops and starts again.

// supervisor holds the sockets and runs flower-superlink on them.
type supervisor struct {
	t     *testing.T
	dir   string
	names []string   // FileDescriptorName= of each socket
	files []*os.File // the sockets, in the order of names
	addrs map[string]string
	args  []string

	mu sync.Mutex
	p  *proc
}

// newSupervisor binds a loopback socket for each name and keeps it until
// the test ends.
func newSupervisor(t *testing.T, dir string, names []string, args ...string) *supervisor {
	s := &supervisor{t: t, dir: dir, names: names, addrs: map[string]string{}, args: args}
	for _, n := range names {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := l.(*net.TCPListener).File()
		l.Close() // f holds the socket
		if err != nil {
			t.Fatal(err)
		}
		s.files = append(s.files, f)
		s.addrs[n] = l.Addr().String()
	}
	t.Cleanup(func() {
		for _, f := range s.files {
			f.Close()
		}
	})
	return s
}

// start runs flower-superlink with extra arguments on the sockets, as
// systemd does, and returns it. A shell sets LISTEN_PID to its own pid
// and execs the binary, which keeps it.
func (s *supervisor) start(extra ...string) *proc {
	t := s.t
	t.Helper()
	p := &proc{name: "flower-superlink", out: &testkit.SyncBuffer{}, done: make(chan struct{})}
	args := append([]string{"-c", `export LISTEN_PID=$$; exec "$0" "$@"`, bin(t, "flower-superlink")}, append(append([]string{}, s.args...), extra...)...)
	p.cmd = exec.Command("/bin/sh", args...)
	p.cmd.Dir = s.dir
	p.cmd.Env = append(os.Environ(), "LISTEN_FDS="+strconv.Itoa(len(s.files)), "LISTEN_FDNAMES="+strings.Join(s.names, ":"))
	p.cmd.ExtraFiles = s.files
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting flower-superlink: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("---- flower-superlink (pid %d) output ----\n%s", p.cmd.Process.Pid, p.out.String())
		}
	})
	s.mu.Lock()
	s.p = p
	s.mu.Unlock()
	return p
}

// restartStats is what one restart took.
type restartStats struct {
	stop, start time.Duration // signal to exit; exit to serving again (with the delay)
	code        int           // exit code (-1: killed)
	probes      int           // connections made to every port meanwhile
	refused     []string      // those that failed
}

// restart sends sig to the running SuperLink, waits for it to end and
// then for delay (systemd's RestartSec= after a crash), starts the next
// one and waits until it serves. Meanwhile it connects to every port
// every 20 ms: none may be refused.
func (s *supervisor) restart(sig syscall.Signal, delay time.Duration) restartStats {
	t := s.t
	t.Helper()
	s.mu.Lock()
	old := s.p
	s.mu.Unlock()
	var st restartStats
	stopProbe := make(chan struct{})
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			for _, n := range s.names {
				st.probes++
				c, err := net.DialTimeout("tcp", s.addrs[n], time.Second)
				if err != nil {
					st.refused = append(st.refused, fmt.Sprintf("%s: %v", n, err))
					continue
				}
				c.Close()
			}
			select {
			case <-stopProbe:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	began := time.Now()
	if err := old.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%v to flower-superlink: %v", sig, err)
	}
	st.code = old.wait(t, 30*time.Second)
	st.stop = time.Since(began)
	ended := time.Now()
	time.Sleep(delay)
	p := s.start()
	p.waitOutput(t, "msg=serving", 30*time.Second)
	st.start = time.Since(ended)
	close(stopProbe)
	<-probed
	return st
}

// roundRes is what a Flower 1.8.0 ServerApp logged of one round.
type roundRes struct {
	fitResults, fitFailures   int
	evalResults, evalFailures int
}

var (
	flowerRoundLine = regexp.MustCompile(`\[ROUND (\d+)\]`)
	flowerAggLine   = regexp.MustCompile(`aggregate_(fit|evaluate): received (\d+) results and (\d+) failures`)
	flowerLossLine  = regexp.MustCompile(`round (\d+): ([0-9.e+-]+)`)
)

// parseFlowerRounds reads the rounds of a Flower 1.8.0 ServerApp's log,
// and the distributed losses of its History, by round.
func parseFlowerRounds(out string) (map[int]*roundRes, map[int]float64) {
	rounds := map[int]*roundRes{}
	var cur *roundRes
	losses := map[int]float64{}
	history := false
	for _, line := range strings.Split(out, "\n") {
		if m := flowerRoundLine.FindStringSubmatch(line); m != nil {
			r, _ := strconv.Atoi(m[1])
			cur = &roundRes{}
			rounds[r] = cur
		}
		if m := flowerAggLine.FindStringSubmatch(line); m != nil && cur != nil {
			res, _ := strconv.Atoi(m[2])
			fail, _ := strconv.Atoi(m[3])
			if m[1] == "fit" {
				cur.fitResults, cur.fitFailures = res, fail
			} else {
				cur.evalResults, cur.evalFailures = res, fail
			}
		}
		if strings.Contains(line, "History (loss, distributed)") {
			history = true
			continue
		}
		if history {
			if strings.Contains(line, "History (") {
				history = false
				continue
			}
			for _, m := range flowerLossLine.FindAllStringSubmatch(line, -1) {
				r, _ := strconv.Atoi(m[1])
				losses[r], _ = strconv.ParseFloat(m[2], 64)
			}
		}
	}
	return rounds, losses
}

// TestRestartsUnderSocketActivation runs a 10-round FedAvg of real Flower
// 1.8.0 (two stock SuperNodes and a stock ServerApp, which never retries
// a call) on flower-superlink --database FILE under socket activation,
// and restarts the SuperLink three times, each as a node sends its
// trained model. Neither kind of restart closes a port for a moment.
//
// With SIGTERM (systemctl restart) no call fails: the stop sends GOAWAY,
// so a call made on a closing connection is retried by gRPC itself, on a
// new connection that waits in the socket's queue for the next process.
//
// With SIGKILL (a crash, restarted by Restart=always 1 s later, as the
// unit's RestartSec=) the connections die without GOAWAY. Flower 1.8.0's grpcio reads an idle connection only
// when it makes a call, so the ServerApp learns of the crash from its
// next call, which fails; its calls after that reconnect. A kill may so
// fail one call of each of the ServerApp's two node threads, in the round
// of the kill, and no more.
func TestRestartsUnderSocketActivation(t *testing.T) {
	needE2E(t)
	for name, sig := range map[string]syscall.Signal{"SIGTERM": syscall.SIGTERM, "SIGKILL": syscall.SIGKILL} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			restartRun(t, sig)
		})
	}
}

func restartRun(t *testing.T, sig syscall.Signal) {
	const rounds = 10
	name := map[syscall.Signal]string{syscall.SIGTERM: "SIGTERM", syscall.SIGKILL: "SIGKILL"}[sig]
	restartAt := map[int]bool{2: true, 5: true, 8: true}
	// systemctl restart starts the next process once the last ended; a
	// crash is restarted RestartSec= later (1 s in the unit).
	restartDelay := time.Duration(0)
	if sig == syscall.SIGKILL {
		restartDelay = time.Second
	}
	f := flowerenv.Flower18(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	for _, file := range []string{"client.py", "server.py"} {
		data, err := os.ReadFile(filepath.Join("testdata", "flower18", file))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sup := newSupervisor(t, dir, []string{"fleet", "driver", "control", "metrics"},
		"--certificates", slCA, slCert, slKey, "--database", "state.db")
	link := sup.start()
	link.waitOutput(t, "msg=serving", 30*time.Second)
	if want := "systemd_sockets=control,driver,fleet,metrics"; !strings.Contains(link.out.String(), want) {
		t.Fatalf("the SuperLink did not say it serves the sockets passed (%s):\n%s", want, link.out.String())
	}

	env := []string{"SEPAL_ROUNDS=" + strconv.Itoa(rounds), "SEPAL_MODEL_FLOATS=1048576"} // a 4 MiB model
	var nodes []*proc
	for range 2 {
		nodes = append(nodes, start(t, dir, env, filepath.Join(f.Bin, "flower-client-app"), "client:app",
			"--root-certificates", slCA, "--server", sup.addrs["fleet"]))
	}
	began := time.Now()
	server := start(t, dir, env, filepath.Join(f.Bin, "flower-server-app"), "server:app",
		"--root-certificates", slCA, "--server", sup.addrs["driver"])

	// Restart as node 0 reports a trained model (its push follows at
	// once), in the rounds of restartAt.
	var stats []restartStats
	done := map[int]bool{}
	for len(done) < len(restartAt) {
		select {
		case <-server.done:
			t.Fatalf("the ServerApp ended (%v) before the %d restarts were made:\n%s", server.err, len(restartAt), server.out.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Since(began) > 4*time.Minute {
			t.Fatalf("restarts made: %d of %d in 4 minutes", len(done), len(restartAt))
		}
		out := nodes[0].out.String()
		for r := range restartAt {
			if !done[r] && strings.Contains(out, fmt.Sprintf("sepal-test: fit done round %d\n", r)) {
				done[r] = true
				st := sup.restart(sig, restartDelay)
				t.Logf("round %d: %s restart: stopped in %v (exit %d), serving again %v later; %d connections to the ports meanwhile, %d refused",
					r, name, st.stop.Round(time.Millisecond), st.code, st.start.Round(time.Millisecond), st.probes, len(st.refused))
				stats = append(stats, st)
			}
		}
	}
	if code := server.wait(t, 4*time.Minute); code != 0 {
		t.Fatalf("the ServerApp exited %d:\n%s", code, server.out.String())
	}
	elapsed := time.Since(began)
	out := server.out.String()
	if !strings.Contains(out, fmt.Sprintf("Run finished %d rounds", rounds)) {
		t.Fatalf("the ServerApp did not finish %d rounds:\n%s", rounds, out)
	}

	for i, st := range stats {
		if len(st.refused) > 0 {
			t.Errorf("restart %d: %d of %d connections refused while the SuperLink restarted: %v", i+1, len(st.refused), st.probes, st.refused)
		}
		if sig == syscall.SIGTERM {
			if st.code != 0 {
				t.Errorf("restart %d: the SuperLink exited %d on SIGTERM, want 0", i+1, st.code)
			}
			if st.stop > defaultShutdownGraceE2E+2*time.Second {
				t.Errorf("restart %d: the stop took %v, beyond the shutdown grace %v", i+1, st.stop, defaultShutdownGraceE2E)
			}
		}
	}

	rs, losses := parseFlowerRounds(out)
	failedRounds, failures, withResults := 0, 0, 0
	var detail []string // rounds with failures: results+failures
	for r := 1; r <= rounds; r++ {
		rr := rs[r]
		if rr == nil {
			t.Fatalf("round %d is not in the ServerApp's log:\n%s", r, out)
		}
		if rr.fitResults > 0 {
			withResults++
		}
		// Every node trains on the global model and adds 1: the model
		// after round r is the number of rounds that had a result.
		if want := float64(withResults); losses[r] != want {
			t.Errorf("round %d: loss %v, want %v (a result lost, repeated or stale)", r, losses[r], want)
		}
		n := rr.fitFailures + rr.evalFailures
		if n > 0 || rr.fitResults+rr.fitFailures != 2 || rr.evalResults+rr.evalFailures != 2 {
			failedRounds++
			detail = append(detail, fmt.Sprintf("round %d: fit %d+%d, evaluate %d+%d", r, rr.fitResults, rr.fitFailures, rr.evalResults, rr.evalFailures))
		}
		failures += n
		if sig == syscall.SIGTERM && (rr.fitResults != 2 || rr.evalResults != 2) {
			t.Errorf("round %d after SIGTERM restarts: %d fit and %d evaluate results of 2 (%d, %d failures)",
				r, rr.fitResults, rr.evalResults, rr.fitFailures, rr.evalFailures)
		}
	}
	// A kill fails at most the next call of each node thread of the
	// ServerApp, in the round of the kill.
	if sig == syscall.SIGKILL && (failedRounds > len(stats) || failures > 2*len(stats)) {
		t.Errorf("%d SIGKILLs failed %d calls in %d rounds, want at most %d calls in %d rounds", len(stats), failures, failedRounds, 2*len(stats), len(stats))
	}
	t.Logf("%d rounds of Flower 1.8.0 FedAvg with %d %s restarts in %v: %d rounds complete, %d failed calls %v",
		rounds, len(stats), name, elapsed.Round(100*time.Millisecond), rounds-failedRounds, failures, detail)
	if sig == syscall.SIGTERM {
		if strings.Contains(sup.output(), "calls still in flight after the shutdown grace are cut") {
			t.Errorf("a SIGTERM stop cut calls in flight:\n%s", sup.output())
		}
		// The metrics socket is served by the last SuperLink too.
		resp, err := http.Get("http://" + sup.addrs["metrics"] + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("/healthz on the metrics socket: %v %v", resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
}

// defaultShutdownGraceE2E is flower-superlink's --shutdown-grace default.
const defaultShutdownGraceE2E = 8 * time.Second

// output returns the output of the SuperLink running now.
func (s *supervisor) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p.out.String()
}

// A socket passed whose name is none of the APIs', or that disagrees with
// the address flag given for its API, stops the SuperLink at start with
// exit 1 and a message that says what to fix.
func TestSocketActivationRefusals(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		names []string
		args  []string
		want  string
	}{
		{[]string{"fleet", "web"}, nil, `socket activation: a socket named "web" was passed (LISTEN_FDNAMES): name each socket of the .socket unit with FileDescriptorName=, one of fleet, driver, serverappio, control, metrics`},
		{[]string{"fleet"}, []string{"--grpc-rere-fleet-api-address", "127.0.0.1:1"}, `--grpc-rere-fleet-api-address 127.0.0.1:1 and the socket named "fleet" that systemd passed (127.0.0.1:`},
		{[]string{"driver", "driver"}, nil, `two sockets named "driver" were passed`},
	} {
		sup := newSupervisor(t, dir, tc.names, append([]string{"--insecure", "--database", ":memory:"}, tc.args...)...)
		p := sup.start()
		if code := p.wait(t, 20*time.Second); code != 1 || !strings.Contains(p.out.String(), tc.want) {
			t.Errorf("sockets %v, flags %v: exit %d, want 1 and %q:\n%s", tc.names, tc.args, code, tc.want, p.out.String())
		}
	}
}

// flower-superlink takes the sockets that systemd's own implementation of
// the protocol passes: systemd-socket-activate binds them and execs the
// SuperLink at the first connection, as systemd starts a service at its
// socket's first connection; that connection waits in the queue meanwhile
// and is served.
func TestSystemdSocketActivate(t *testing.T) {
	needE2E(t)
	t.Parallel()
	ssa := needTool(t, "systemd", "systemd-socket-activate")
	fleet, driver := freeAddr(t), freeAddr(t)
	p := start(t, t.TempDir(), nil, ssa, "-l", fleet, "-l", driver, "--fdname=fleet:driver",
		bin(t, "flower-superlink"), "--insecure", "--control-api-address", freeAddr(t))
	p.waitOutput(t, "Listening on "+driver, 10*time.Second)
	creds := insecure.NewCredentials()
	if st, err := testkit.HealthCheck(t, fleet, creds); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("the first connection, made before the SuperLink ran: %v %v", st, err)
	}
	p.waitOutput(t, "systemd_sockets=driver,fleet", 10*time.Second)
	if st, err := testkit.HealthCheck(t, driver, creds); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("the Driver API on its socket: %v %v", st, err)
	}
	stopWith(t, p, syscall.SIGTERM)
}
