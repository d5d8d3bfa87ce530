package load

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/app"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// superlinkBinary builds flower-superlink once for the package's tests.
func superlinkBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs flower-superlink: skipped under -short (CI runs it)")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sepal-load-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin, buildErr = Build(context.Background(), dir)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	MaybeFloorServer()
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

func start(t *testing.T, args ...string) *SuperLink {
	t.Helper()
	s, err := Start(context.Background(), Options{Binary: superlinkBinary(t), Dir: t.TempDir(), Args: args})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

// The FedAvg workload with a tiny model runs to the end, and the figures
// it reports are the SuperLink's: CPU time that grew while it served,
// memory read from its /proc entry, one wall time per round.
func TestFedAvgSmoke(t *testing.T) {
	s := start(t)
	o := FedAvgOptions{Nodes: 2, Rounds: 2, ModelBytes: 256 << 10, NodePoll: 50 * time.Millisecond, ServerPoll: 50 * time.Millisecond}
	r, err := RunFedAvg(context.Background(), s, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rounds) != 2 || len(r.RoundCPU) != 2 {
		t.Fatalf("rounds %v, CPU per round %v: want 2 each", r.Rounds, r.RoundCPU)
	}
	if r.Wall < r.Rounds[0]+r.Rounds[1] {
		t.Errorf("run wall time %v is less than its rounds %v", r.Wall, r.Rounds)
	}
	// The SuperLink held at least one model's worth of data at its peak.
	if r.Memory.HWM < int64(o.ModelBytes) || r.Memory.RSS > r.Memory.HWM {
		t.Errorf("memory %+v: want a peak of at least the model (%d bytes), and RSS <= peak", r.Memory, o.ModelBytes)
	}
	exit := s.Stop()
	if exit.Err != nil {
		t.Fatalf("the SuperLink did not stop cleanly: %v\n%s", exit.Err, tail(s.LogFile))
	}
	if exit.CPU <= 0 || exit.CPU != exit.User+exit.Sys {
		t.Errorf("exit %+v", exit)
	}
	log, err := os.ReadFile(s.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "node joined"); n != 2 {
		t.Errorf("the SuperLink logged %d nodes joining, want 2:\n%s", n, log)
	}
}

// MovedEachWay counts what the SuperLink relays: the model's .npy payload
// (the array and its 128-byte header) once for get_parameters and three
// times per node and round.
func TestMovedEachWay(t *testing.T) {
	o, err := FedAvgOptions{Nodes: 2, Rounds: 2, ModelBytes: 32 << 20}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	enc, err := app.EncodeNPY(app.Array{DType: "float32", Shape: []int{o.ModelBytes / 4}, Data: make([]byte, o.ModelBytes)})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(enc)) != o.Payload() {
		t.Errorf("Payload %d, the .npy encoding is %d bytes", o.Payload(), len(enc))
	}
	if got, want := o.MovedEachWay(), int64(13)*o.Payload(); got != want {
		t.Errorf("MovedEachWay %d, want %d (416 MiB for 2 nodes and 2 rounds of 32 MiB)", got, want)
	}
	for _, bad := range []FedAvgOptions{{Nodes: -1}, {ModelBytes: 6}, {Rounds: -2}} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// Idle nodes register, poll, and their memory is read from the SuperLink.
func TestIdleSmoke(t *testing.T) {
	s := start(t)
	r, err := RunIdle(context.Background(), s, IdleOptions{Nodes: 20, Poll: 100 * time.Millisecond, Settle: 500 * time.Millisecond, Ramp: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Before.RSS <= 0 || r.After.RSS <= 0 || r.Nodes != 20 {
		t.Errorf("result %+v", r)
	}
	if r.After.RSS <= r.Before.RSS {
		t.Errorf("20 connected nodes cost the SuperLink no memory: %+v", r)
	}
}

// Small calls are answered at every level, and counted.
func TestRPCsSmoke(t *testing.T) {
	s := start(t)
	levels, err := RunRPCs(context.Background(), s, RPCOptions{Nodes: 8, Levels: []int{1, 8}, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(levels) != 2 {
		t.Fatalf("%d levels, want 2", len(levels))
	}
	for _, l := range levels {
		if l.Calls == 0 || l.Errors != 0 || l.P50 <= 0 || l.P99 < l.P50 || l.PerSecond() <= 0 {
			t.Errorf("level %+v", l)
		}
	}
}

// The TLS floor moves its bytes through a child process and reports its
// CPU time, which grows with the bytes.
func TestFloor(t *testing.T) {
	s := start(t)
	small, err := Floor(context.Background(), s, 1<<20, 1<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	big, err := Floor(context.Background(), s, 256<<20, 256<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if small <= 0 || big <= small {
		t.Errorf("floor CPU time: %v for 1 MiB each way, %v for 256 MiB", small, big)
	}
}

func TestReadProc(t *testing.T) {
	m, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.HWM < m.RSS {
		t.Errorf("own memory %+v", m)
	}
	c0, err := ReadCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(100 * time.Millisecond); time.Now().Before(end); {
	}
	c1, err := ReadCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if c1 <= c0 {
		t.Errorf("CPU time did not grow over 100 ms of busy loop: %v then %v", c0, c1)
	}
}

// After 64 MiB were touched and given back, ResetPeak brings VmHWM down
// to the RSS of now.
func TestResetPeak(t *testing.T) {
	b := make([]byte, 64<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	peak, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(b)
	b = nil
	debug.FreeOSMemory()
	if err := ResetPeak(os.Getpid()); err != nil {
		t.Fatal(err)
	}
	m, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("VmHWM %d MiB with 64 MiB touched; after they were given back and ResetPeak: VmHWM %d MiB, VmRSS %d MiB", peak.HWM>>20, m.HWM>>20, m.RSS>>20)
	if m.HWM > peak.HWM-32<<20 || m.HWM < m.RSS {
		t.Errorf("VmHWM after ResetPeak %d MiB, the peak before %d MiB, VmRSS %d MiB", m.HWM>>20, peak.HWM>>20, m.RSS>>20)
	}
}
