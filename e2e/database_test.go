package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/state/sqlstate"
	"github.com/sepal-fl/sepal/transport"
)

// The crash tests run a FedAvg of Sepal's nodes and server app (in this
// process) against the real flower-superlink binary with --database FILE,
// and stop the SuperLink again and again at chosen points, starting it
// again on the same file each time. Every run must finish with every round
// averaged over every node and the model exactly where a run without
// crashes puts it.
//
// The points, in a cycle, each armed once the SuperLink serves again:
//
//   - fit: while a node trains (between its PullTaskIns and its PushTaskRes);
//   - push-ins: 256 KiB into the ServerApp's upload of a TaskIns with the
//     model (PushTaskIns);
//   - pull-ins: 256 KiB into a node's download of a TaskIns (PullTaskIns);
//   - push-res: 256 KiB into a node's upload of its trained model
//     (PushTaskRes);
//   - pull-res: 256 KiB into the ServerApp's download of the trained models
//     (PullTaskRes).
//
// The byte points are found by a TCP proxy between the clients and the
// SuperLink that counts what passes each way (TLS passes through it).
//
// SEPAL_CRASH_KILLS sets the number of SIGKILLs (default 30; the SIGTERM
// test does a third of it), for a longer run by hand.

const crashModelBytes = 2 << 20 // one float32 array

var crashPoints = []string{"fit", "push-ins", "pull-ins", "push-res", "pull-res"}

func crashKills(t *testing.T) int {
	if v := os.Getenv("SEPAL_CRASH_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("SEPAL_CRASH_KILLS=%q: want a number of kills >= 1", v)
		}
		return n
	}
	return 30
}

func TestCrashSIGKILL(t *testing.T) {
	needE2E(t)
	crashRun(t, syscall.SIGKILL, crashKills(t))
}

func TestCrashSIGTERM(t *testing.T) {
	needE2E(t)
	crashRun(t, syscall.SIGTERM, max(crashKills(t)/3, len(crashPoints)))
}

// crashLink is the SuperLink under test: the binary, restarted on the same
// file and ports after each stop, behind a counting proxy.
type crashLink struct {
	t      *testing.T
	sig    syscall.Signal
	target int // stops to make

	mu      sync.Mutex
	sl      *superLink // the one running now
	armed   string     // the point that stops it next ("" none)
	counted int64      // bytes seen at the armed byte point since it was armed
	kills   map[string]int
	total   int
	err     error
}

// arm sets the next point of the cycle, unless enough stops were made.
// Called with mu held.
func (l *crashLink) armNext() {
	if l.total >= l.target {
		l.armed = ""
		return
	}
	l.armed = crashPoints[l.total%len(crashPoints)]
	l.counted = 0
}

// hit is called at point; it stops the SuperLink when point is armed. It
// returns whether it did.
func (l *crashLink) hit(point string, n int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.armed != point {
		return false
	}
	if point != "fit" {
		l.counted += n
		if l.counted < 256<<10 {
			return false
		}
	}
	l.armed = ""
	l.kills[point]++
	l.total++
	sl := l.sl
	if err := sl.cmd.Process.Signal(l.sig); err != nil {
		l.err = fmt.Errorf("signal: %w", err)
		return false
	}
	go l.restart(sl)
	return true
}

// restart waits for the stopped SuperLink to end, starts it again and arms
// the next point once it serves.
func (l *crashLink) restart(old *superLink) {
	select {
	case <-old.done:
	case <-time.After(30 * time.Second):
		l.mu.Lock()
		l.err = fmt.Errorf("the SuperLink did not end within 30s of %v", l.sig)
		l.mu.Unlock()
		old.cmd.Process.Kill()
		<-old.done
	}
	if l.sig == syscall.SIGTERM && old.cmd.ProcessState.ExitCode() != 0 {
		l.mu.Lock()
		l.err = fmt.Errorf("the SuperLink exited %d on SIGTERM:\n%s", old.cmd.ProcessState.ExitCode(), old.out.String())
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.sl = old.again(l.t)
	sl := l.sl
	l.mu.Unlock()
	for deadline := time.Now().Add(30 * time.Second); !sl.serving(); {
		if time.Now().After(deadline) {
			l.mu.Lock()
			l.err = fmt.Errorf("the SuperLink did not serve again within 30s:\n%s", sl.out.String())
			l.mu.Unlock()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.mu.Lock()
	l.armNext()
	l.mu.Unlock()
}

// crashProxy forwards fleet and driver connections to the SuperLink and
// tells the link how many bytes pass, by point.
func crashProxy(t *testing.T, l *crashLink, target string, up, down string) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pipe := func(dst, src net.Conn, point string) {
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						l.hit(point, int64(n))
						if _, werr := dst.Write(buf[:n]); werr != nil {
							err = werr
						}
					}
					if err != nil {
						dst.Close()
						src.Close()
						return
					}
				}
			}
			go pipe(s, c, up)
			go pipe(c, s, down)
		}
	}()
	return lis.Addr().String()
}

// addOneClient is a node's ClientApp whose training adds 1 to every
// parameter, so that after r rounds of FedAvg every parameter is exactly r,
// and that calls onFit (if set) with the number of Fit calls of all nodes
// so far. Its model is one float32 array of size bytes.
type addOneClient struct {
	size  int
	fits  *atomic.Int64
	onFit func(n int64)
}

func (c *addOneClient) GetParameters(context.Context, app.Config) ([]app.Array, error) {
	return []app.Array{app.Float32s(make([]float32, c.size/4))}, nil
}

