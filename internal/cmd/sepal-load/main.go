// Command sepal-load measures a flower-superlink process under load: a
// FedAvg run with Flower 1.8.0's message sequence and sizes, or with
// Flower 1.29.0's (--protocol 1.29: signed Fleet calls, objects,
// ServerAppIo and Control), many idle SuperNodes, or small calls as fast
// as they come. It builds flower-superlink from this module (or runs
// --superlink, or Flower's own with --flower-superlink), starts it over
// TLS with a P-256 certificate on free loopback ports, runs the workload
// with Go SuperNodes and a Go ServerApp, and prints one line per figure:
//
//	go run ./internal/cmd/sepal-load --nodes 2 --rounds 2 --model-mib 32
//	go run ./internal/cmd/sepal-load --protocol 1.29 --nodes 16 --repeat 3
//	go run ./internal/cmd/sepal-load --flower-superlink DEST/bin/flower-superlink
//	go run ./internal/cmd/sepal-load --protocol 1.29 --nodes 16 --repeat 3 --against DEST/bin/flower-superlink
//	go run ./internal/cmd/sepal-load --nodes 4 --repeat 3 -- --database state.db
//	go run ./internal/cmd/sepal-load --nodes 16 --postgres
//	go run ./internal/cmd/sepal-load --mode idle --nodes 1000
//	go run ./internal/cmd/sepal-load --mode rpcs --nodes 1000
//
// With --mode flwr it runs real Flower 1.29.0 instead (prepared from
// ../shared/flower-1.29 into a folder of its own): two stock SuperNodes and
// `flwr run` of a Flower App over TLS, through Sepal's SuperLink and then
// through Flower 1.29.0's own (in-memory state), in turn, --repeat times,
// and prints each one's CPU seconds (its /proc/PID/stat utime+stime up to
// the end of the run, its own, not its children's) and peak RSS (VmHWM).
// The figures in docs/performance.md's Flower 1.29 section came from:
//
//	go run ./internal/cmd/sepal-load --mode flwr --app quickstart --rounds 3 --repeat 3
//	go run ./internal/cmd/sepal-load --mode flwr --app arrays32 --rounds 2 --repeat 3
//
// Flags after "--" go to flower-superlink. The SuperLink's CPU time is its
// rusage (user+sys) over its whole life, its peak RSS the VmHWM read just
// before it stops. With --postgres, the harness starts a throwaway
// PostgreSQL server (Debian's postgresql package, as the tests do; fsync
// on), gives each run a new database on it through --database, and reports
// the CPU time of the server's processes (the postmaster and its backends,
// from /proc) beside the SuperLink's.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/flowerenv"
	"github.com/sepal-fl/sepal/internal/load"
	"github.com/sepal-fl/sepal/internal/postgres"
)

const name = "sepal-load"

var command = cli.Command{
	Name:        name,
	Synopsis:    "measure a flower-superlink process under a FedAvg, idle-nodes or small-calls load",
	Usage:       "[flags] [-- SUPERLINK_FLAGS]",
	NoLogFormat: true, // its --verbose log lines are text only
	Examples: []string{
		"go run ./internal/cmd/sepal-load --nodes 2 --rounds 2 --model-mib 32",
		"go run ./internal/cmd/sepal-load --protocol 1.29 --nodes 4 --repeat 3",
		"go run ./internal/cmd/sepal-load --flower-superlink DEST/bin/flower-superlink   # Flower 1.29.0's own, from ../shared/flower-1.29/prepare.sh DEST",
		"go run ./internal/cmd/sepal-load --nodes 16 --repeat 3 --node-poll 100ms --server-poll 100ms",
		"go run ./internal/cmd/sepal-load --nodes 4 -- --database state.db",
		"go run ./internal/cmd/sepal-load --nodes 16 --postgres   # --database on a throwaway PostgreSQL server",
		"go run ./internal/cmd/sepal-load --mode idle --nodes 1000",
		"go run ./internal/cmd/sepal-load --mode rpcs --nodes 1000",
		"go run ./internal/cmd/sepal-load --mode flwr --app arrays32 --rounds 2 --repeat 3   # real Flower 1.29.0, Sepal's SuperLink and Flower's",
	},
}

