package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
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
	if c, err := parseArgs([]string{"--mode", "flwr"}, io.Discard); err != nil || c.nodes != 2 || c.app != "quickstart" {
		t.Errorf("--mode flwr: %+v, %v; want 2 nodes and quickstart by default", c, err)
	}
	for _, bad := range [][]string{
		{"--mode", "flwr", "--app", "nope"},
		{"--mode", "flwr", "--nodes", "100"},
		{"--mode", "flwr", "--", "--insecure"},
		{"--app", "arrays32"},
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
