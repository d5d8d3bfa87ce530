package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/flowerenv"
	"github.com/sepal-fl/sepal/internal/load"
)

func TestMain(m *testing.M) {
	load.MaybeFloorServer() // run() starts this test binary as the TLS floor's server
	os.Exit(m.Run())
}

func TestParseArgs(t *testing.T) {
	c, err := parseArgs([]string{"--nodes", "4", "--", "--database", "x.db"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.nodes != 4 || strings.Join(c.args, " ") != "--database x.db" || c.mode != "fedavg" || c.modelMiB != 32 {
		t.Errorf("config %+v", c)
	}
	if c, err := parseArgs([]string{"--mode", "idle"}, io.Discard); err != nil || c.nodes != 1000 {
		t.Errorf("--mode idle: nodes %v, %v; want 1000 by default", c, err)
	}
	if c.protocol != "1.8" || c.serverPoll != time.Second || c.nodePoll != 3*time.Second {
		t.Errorf("by default: protocol %q, polls %v and %v; want 1.8, 1s and 3s", c.protocol, c.serverPoll, c.nodePoll)
	}
	if c, err := parseArgs([]string{"--protocol", "1.29"}, io.Discard); err != nil || c.serverPoll != 3*time.Second {
		t.Errorf("--protocol 1.29: %+v, %v; want the ServerApp polling every 3s, as Flower 1.29.0's", c, err)
	}
	if c, err := parseArgs([]string{"--flower-superlink", os.Args[0]}, io.Discard); err != nil || c.protocol != "1.29" {
		t.Errorf("--flower-superlink: %+v, %v; want --protocol 1.29", c, err)
	}
	if c, err := parseArgs([]string{"--against", os.Args[0]}, io.Discard); err != nil || c.protocol != "1.29" || c.against != os.Args[0] {
		t.Errorf("--against: %+v, %v; want --protocol 1.29", c, err)
	}
	if c, err := parseArgs([]string{"--mode", "flwr"}, io.Discard); err != nil || c.nodes != 2 || c.app != "quickstart" {
		t.Errorf("--mode flwr: %+v, %v; want 2 nodes and quickstart by default", c, err)
	}
	for _, bad := range [][]string{
		{"--mode", "flwr", "--app", "nope"},
		{"--mode", "flwr", "--nodes", "100"},
		{"--mode", "flwr", "--", "--insecure"},
		{"--app", "arrays32"},
		{"--mode", "flwr", "--protocol", "1.29"},
		{"--mode", "flwr", "--flower-superlink", os.Args[0]},
		{"--mode", "flwr", "--against", os.Args[0]},
	} {
		if _, err := parseArgs(bad, io.Discard); !errors.As(err, new(*cli.UsageError)) {
			t.Errorf("%q: %v, want a usage error", bad, err)
		}
	}
	for _, bad := range [][]string{
		{"--mode", "chaos"},
		{"--nodes", "-1"},
		{"--model-mib", "0"},
		{"--model-mib", "600"},
		{"--repeat", "0"},
		{"--superlink-env", "GOGC"},
		{"stray"},
		{"stray", "--", "--insecure"},
		{"--protocol", "1.9"},
		{"--protocol", "1.29", "--mode", "idle"},
		{"--flower-superlink", "/no/such/flower-superlink"},
		{"--flower-superlink", os.Args[0], "--protocol", "1.8"},
		{"--node-poll", "-1s"},
		{"--against", "/no/such/flower-superlink"},
		{"--against", os.Args[0], "--protocol", "1.8"},
		{"--against", os.Args[0], "--flower-superlink", os.Args[0]},
		{"--against", os.Args[0], "--mode", "idle"},
		{"--against", os.Args[0], "--postgres"},
		{"--against", os.Args[0], "--", "--database", "x.db"},
	} {
		_, err := parseArgs(bad, io.Discard)
		if ue, ok := errors.AsType[*cli.UsageError](err); !ok {
			t.Errorf("%q: %v, want a usage error", bad, err)
		} else if !strings.Contains(ue.Msg, strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("%q: %q does not name %s", bad, ue.Msg, bad[0])
		}
	}
}

// One tiny FedAvg run, twice, through the whole command: every figure is
// printed on a line of its own, with its median and range.
func TestRunPrintsFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs flower-superlink: skipped under -short (CI runs it)")
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"--nodes", "2", "--rounds", "1", "--model-mib", "0.25",
		"--node-poll", "50ms", "--server-poll", "50ms", "--repeat", "2"}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out.String(), errOut.String())
	}
	for _, fig := range []string{"superlink_cpu_s", "superlink_peak_rss_mib", "round_1_wall_s", "run_wall_s", "moved_each_way_mib", "tls_floor_cpu_s", "superlink_cpu_over_floor"} {
		re := regexp.MustCompile(`(?m)^` + fig + ` +[0-9.]+  \(median of 2; range [0-9.]+-[0-9.]+; runs [0-9.]+ [0-9.]+\)$`)
		if !re.MatchString(out.String()) {
			t.Errorf("no line for %s in:\n%s", fig, out.String())
		}
	}
}

