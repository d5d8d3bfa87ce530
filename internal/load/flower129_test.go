package load

import (
	"context"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/flowerenv"
)

// One round of quickstart-numpy through Sepal's SuperLink and through
// Flower 1.29.0's own, as sepal-load --mode flwr runs them: the run
// completes and the SuperLink's CPU time and peak RSS are read.
func TestRunFlower129(t *testing.T) {
	bin := superlinkBinary(t)
	flowerenv.Flower129(t) // skips, or fails in CI, without ../shared
	// A Flower of the test's own, as sepal-load prepares one: tests of
	// other checkouts cannot prepare it again under its processes.
	f, err := flowerenv.PrepareIn("flower-1.29", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	app, err := App("quickstart", f.Source)
	if err != nil {
		t.Fatal(err)
	}
	for _, sl := range []struct {
		name, bin string
		sepal     bool
	}{{"sepal", bin, true}, {"flower", f.Bin + "/flower-superlink", false}} {
		t.Run(sl.name, func(t *testing.T) {
			r, err := RunFlower129(context.Background(), Flower129Options{Bin: f.Bin, SuperLink: sl.bin, Sepal: sl.sepal, App: app, Rounds: 1, Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s's SuperLink: %v CPU (%v during the run), peak RSS %d MiB, flwr run %v", sl.name, r.CPU, r.RunCPU, r.PeakRSS>>20, r.Wall)
			if r.CPU <= 0 || r.RunCPU <= 0 || r.RunCPU > r.CPU || r.PeakRSS < 1<<20 || !strings.Contains(r.Log, "[ROUND 1/1]") {
				t.Errorf("figures %+v", r)
			}
		})
	}
	if _, err := App("nope", f.Source); err == nil {
		t.Error("App of an unknown name did not fail")
	}
}