func main() {
	load.MaybeFloorServer()
	cli.Exit(name, run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	mode       string
	protocol   string
	flower     string
	against    string
	nodes      int
	rounds     int
	modelMiB   float64
	nodePoll   time.Duration
	serverPoll time.Duration
	inStep     bool
	repeat     int
	superlink  string
	env        []string
	settle     time.Duration
	duration   time.Duration
	verbose    bool
	postgres   bool
	profile    string
	trace      bool
	app        string
	args       []string // for flower-superlink
}

func parseArgs(args []string, out io.Writer) (*config, error) {
	fs := cli.NewFlagSet(command, out)
	c := &config{}
	fs.StringVar(&c.mode, "mode", "fedavg", "the workload: fedavg (a FedAvg run with Flower 1.8.0's messages), idle (nodes that poll; RSS per node), rpcs (Ping and empty PullTaskIns as fast as they come) or flwr (real Flower 1.29.0: flwr run of --app through Sepal's SuperLink and Flower's own)")
	fs.StringVar(&c.app, "app", "quickstart", "flwr: the Flower App to run: quickstart (Flower's quickstart-numpy) or arrays32 (one float32 array of 32 MiB each way per node and round)")
	fs.IntVar(&c.nodes, "nodes", 0, "SuperNodes, each with its own TLS connection (default 2 for fedavg and flwr, 1000 for idle and rpcs)")
	fs.IntVar(&c.rounds, "rounds", 2, "FedAvg rounds")
	fs.Float64Var(&c.modelMiB, "model-mib", 32, "model size in MiB: one float32 array (32 MiB = 8,388,608 values)")
	fs.StringVar(&c.protocol, "protocol", "1.8", "the Flower protocol of the fedavg workload: 1.8 (Flower 1.8.0's Fleet and Driver APIs) or 1.29 (Flower 1.29.0's: SuperNodes that sign every Fleet call and move objects, a ServerApp on ServerAppIo, the run started through the Control API)")
	fs.StringVar(&c.flower, "flower-superlink", "", "run this Flower 1.29.0 flower-superlink (DEST/bin/flower-superlink of ../shared/flower-1.29/prepare.sh DEST; in-memory state) instead of Sepal's, for the same --protocol 1.29 fedavg workload")
	fs.StringVar(&c.against, "against", "", "run this Flower 1.29.0 flower-superlink and Sepal's in turn, run by run, --repeat times, for the same --protocol 1.29 fedavg workload: each one's figures, and Flower's CPU time and peak RSS over Sepal's for each pair of runs (side by side, they meet the same moments of a shared machine)")
	fs.DurationVar(&c.nodePoll, "node-poll", 0, "the nodes' wait between polls when no message came (default 3s, as Flower 1.8.0's and 1.29.0's SuperNodes)")
	fs.DurationVar(&c.serverPoll, "server-poll", 0, "the ServerApp's wait between polls for replies (default 1s with --protocol 1.8, 3s with 1.29, as Flower's)")
	fs.BoolVar(&c.inStep, "in-step", false, "start every node at once, so that they poll in step and their results arrive together (the worst case for memory); by default their starts are spread over one --node-poll, as SuperNodes started one by one")
	fs.IntVar(&c.repeat, "repeat", 1, "runs of the workload, each on a new SuperLink; figures are printed with their median, min and max")
	fs.StringVar(&c.superlink, "superlink", "", "the flower-superlink binary (default: built from this module with go build)")
	fs.StringArrayVar(&c.env, "superlink-env", nil, "KEY=VALUE added to the SuperLink's environment, such as GOGC=50 (repeatable)")
	fs.DurationVar(&c.settle, "settle", 30*time.Second, "idle: how long the nodes poll; the RSS is the median of readings every second in its second half")
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "rpcs: how long each level of concurrency lasts")
	fs.StringVar(&c.profile, "profile", "", "write the SuperLink's CPU profile, heap profile and log of each run into this folder (builds flower-superlink with -tags sepal_pprof)")
	fs.BoolVar(&c.trace, "trace", false, "with --profile, also write an execution trace of each run (go tool trace)")
	fs.BoolVar(&c.verbose, "verbose", false, "print the nodes' and the ServerApp's logs to stderr")
	fs.BoolVar(&c.postgres, "postgres", false, "keep the state in a throwaway PostgreSQL server that the harness starts (fsync on; a new database per run, given as --database), and report the server's CPU time too")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	if n := fs.ArgsLenAtDash(); n > 0 || n < 0 && fs.NArg() > 0 {
		return nil, cli.Usagef("unexpected argument %q: flags for flower-superlink go after --", fs.Arg(0))
	}
	c.args = fs.Args()
	switch c.mode {
	case "fedavg", "idle", "rpcs", "flwr":
	default:
		return nil, cli.Usagef("--mode %q: want fedavg, idle, rpcs or flwr", c.mode)
	}
	if c.mode == "flwr" {
		switch {
		case c.app != "quickstart" && c.app != "arrays32":
			return nil, cli.Usagef("--app %q: want quickstart or arrays32", c.app)
		case c.nodes > 16:
			return nil, cli.Usagef("--nodes %d: --mode flwr starts a Python SuperNode per node (and a ClientApp process per message); want at most 16", c.nodes)
		case c.flower != "" || c.against != "" || fs.Changed("protocol"):
			return nil, cli.Usagef("--mode flwr prepares Flower 1.29.0 itself and runs Flower's own protocol: leave out --flower-superlink, --against and --protocol (they are for --mode fedavg)")
		case len(c.args) > 0 || c.postgres || c.profile != "" || len(c.env) > 0:
			return nil, cli.Usagef("--mode flwr runs both SuperLinks with Flower 1.29.0's command line: it takes no flags after --, --postgres, --profile or --superlink-env")
		}
	} else if fs.Changed("app") {
		return nil, cli.Usagef("--app is for --mode flwr")
	}
	if c.against != "" {
		switch {
		case c.flower != "":
			return nil, cli.Usagef("--against runs Flower's SuperLink beside Sepal's: leave out --flower-superlink")
		case c.mode != "fedavg":
			return nil, cli.Usagef("--against runs the fedavg workload, not --mode %s", c.mode)
		case fs.Changed("protocol") && c.protocol != "1.29":
			return nil, cli.Usagef("--against runs Flower 1.29.0's SuperLink: it speaks --protocol 1.29, not %s", c.protocol)
		case c.profile != "" || c.postgres || len(c.args) > 0:
			return nil, cli.Usagef("--against compares both SuperLinks as they come (in-memory state): leave out --profile, --postgres and flags after --")
		}
		if _, err := os.Stat(c.against); err != nil {
			return nil, cli.Usagef("--against %s: %v (run ../shared/flower-1.29/prepare.sh DEST and give DEST/bin/flower-superlink)", c.against, err)
		}
		c.protocol = "1.29"
	}
	if c.flower != "" {
		if fs.Changed("protocol") && c.protocol != "1.29" {
			return nil, cli.Usagef("--flower-superlink runs Flower 1.29.0's SuperLink: it speaks --protocol 1.29, not %s", c.protocol)
		}
		c.protocol = "1.29"
		if c.superlink != "" || c.profile != "" || c.postgres {
			return nil, cli.Usagef("--flower-superlink runs Flower's own SuperLink: leave out --superlink, --profile and --postgres")
		}
		if _, err := os.Stat(c.flower); err != nil {
			return nil, cli.Usagef("--flower-superlink %s: %v (run ../shared/flower-1.29/prepare.sh DEST and give DEST/bin/flower-superlink)", c.flower, err)
		}
	}
	switch c.protocol {
	case "1.8":
	case "1.29":
		if c.mode != "fedavg" {
			return nil, cli.Usagef("--protocol 1.29 runs the fedavg mode only, not %s", c.mode)
		}
		if c.postgres {
			return nil, cli.Usagef("--protocol 1.29 does not run with --postgres yet: give -- --database postgres://... yourself")
		}
	default:
		return nil, cli.Usagef("--protocol %q: want 1.8 or 1.29", c.protocol)
	}
	if c.nodePoll == 0 {
		c.nodePoll = 3 * time.Second
	}
	if c.serverPoll == 0 {
		c.serverPoll = time.Second
		if c.protocol == "1.29" {
			c.serverPoll = 3 * time.Second
		}
	}
	if c.nodePoll < 0 || c.serverPoll < 0 {
		return nil, cli.Usagef("--node-poll %v, --server-poll %v: want durations above 0", c.nodePoll, c.serverPoll)
	}
	if c.nodes == 0 {
		c.nodes = 2
		if c.mode == "idle" || c.mode == "rpcs" {
			c.nodes = 1000
		}
	}
	if c.nodes < 1 {
		return nil, cli.Usagef("--nodes %d: want at least 1", c.nodes)
	}
	if c.rounds < 1 {
		return nil, cli.Usagef("--rounds %d: want at least 1", c.rounds)
	}
	if c.modelMiB <= 0 || c.modelMiB > 500 {
		return nil, cli.Usagef("--model-mib %v: want more than 0 and at most 500 (messages are limited to 512 MiB)", c.modelMiB)
	}
	if c.repeat < 1 {
		return nil, cli.Usagef("--repeat %d: want at least 1", c.repeat)
	}
	if c.trace && c.profile == "" {
		return nil, cli.Usagef("--trace needs --profile DIR, the folder the trace goes to")
	}
	if c.profile != "" && c.superlink != "" {
		return nil, cli.Usagef("--profile builds its own flower-superlink: leave out --superlink")
	}
	for _, e := range c.env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return nil, cli.Usagef("--superlink-env %q: want KEY=VALUE", e)
		}
	}
	if c.postgres && slices.ContainsFunc(c.args, func(a string) bool { return a == "--database" || strings.HasPrefix(a, "--database=") }) {
		return nil, cli.Usagef("--postgres gives the SuperLink its --database: pass one or the other")
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseArgs(args, stdout)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext(ctx)
	defer stop()
	logger := slog.New(slog.DiscardHandler)
	if c.verbose {
		logger = cli.NewLogger(stderr, slog.LevelInfo)
	}
	tmp, err := os.MkdirTemp("", "sepal-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := c.superlink
	if c.flower != "" {
		bin = c.flower
	}
	if bin == "" {
		fmt.Fprintln(stderr, "building flower-superlink ...")
		var tags []string
		if c.profile != "" {
			tags = append(tags, "sepal_pprof")
			if err := os.MkdirAll(c.profile, 0o755); err != nil {
				return err
			}
		}
		if bin, err = load.Build(ctx, tmp, tags...); err != nil {
			return err
		}
	}
	if c.mode == "flwr" {
		return runFlwr(ctx, c, bin, tmp, stdout, stderr)
	}
	fmt.Fprintf(stdout, "# %s --mode %s --nodes %d", name, c.mode, c.nodes)
	if c.protocol != "1.8" {
		fmt.Fprintf(stdout, " --protocol %s", c.protocol)
	}
	if c.flower != "" {
		fmt.Fprintf(stdout, " --flower-superlink %s", c.flower)
	}
	if c.against != "" {
		fmt.Fprintf(stdout, " --against %s", c.against)
	}
	if c.mode == "fedavg" {
		fmt.Fprintf(stdout, " --rounds %d --model-mib %g --node-poll %v --server-poll %v", c.rounds, c.modelMiB, c.nodePoll, c.serverPoll)
		if c.inStep {
			fmt.Fprint(stdout, " --in-step")
		}
	}
	fmt.Fprintf(stdout, " --repeat %d", c.repeat)
	if len(c.env) > 0 {
		fmt.Fprintf(stdout, " (env %s)", strings.Join(c.env, " "))
	}
	if c.postgres {
		fmt.Fprint(stdout, " --postgres")
	}
	if len(c.args) > 0 {
		shown := make([]string, len(c.args))
		for i, a := range c.args {
			shown[i] = postgres.Redact(a) // a connection string without its password
		}
		fmt.Fprintf(stdout, " -- %s", strings.Join(shown, " "))
	}
	fmt.Fprintf(stdout, "\n# load average before: %s\n", loadAvg())
	if c.protocol == "1.29" {
		fmt.Fprintln(stdout, "# held_peak_mib: the most object bytes the run made the SuperLink hold at once, each object from the PushObject that stored it")
		fmt.Fprintln(stdout, "#   (or the PushMessages naming it, when held already) to the ConfirmMessageReceived of the last message naming it;")
		fmt.Fprintln(stdout, "#   floor_cpu_s: the Fleet API's bytes over TLS plus ServerAppIo's over plain TCP; checks_cpu_s: SHA-256 of every object pushed and a P-384 verification per Fleet call")
	}

	var pg *load.Postgres
	if c.postgres {
		fmt.Fprintln(stderr, "starting PostgreSQL ...")
		if pg, err = load.StartPostgres(); err != nil {
			return err
		}
		defer pg.Close()
	}
	if c.against != "" {
		return runAgainst(ctx, c, bin, tmp, logger, stdout)
	}
	figs := &figures{}
	for i := range c.repeat {
		dir, err := os.MkdirTemp(tmp, fmt.Sprintf("run%d-", i+1))
		if err != nil {
			return err
		}
		env := c.env
		if c.profile != "" {
			kinds := []string{"CPU", "MEM"}
			if c.trace {
				kinds = append(kinds, "TRACE")
			}
			for _, p := range kinds {
				file := filepath.Join(c.profile, fmt.Sprintf("%s-run%d.out", strings.ToLower(p), i+1))
				key := "SEPAL_" + p
				if p != "TRACE" {
					key += "PROFILE"
				}
				env = append(slices.Clone(env), key+"="+file)
			}
		}
		err = once(ctx, c, env, bin, c.flower != "", dir, logger, pg, figs)
		if c.profile != "" {
			if b, rerr := os.ReadFile(filepath.Join(dir, "superlink.log")); rerr == nil {
				_ = os.WriteFile(filepath.Join(c.profile, fmt.Sprintf("log-run%d.txt", i+1)), b, 0o644)
			}
		}
		if err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
	}
	figs.print(stdout)
	fmt.Fprintf(stdout, "# load average after: %s\n", loadAvg())
	return nil
}

// runAgainst is --against: Flower's SuperLink and Sepal's (bin) in turn,
// run by run, --repeat times; each one's figures, then Flower's over
// Sepal's for each pair.
func runAgainst(ctx context.Context, c *config, bin, tmp string, logger *slog.Logger, stdout io.Writer) error {
	flower, sepal, ratios := &figures{}, &figures{}, &figures{}
	for i := range c.repeat {
		for _, sl := range []struct {
			name, bin string
			env       []string
			figs      *figures
		}{{"flower", c.against, nil, flower}, {"sepal", bin, c.env, sepal}} {
			dir, err := os.MkdirTemp(tmp, fmt.Sprintf("run%d-%s-", i+1, sl.name))
			if err != nil {
				return err
			}
			if err := once(ctx, c, sl.env, sl.bin, sl.name == "flower", dir, logger, nil, sl.figs); err != nil {
				return fmt.Errorf("run %d, %s's SuperLink: %w", i+1, sl.name, err)
			}
		}
		for _, n := range []string{"superlink_cpu_s", "superlink_peak_rss_mib"} {
			ratios.add("flower_over_sepal_"+strings.TrimPrefix(n, "superlink_"), "x", flower.last(n)/sepal.last(n))
		}
	}
	fmt.Fprintln(stdout, "## Flower 1.29.0's SuperLink")
	flower.print(stdout)
	fmt.Fprintln(stdout, "## Sepal's SuperLink")
	sepal.print(stdout)
	fmt.Fprintln(stdout, "## Flower's over Sepal's, run by run")
	ratios.print(stdout)
	fmt.Fprintf(stdout, "# load average after: %s\n", loadAvg())
	return nil
}

// once runs the workload on a new SuperLink (Flower's own when flower)
// and records its figures.
func once(ctx context.Context, c *config, env []string, bin string, flower bool, dir string, logger *slog.Logger, pg *load.Postgres, figs *figures) (err error) {
	args := c.args
	var pgCPU0 time.Duration
	if pg != nil {
		dsn, err := pg.NewDatabase(ctx)
		if err != nil {
			return err
		}
		args = append([]string{"--database", dsn}, args...)
		if pgCPU0, err = pg.CPU(); err != nil {
			return err
		}
	}
	s, err := load.Start(ctx, load.Options{Binary: bin, Dir: dir, Args: args, Env: env, Nodes: c.nodes,
		Flower129: c.protocol == "1.29", Flower: flower})
	if err != nil {
		return err
	}
	// pgRead adds PostgreSQL's CPU time once the SuperLink has stopped,
	// before anything else (the TLS floor) runs beside the server.
	pgRead := false
	readPG := func(exit load.Exit) error {
		if pg == nil || pgRead {
			return nil
		}
		pgRead = true
		// The SuperLink's connections are closed: their backends' time is
		// the postmaster's children time once it has waited for them, a
		// moment after.
		time.Sleep(500 * time.Millisecond)
		cpu, err := pg.CPU()
		if err != nil {
			return err
		}
		figs.add("postgres_cpu_s", "s", (cpu - pgCPU0).Seconds())
		figs.add("superlink_and_postgres_cpu_s", "s", (cpu - pgCPU0 + exit.CPU).Seconds())
		return nil
	}
	defer func() {
		exit := s.Stop()
		if err == nil && exit.Err != nil {
			err = fmt.Errorf("flower-superlink did not stop cleanly: %v (log: %s)", exit.Err, s.LogFile)
		}
		if err == nil {
			figs.add("superlink_cpu_s", "s", exit.CPU.Seconds())
			figs.add("superlink_cpu_user_s", "s", exit.User.Seconds())
			figs.add("superlink_cpu_sys_s", "s", exit.Sys.Seconds())
			err = readPG(exit)
		}
	}()
	switch {
	case c.mode == "fedavg" && c.protocol == "1.29":
		o := load.FedAvg129Options{
			Nodes: c.nodes, Rounds: c.rounds, ModelBytes: int(c.modelMiB*(1<<20)) &^ 3,
			NodePoll: c.nodePoll, ServerPoll: c.serverPoll, InStep: c.inStep, Logger: logger,
		}
		r, err := load.RunFedAvg129(ctx, s, o)
		if err != nil {
			return err
		}
		figs.addRun(r.FedAvgResult)
		figs.add("held_peak_mib", "MiB", mib(r.HeldPeak))
		figs.add("peak_rss_over_held", "x", float64(r.Memory.HWM)/float64(r.HeldPeak))
		figs.add("superlink_rss_start_mib", "MiB", mib(r.Start.RSS))
		figs.add("peak_rss_growth_over_held", "x", float64(r.Memory.HWM-r.Start.RSS)/float64(r.HeldPeak))
		figs.add("fleet_in_mib", "MiB", mib(r.Fleet.In))
		figs.add("fleet_out_mib", "MiB", mib(r.Fleet.Out))
		figs.add("appio_in_mib", "MiB", mib(r.AppIo.In))
		figs.add("appio_out_mib", "MiB", mib(r.AppIo.Out))
		figs.add("fleet_calls", "", float64(r.FleetCalls))
		if err := figs.addFloor(ctx, s, r.Fleet, r.AppIo, r.Part, nil); err != nil {
			return err
		}
		// What any 1.29 SuperLink spends besides moving the bytes: the
		// SHA-256 of every object pushed, an ECDSA P-384 verification per
		// Fleet call.
		checks, err := load.Checks(ctx, r.In(), int(r.Part), r.FleetCalls)
		if err != nil {
			return err
		}
		figs.add("checks_cpu_s", "s", checks.Seconds())
		floor := figs.last("floor_cpu_s")
		figs.add("superlink_cpu_over_floor_and_checks", "x", s.Stop().CPU.Seconds()/(floor+checks.Seconds()))
	case c.mode == "fedavg":
		o := load.FedAvgOptions{
			Nodes: c.nodes, Rounds: c.rounds, ModelBytes: int(c.modelMiB*(1<<20)) &^ 3,
			NodePoll: c.nodePoll, ServerPoll: c.serverPoll, InStep: c.inStep, Logger: logger,
		}
		if pg != nil {
			o.OtherCPU = pg.CPU
		}
		r, err := load.RunFedAvg(ctx, s, o)
		if err != nil {
			return err
		}
		figs.addRun(r)
		for i, d := range r.RoundOtherCPU {
			figs.add(fmt.Sprintf("round_%d_postgres_cpu_s", i+1), "s", d.Seconds())
		}
		figs.add("moved_each_way_mib", "MiB", mib(o.MovedEachWay()))
		return figs.addFloor(ctx, s, load.Traffic{In: o.MovedEachWay(), Out: o.MovedEachWay()}, load.Traffic{}, o.Payload(), readPG)
	case c.mode == "idle":
		r, err := load.RunIdle(ctx, s, load.IdleOptions{Nodes: c.nodes, Poll: c.nodePoll, Settle: c.settle, Logger: logger})
		if err != nil {
			return err
		}
		figs.add("superlink_rss_before_mib", "MiB", mib(r.Before.RSS))
		figs.add("superlink_rss_idle_mib", "MiB", mib(r.After.RSS))
		figs.add("superlink_peak_rss_mib", "MiB", mib(r.After.HWM))
		figs.add("rss_per_node_kib", "KiB", r.PerNode()/1024)
		figs.add("idle_cpu_cores", "cores", r.CPU.Seconds()/r.Settle.Seconds())
	case c.mode == "rpcs":
		levels, err := load.RunRPCs(ctx, s, load.RPCOptions{Nodes: c.nodes, Duration: c.duration})
		if err != nil {
			return err
		}
		for _, l := range levels {
			p := fmt.Sprintf("active_%d_", l.Active)
			figs.add(p+"rpcs_per_s", "1/s", l.PerSecond())
			figs.add(p+"p50_ms", "ms", float64(l.P50)/1e6)
			figs.add(p+"p99_ms", "ms", float64(l.P99)/1e6)
			figs.add(p+"superlink_cpu_us_per_rpc", "µs", float64(l.CPUPerCall())/1e3)
			figs.add(p+"superlink_cpu_cores", "cores", l.CPU.Seconds()/l.Wall.Seconds())
			figs.add(p+"errors", "", float64(l.Errors))
		}
		mem, err := s.Memory()
		if err != nil {
			return err
		}
		figs.add("superlink_peak_rss_mib", "MiB", mib(mem.HWM))
	}
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// addRun adds the figures every FedAvg run has.
func (f *figures) addRun(r load.FedAvgResult) {
	f.add("superlink_peak_rss_mib", "MiB", mib(r.Memory.HWM))
	f.add("superlink_rss_after_mib", "MiB", mib(r.Memory.RSS))
	for i, d := range r.Rounds {
		f.add(fmt.Sprintf("round_%d_wall_s", i+1), "s", d.Seconds())
	}
	for i, d := range r.RoundCPU {
		f.add(fmt.Sprintf("round_%d_superlink_cpu_s", i+1), "s", d.Seconds())
	}
	f.add("superlink_page_faults", "", float64(r.PageFaults))
	f.add("run_wall_s", "s", r.Wall.Seconds())
}

// addFloor stops the SuperLink, calls stopped (when not nil) and adds
// the floor of the bytes it moved over TLS and in plaintext, in writes of
// part bytes: what the same bytes cost TLS alone (tls_floor_cpu_s) and
// plain TCP alone (plain_floor_cpu_s, when some were), on this machine
// now, and the SuperLink's CPU time over their sum.
func (f *figures) addFloor(ctx context.Context, s *load.SuperLink, tlsBytes, plainBytes load.Traffic, part int64, stopped func(load.Exit) error) error {
	exit := s.Stop()
	if exit.Err != nil {
		return fmt.Errorf("flower-superlink did not stop cleanly: %v (log: %s)", exit.Err, s.LogFile)
	}
	if stopped != nil {
		if err := stopped(exit); err != nil {
			return err
		}
	}
	floor, err := load.Floor(ctx, s, tlsBytes.In, tlsBytes.Out, int(part))
	if err != nil {
		return err
	}
	f.add("tls_floor_cpu_s", "s", floor.Seconds())
	if plainBytes.In+plainBytes.Out > 0 {
		plain, err := load.PlainFloor(ctx, s, plainBytes.In, plainBytes.Out, int(part))
		if err != nil {
			return err
		}
		f.add("plain_floor_cpu_s", "s", plain.Seconds())
		floor += plain
		f.add("floor_cpu_s", "s", floor.Seconds())
	}
	f.add("superlink_cpu_over_floor", "x", exit.CPU.Seconds()/floor.Seconds())
	return nil
}

// runFlwr is --mode flwr: the same Flower 1.29.0 run through Sepal's
// SuperLink (bin) and through Flower's own, in turn, --repeat times.
func runFlwr(ctx context.Context, c *config, bin, tmp string, stdout, stderr io.Writer) error {
	fmt.Fprintln(stderr, "preparing Flower 1.29.0 ...")
	// A Flower of its own: tests that prepare theirs meanwhile cannot
	// replace its files under it.
	f, err := flowerenv.PrepareIn("flower-1.29", filepath.Join(tmp, "flower-1.29"))
	if err != nil {
		return err
	}
	app, err := load.App(c.app, f.Source)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "# %s --mode flwr --app %s --nodes %d --rounds %d --repeat %d (over TLS; Flower's SuperLink: %s, in-memory state)\n",
		name, c.app, c.nodes, c.rounds, c.repeat, filepath.Join(f.Bin, "flower-superlink"))
	fmt.Fprintf(stdout, "# load average before: %s\n", loadAvg())
	figs := &figures{}
	for i := range c.repeat {
		for _, sl := range []struct {
			name, bin string
			sepal     bool
		}{{"sepal", bin, true}, {"flower", filepath.Join(f.Bin, "flower-superlink"), false}} {
			dir, err := os.MkdirTemp(tmp, fmt.Sprintf("run%d-%s-", i+1, sl.name))
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "run %d of %d: %s's SuperLink ...\n", i+1, c.repeat, sl.name)
			r, err := load.RunFlower129(ctx, load.Flower129Options{Bin: f.Bin, SuperLink: sl.bin, Sepal: sl.sepal, App: app,
				Rounds: c.rounds, Nodes: c.nodes, Dir: dir})
			if c.verbose {
				fmt.Fprintln(stderr, r.Log)
			}
			if err != nil {
				return fmt.Errorf("run %d, %s's SuperLink: %w (logs in %s, kept)", i+1, sl.name, err, keep(dir))
			}
			figs.add(sl.name+"_superlink_cpu_s", "s", r.CPU.Seconds())
			figs.add(sl.name+"_superlink_run_cpu_s", "s", r.RunCPU.Seconds())
			figs.add(sl.name+"_superlink_peak_rss_mib", "MiB", mib(r.PeakRSS))
			figs.add(sl.name+"_run_wall_s", "s", r.Wall.Seconds())
		}
	}
	figs.print(stdout)
	fmt.Fprintf(stdout, "# load average after: %s\n", loadAvg())
	return nil
}