// The Flower 1.29.0 FedAvg workload through the whole command: its own
// figures, the objects held and the bytes moved each way among them.
func TestRun129PrintsFigures(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs flower-superlink: skipped under -short (CI runs it)")
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"--protocol", "1.29", "--nodes", "2", "--rounds", "1", "--model-mib", "0.25",
		"--node-poll", "50ms", "--server-poll", "50ms"}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out.String(), errOut.String())
	}
	for _, fig := range []string{"superlink_cpu_s", "superlink_peak_rss_mib", "held_peak_mib", "peak_rss_over_held", "round_1_wall_s", "fleet_in_mib", "fleet_out_mib", "appio_in_mib", "appio_out_mib", "fleet_calls", "tls_floor_cpu_s", "plain_floor_cpu_s", "floor_cpu_s", "superlink_cpu_over_floor", "checks_cpu_s", "superlink_cpu_over_floor_and_checks", "superlink_rss_start_mib", "peak_rss_growth_over_held"} {
		re := regexp.MustCompile(`(?m)^` + fig + ` +[0-9.]+$`)
		if !re.MatchString(out.String()) {
			t.Errorf("no line for %s in:\n%s", fig, out.String())
		}
	}
}

// --against: Flower 1.29.0's SuperLink and Sepal's in turn, twice; each
// one's figures under its heading, then Flower's over Sepal's per pair.
func TestRunAgainstFlower(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Flower 1.29.0's flower-superlink: skipped under -short (CI runs it)")
	}
	f := flowerenv.Flower129(t)
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"--against", filepath.Join(f.Bin, "flower-superlink"), "--nodes", "2", "--rounds", "1",
		"--model-mib", "0.25", "--node-poll", "50ms", "--server-poll", "50ms", "--repeat", "2"}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out.String(), errOut.String())
	}
	sections := regexp.MustCompile(`(?m)^## .*$`).FindAllStringIndex(out.String(), -1)
	if len(sections) != 3 {
		t.Fatalf("%d sections (## lines), want Flower's, Sepal's and the ratios:\n%s", len(sections), out.String())
	}
	part := func(i int) string {
		end := len(out.String())
		if i+1 < len(sections) {
			end = sections[i+1][0]
		}
		return out.String()[sections[i][0]:end]
	}
	runs := `  \(median of 2; range [0-9.]+-[0-9.]+; runs [0-9.]+ [0-9.]+\)$`
	for i, figs := range [][]string{
		{"superlink_cpu_s", "superlink_peak_rss_mib", "held_peak_mib", "floor_cpu_s", "checks_cpu_s"},
		{"superlink_cpu_s", "superlink_peak_rss_mib", "held_peak_mib", "floor_cpu_s", "checks_cpu_s"},
		{"flower_over_sepal_cpu_s", "flower_over_sepal_peak_rss_mib"},
	} {
		for _, fig := range figs {
			if !regexp.MustCompile(`(?m)^` + fig + ` +[0-9.]+` + runs).MatchString(part(i)) {
				t.Errorf("section %d has no line for %s over 2 runs:\n%s", i+1, fig, part(i))
			}
		}
	}
	if !strings.Contains(part(0), "Flower") || !strings.Contains(part(1), "Sepal") {
		t.Errorf("sections out of order:\n%s", out.String())
	}
}
