package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/internal/testkit"
)

func TestWaitForNodesFlag(t *testing.T) {
	testkit.CheckCommandLine(t, run, name, []testkit.UsageCase{
		{Args: []string{"server:app", "--wait-for-nodes", "0s"}, Want: "--wait-for-nodes 0s: give a positive duration"},
		{Args: []string{"server:app", "--wait-for-nodes", "-1m"}, Want: "--wait-for-nodes -1m0s"},
		{Args: []string{"server:app", "--server", "127.0.0.1:99999"}, Want: "port 99999 is out of range"},
	}, "--wait-for-nodes duration")
	var out bytes.Buffer
	run(context.Background(), []string{"--help"}, &out, &out)
	if !strings.Contains(out.String(), "(default 24h0m0s)") {
		t.Errorf("--help does not give the default of --wait-for-nodes:\n%s", out.String())
	}
	w := &nodeWait{timeout: 2 * time.Minute}
	err := w.explain(&app.TooFewNodesError{Online: 1, Need: 3, Waited: 2 * time.Minute})
	for _, want := range []string{"only 1 of the 3 nodes needed", "--min-nodes 3", "--wait-for-nodes 2m0s", "flower-client-app"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}