// keep moves a failed run's folder out of the temporary one (removed on
// exit) and returns where it went.
func keep(dir string) string {
	to, err := os.MkdirTemp("", "sepal-load-failed-")
	if err != nil {
		return dir
	}
	dst := filepath.Join(to, filepath.Base(dir))
	if err := os.Rename(dir, dst); err != nil {
		return dir
	}
	return dst
}

// figures collects each figure's value from every run, in the order first
// seen.
type figures struct {
	names []string
	vals  map[string][]float64
}

func (f *figures) add(name, _ string, v float64) {
	if f.vals == nil {
		f.vals = map[string][]float64{}
	}
	if _, ok := f.vals[name]; !ok {
		f.names = append(f.names, name)
	}
	f.vals[name] = append(f.vals[name], v)
}

// last returns the value of name from the latest run.
func (f *figures) last(name string) float64 {
	vs := f.vals[name]
	return vs[len(vs)-1]
}

// print writes one line per figure: its value, or with several runs the
// median, the range and every value in run order.
func (f *figures) print(w io.Writer) {
	width := 0
	for _, n := range f.names {
		width = max(width, len(n))
	}
	for _, n := range f.names {
		vs := f.vals[n]
		if len(vs) == 1 {
			fmt.Fprintf(w, "%-*s %s\n", width, n, num(vs[0]))
			continue
		}
		s := slices.Clone(vs)
		slices.Sort(s)
		all := make([]string, len(vs))
		for i, v := range vs {
			all[i] = num(v)
		}
		fmt.Fprintf(w, "%-*s %s  (median of %d; range %s-%s; runs %s)\n", width, n, num(s[len(s)/2]), len(s), num(s[0]), num(s[len(s)-1]), strings.Join(all, " "))
	}
}

func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
