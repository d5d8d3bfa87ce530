// Command flower-server-app runs a Flower 1.8.0 ServerApp over a
// SuperLink's Driver API: FedAvg, with the task conventions of Flower
// 1.8.0, for --rounds rounds.
//
//	flower-server-app server:app --root-certificates certificates/ca.crt --server 127.0.0.1:9091 --rounds 3
//
// It prints one line per round and a summary on stdout, and exits 0 when
// the run is done; 1 with one line saying what to do on a TLS failure (never
// retried), when retries are exhausted or when a round fails. SIGHUP does
// not end it: it logs that there is nothing to reload.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/clientflags"
)

const name = "flower-server-app"

// fedAvgRef is the only server app: FedAvg.
const fedAvgRef = "server:app"

var command = cli.Command{
	Name:     name,
	Synopsis: "run a FedAvg ServerApp against a SuperLink's Driver API",
	Usage:    "[flags] APP",
	Examples: []string{
		"flower-server-app server:app --root-certificates certificates/ca.crt --server 127.0.0.1:9091 --rounds 3",
		"flower-server-app server:app --server superlink.example.org:9091 --min-nodes 10   # TLS with the system roots",
		"flower-server-app server:app --insecure --server 127.0.0.1:9091",
		"flower-server-app server:app --root-certificates certificates/ca.crt --server 127.0.0.1:9091 --stop-nodes",
	},
}

func main() {
	cli.IgnoreHangup()
	cli.Exit(name, run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(command, stdout)
	flags := clientflags.Register(fs, "0.0.0.0:9091", "Driver API")
	rounds := fs.Int("rounds", 3, "FedAvg rounds")
	minNodes := fs.Int("min-nodes", 2, "online nodes to wait for before each round")
	wait := registerNodeWait(fs)
	stop := fs.Bool("stop-nodes", false, "after the run, send every node a reconnect task so that it leaves and exits 0")
	verbose := fs.BoolP("verbose", "v", false, "log every call, not only what changes")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	appRef, err := cli.OneApp(fs, "name the server app to run, "+fedAvgRef+" (FedAvg)")
	if err != nil {
		return err
	}
	if appRef != fedAvgRef {
		return cli.Usagef("unknown server app %q: Go apps are compiled in, known: %s (FedAvg)", appRef, fedAvgRef)
	}
	if *rounds < 1 {
		return cli.Usagef("--rounds %d: give 1 or more", *rounds)
	}
	if *minNodes < 1 {
		return cli.Usagef("--min-nodes %d: give 1 or more", *minNodes)
	}
	if err := wait.check(); err != nil {
		return err
	}
	tlsOpts, err := flags.TLS()
	if err != nil {
		return err
	}
	maxRetries, maxWait, err := flags.Retry()
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := cli.NewFormatLogger(stderr, level, cli.LogFormat(fs))
	ctx, hup, cancel := cli.Signals(ctx, logger)
	defer cancel()
	flags.Hangup(hup)
	flags.LogStart(logger, "starting ServerApp", fedAvgRef, "rounds", *rounds, "min_nodes", *minNodes)
	o := app.ServerOptions{
		Server:       flags.Server,
		TLS:          tlsOpts,
		Rounds:       *rounds,
		MinNodes:     *minNodes,
		NodesTimeout: wait.timeout,
		MaxRetries:   maxRetries,
		MaxWaitTime:  maxWait,
		Logger:       logger,
		Out:          stdout,
	}
	if _, err := app.RunFedAvg(ctx, o); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("interrupted before the run finished")
		}
		return flags.Explain(wait.explain(err))
	}
	if *stop {
		if err := app.StopNodes(ctx, o); err != nil {
			return fmt.Errorf("--stop-nodes: %w", flags.Explain(err))
		}
		logger.Info("nodes asked to leave")
	}
	return nil
}
