package main

// This file holds --wait-for-nodes: how long the server app waits for
// --min-nodes online nodes before it gives up.

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/internal/cli"
)

// nodeWait is the --wait-for-nodes flag.
type nodeWait struct{ timeout time.Duration }

func registerNodeWait(fs *pflag.FlagSet) *nodeWait {
	w := &nodeWait{}
	fs.DurationVar(&w.timeout, "wait-for-nodes", app.DefaultNodesTimeout,
		"how long to wait for --min-nodes online nodes, before the run and before each round, logging how many are online; then exit 1 (Flower 1.8.0 waits a day)")
	return w
}

// check refuses a wait that is not positive.
func (w *nodeWait) check() error {
	if w.timeout <= 0 {
		return cli.Usagef("--wait-for-nodes %v: give a positive duration, such as 10m or 24h", w.timeout)
	}
	return nil
}

// explain turns the app's *TooFewNodesError into the command's message,
// naming the flags; other errors pass unchanged.
func (w *nodeWait) explain(err error) error {
	var tf *app.TooFewNodesError
	if !errors.As(err, &tf) {
		return err
	}
	return fmt.Errorf("%v (--min-nodes %d, --wait-for-nodes %v): start more client apps against the SuperLink's Fleet API "+
		"(flower-client-app client:app --server HOST:9092), lower --min-nodes, or wait longer with --wait-for-nodes",
		tf, tf.Need, w.timeout)
}
