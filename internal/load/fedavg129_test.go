package load

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/flowerenv"
	"github.com/sepal-fl/sepal/internal/inflatable"
)

// The Flower 1.29.0 FedAvg workload with a model of two chunks runs to
// the end on Sepal's SuperLink, and its figures are the run's: CPU time
// per round, a peak of held objects that is at least the model and the
// replies of one round, every byte moved counted, every Fleet call
// signed and verified (a node whose calls failed would fail the run).
func TestFedAvg129Smoke(t *testing.T) {
	objects := t.TempDir()
	s, err := Start(context.Background(), Options{Binary: superlinkBinary(t), Dir: t.TempDir(), Flower129: true,
		Args: []string{"--object-dir", objects}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	o := FedAvg129Options{Nodes: 2, Rounds: 2, ModelBytes: 6 << 20, NodePoll: 50 * time.Millisecond, ServerPoll: 50 * time.Millisecond, InStep: true}
	r, err := RunFedAvg129(context.Background(), s, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Rounds) != 2 || len(r.RoundCPU) != 2 {
		t.Fatalf("rounds %v, CPU per round %v: want 2 each", r.Rounds, r.RoundCPU)
	}
	payload := int64(o.ModelBytes + 128)
	// Per round, through ServerAppIo: the model pushed twice (train, then
	// the new model to evaluate), the replies pulled; through the Fleet
	// API: the replies pushed, the model pulled twice by each node.
	for _, c := range []struct {
		what      string
		got, want int64
	}{
		{"pushed by the ServerApp", r.AppIo.In, 2 * 2 * payload},
		{"pulled by the ServerApp", r.AppIo.Out, 2 * 2 * payload},
		{"pushed by the nodes", r.Fleet.In, 2 * 2 * payload},
		{"pulled by the nodes", r.Fleet.Out, 2 * 2 * 2 * payload},
	} {
		if c.got < c.want || c.got > c.want+c.want/10 {
			t.Errorf("%d bytes %s, want about %d", c.got, c.what, c.want)
		}
	}
	if r.Part < inflatable.MaxChunkSize || r.Part > inflatable.MaxChunkSize+100 {
		t.Errorf("largest object %d bytes, want a 5 MiB chunk and its head", r.Part)
	}
	if r.HeldPeak < payload || r.HeldPeak > 4*payload {
		t.Errorf("held at most %d bytes, want between the model (%d) and the model and two replies and a bit", r.HeldPeak, payload)
	}
	if r.FleetCalls < 2*2*2*5 {
		t.Errorf("%d Fleet calls, want at least 5 per message and node", r.FleetCalls)
	}
	if r.Memory.HWM < payload {
		t.Errorf("memory %+v: want a peak of at least the model", r.Memory)
	}
	// The replies' 5 MiB chunks went to nameless files of --object-dir,
	// which the SuperLink keeps open, their space reused.
	files, size := openFilesIn(t, s.PID(), objects)
	if files == 0 || size < inflatable.MaxChunkSize {
		t.Errorf("the SuperLink holds %d files of %s, %d bytes: want the replies' chunks there", files, objects, size)
	}
	if names, err := os.ReadDir(objects); err != nil || len(names) != 0 {
		t.Errorf("%s holds %d names (%v): the object files must have none", objects, len(names), err)
	}
	exit := s.Stop()
	if exit.Err != nil {
		t.Fatalf("the SuperLink did not stop cleanly: %v\n%s", exit.Err, tail(s.LogFile))
	}
	log, err := os.ReadFile(s.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"run finished", "node unregistered"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the SuperLink's log has no %q:\n%s", want, log)
		}
	}
}

// The same workload drives Flower 1.29.0's own SuperLink (in-memory
// state, its ServerAppIo in plaintext), which answers it as Sepal's does:
// the harness speaks Flower's protocol, not Sepal's reading of it.
func TestFedAvg129Flower(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Flower 1.29.0's flower-superlink: skipped under -short (CI runs it)")
	}
	f := flowerenv.Flower129(t)
	s, err := Start(context.Background(), Options{Binary: filepath.Join(f.Bin, "flower-superlink"), Dir: t.TempDir(), Flower: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	o := FedAvg129Options{Nodes: 2, Rounds: 1, ModelBytes: 6 << 20, NodePoll: 100 * time.Millisecond, ServerPoll: 100 * time.Millisecond, InStep: true}
	r, err := RunFedAvg129(context.Background(), s, o)
	if err != nil {
		t.Fatalf("%v\n%s", err, tail(s.LogFile))
	}
	if payload := int64(o.ModelBytes + 128); r.In() < 4*payload || r.Fleet.Out < 4*payload || r.HeldPeak < payload {
		t.Errorf("result %+v: want the model and two replies in, the model twice to each node and the replies out", r)
	}
	if exit := s.Stop(); exit.Err != nil || exit.CPU <= 0 {
		t.Fatalf("Flower's SuperLink did not stop cleanly on SIGINT: %+v\n%s", exit, tail(s.LogFile))
	}
}

// openFilesIn returns how many files of dir process pid holds open, and
// their total size.
func openFilesIn(t *testing.T, pid int, dir string) (n int, size int64) {
	t.Helper()
	fds := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	es, err := os.ReadDir(fds)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		p := filepath.Join(fds, e.Name())
		if l, err := os.Readlink(p); err == nil && strings.HasPrefix(l, dir+"/") {
			if fi, err := os.Stat(p); err == nil {
				n++
				size += fi.Size()
			}
		}
	}
	return n, size
}
