// Command flower-client-app runs a Flower 1.8.0 SuperNode with a Go
// ClientApp, with the command line of Flower 1.8.0:
//
//	flower-client-app client:app --root-certificates certificates/ca.crt --server 127.0.0.1:9092
//
// It exits 0 when the server app sends a reconnect task or on SIGINT or
// SIGTERM (unregistering the node first), and 1 with one line saying what
// to do on a TLS failure (never retried) or once retries are exhausted.
// SIGHUP does not end it: it logs that there is nothing to reload.
package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/clientflags"
)

const name = "flower-client-app"

var command = cli.Command{
	Name:     name,
	Synopsis: "run a SuperNode: register with a SuperLink's Fleet API and answer its tasks with a Go ClientApp",
	Usage:    "[flags] APP",
	Examples: []string{
		"flower-client-app client:app --root-certificates certificates/ca.crt --server 127.0.0.1:9092",
		"flower-client-app client:app --server superlink.example.org:9092   # TLS with the system roots",
		"flower-client-app client:app --root-certificates ca.crt --server 10.0.0.5:9092 --tls-server-name superlink.lan",
		"flower-client-app client:app --insecure --server 127.0.0.1:9092 --max-retries 5",
	},
}

func main() {
	cli.IgnoreHangup()
	cli.Exit(name, run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := cli.NewFlagSet(command, stdout)
	flags := clientflags.Register(fs, "0.0.0.0:9092", "Fleet API")
	poll := fs.Duration("poll-interval", 3*time.Second, "how often an idle node asks for a task (Flower 1.8.0: 3s)")
	verbose := fs.BoolP("verbose", "v", false, "log every task and call, not only what changes")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	appRef, err := cli.OneApp(fs, "name the client app to run, such as client:app (the built-in demo)")
	if err != nil {
		return err
	}
	newClient, err := app.Lookup(appRef)
	if err != nil {
		return cli.Usagef("%v", err)
	}
	tlsOpts, err := flags.TLS()
	if err != nil {
		return err
	}
	maxRetries, maxWait, err := flags.Retry()
	if err != nil {
		return err
	}
	if *poll <= 0 {
		return cli.Usagef("--poll-interval %s: give a positive duration, such as 3s", *poll)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := cli.NewFormatLogger(stderr, level, cli.LogFormat(fs))
	ctx, hup, cancel := cli.Signals(ctx, logger)
	defer cancel()
	flags.Hangup(hup)
	flags.LogStart(logger, "starting SuperNode", appRef)
	err = app.RunNode(ctx, app.NodeOptions{
		Server:       flags.Server,
		TLS:          tlsOpts,
		MaxRetries:   maxRetries,
		MaxWaitTime:  maxWait,
		Logger:       logger,
		NewClient:    newClient,
		PollInterval: *poll,
	})
	if err == nil {
		logger.Info("SuperNode stopped")
	}
	return flags.Explain(err)
}