func (c *addOneClient) Fit(_ context.Context, params []app.Array, _ app.Config) (app.FitRes, error) {
	vals, err := params[0].Float32s()
	if err != nil {
		return app.FitRes{}, err
	}
	for i := range vals {
		vals[i]++
	}
	n := c.fits.Add(1)
	if c.onFit != nil {
		c.onFit(n)
	}
	return app.FitRes{Parameters: []app.Array{app.Float32s(vals)}, NumExamples: 1}, nil
}

func (c *addOneClient) Evaluate(_ context.Context, params []app.Array, _ app.Config) (app.EvaluateRes, error) {
	vals, err := params[0].Float32s()
	if err != nil {
		return app.EvaluateRes{}, err
	}
	return app.EvaluateRes{Loss: float64(vals[0]), NumExamples: 1}, nil
}

// checkAddOneRun fails t unless the FedAvg run of addOneClient nodes
// summed up in sum did every round with every node: each round's model is
// its number, and the final parameters are all rounds.
func checkAddOneRun(t *testing.T, sum *app.Summary, rounds, nodes int) {
	t.Helper()
	if len(sum.Rounds) != rounds {
		t.Fatalf("%d rounds done, want %d", len(sum.Rounds), rounds)
	}
	for _, r := range sum.Rounds {
		if r.Nodes != nodes {
			t.Errorf("round %d averaged %d nodes, want %d (a result lost)", r.Round, r.Nodes, nodes)
		}
		if want := float64(r.Round); r.EvalLoss != want {
			t.Errorf("round %d: model at %v, want %v (a result lost, repeated or stale)", r.Round, r.EvalLoss, want)
		}
	}
	vals, err := sum.Parameters[0].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		if v != float32(rounds) {
			t.Fatalf("final parameter %d is %v, want %d", i, v, rounds)
		}
	}
}

func crashRun(t *testing.T, sig syscall.Signal, kills int) {
	// early: the restarts, in the proxy's goroutines, wait on their own.
	sl := startSuperLink(t, linkOptions{certs: true, args: []string{"--database", "state.db"}, early: true})
	sl.waitServing(t)
	dir := sl.dir
	db := filepath.Join(dir, "state.db")
	l := &crashLink{t: t, sl: sl, sig: sig, target: kills, kills: map[string]int{}}
	pFleet := crashProxy(t, l, sl.fleet, "push-res", "pull-ins")
	pDriver := crashProxy(t, l, sl.driver, "push-ins", "pull-res")

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	tlsOpts := transport.ClientOptions{RootCertificates: filepath.Join(dir, slCA)}
	const nodes = 2
	rounds := kills/3 + 2
	var fits atomic.Int64
	nodeErr := make(chan error, nodes)
	nctx, stopNodes := context.WithCancel(ctx)
	for range nodes {
		go func() {
			nodeErr <- app.RunNode(nctx, app.NodeOptions{
				Server: pFleet, TLS: tlsOpts, PollInterval: 20 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				NewClient: func(int64) app.ClientApp {
					return &addOneClient{size: crashModelBytes, fits: &fits, onFit: func(int64) {
						if l.hit("fit", 0) {
							time.Sleep(100 * time.Millisecond) // the push comes after the stop
						}
					}}
				},
			})
		}()
	}
	defer func() {
		stopNodes()
		for range nodes {
			<-nodeErr
		}
	}()

	l.mu.Lock()
	l.armNext()
	l.mu.Unlock()
	start := time.Now()
	sum, err := app.RunFedAvg(ctx, app.ServerOptions{
		Server: pDriver, TLS: tlsOpts, Rounds: rounds, MinNodes: nodes,
		PollInterval: 20 * time.Millisecond, NodesInterval: 50 * time.Millisecond, RoundTimeout: time.Minute,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	l.mu.Lock()
	l.armed = "" // no more stops
	killed, byPoint, lerr := l.total, fmt.Sprint(l.kills), l.err
	l.mu.Unlock()
	t.Logf("%v %d times at %s during a %d-round FedAvg of %d nodes with a %d MiB model, in %v",
		sig, killed, byPoint, rounds, nodes, crashModelBytes>>20, time.Since(start).Round(time.Millisecond))
	if lerr != nil {
		t.Fatal(lerr)
	}
	if err != nil {
		t.Fatalf("the FedAvg run failed: %v", err)
	}
	if killed < len(crashPoints) {
		t.Errorf("stopped the SuperLink %d times, want at least once at each of %v", killed, crashPoints)
	}
	for _, pt := range crashPoints {
		if l.kills[pt] == 0 {
			t.Errorf("never stopped at %s", pt)
		}
	}
	checkAddOneRun(t, sum, rounds, nodes)

	// The file: each TaskIns the ServerApp waited for gave one result
	// (get_parameters, then train and evaluate per node per round).
	stopNodes()
	l.mu.Lock()
	sl = l.sl
	l.mu.Unlock()
	sl.stop()
	s, err := sqlstate.OpenSQLite(context.Background(), db, sqlstate.SQLiteOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatalf("the state file after the run: %v", err)
	}
	defer s.Close()
	runs, err := s.Runs(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.ID != sum.RunID {
			continue
		}
		if want := 1 + 2*nodes*rounds; r.TaskResPulled != want {
			t.Errorf("run %d: %d results delivered, want %d", r.ID, r.TaskResPulled, want)
		}
		t.Logf("run %d: %d TaskIns pushed (%d beyond those waited for: pushes retried after a stop), %d results delivered, %d Fit calls for %d trainings",
			r.ID, r.TaskInsPushed, r.TaskInsPushed-(1+2*nodes*rounds), r.TaskResPulled, fits.Load(), nodes*rounds)
		return
	}
	t.Errorf("run %d is not in the state file (%d runs)", sum.RunID, len(runs))
}
