package main

import (
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink"
)

func TestLink129Flags(t *testing.T) {
	c, err := parseArgs([]string{"--insecure"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := state.LinkLimits{MaxNodes: superlink.DefaultMaxNodes, MaxPendingBytesPerNode: state.DefaultMaxPendingBytesPerNode, PushTimeout: state.DefaultPushTimeout}
	if got := c.link129.linkLimits(c.nodes.maxNodes); got != want {
		t.Fatalf("default 1.29 limits %+v, want %+v", got, want)
	}
	if o := c.link129.control(superlink.Flower129Options{}); o.MaxLogStreams != superlink.DefaultMaxLogStreams || o.MaxLogStreamsPerPeer != superlink.DefaultMaxLogStreamsPerPeer {
		t.Fatalf("default log streams %+v", o)
	}
	c, err = parseArgs(strings.Fields("--insecure --max-nodes 50 --max-pending-bytes-per-node 2GiB --push-timeout 30s --max-log-streams 9 --max-log-streams-per-peer 3"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want = state.LinkLimits{MaxNodes: 50, MaxPendingBytesPerNode: 2 << 30, PushTimeout: 30 * time.Second}
	if got := c.link129.linkLimits(c.nodes.maxNodes); got != want {
		t.Fatalf("1.29 limits %+v, want %+v", got, want)
	}
	if o := c.link129.control(superlink.Flower129Options{KeysOnly: true}); o.MaxLogStreams != 9 || o.MaxLogStreamsPerPeer != 3 || !o.KeysOnly {
		t.Fatalf("log streams %+v", o)
	}
	for _, bad := range []struct{ args, want string }{
		{"--max-pending-bytes-per-node 1KiB", "--max-pending-bytes-per-node 1KiB: give at least 1MiB"},
		{"--push-timeout 1s", "--push-timeout 1s: give 5s or more"},
		{"--max-log-streams 0", "--max-log-streams 0: give 1 or more (default 128)"},
		{"--max-log-streams-per-peer -2", "--max-log-streams-per-peer -2: give 1 or more"},
	} {
		_, err := parseArgs(append([]string{"--insecure"}, strings.Fields(bad.args)...), io.Discard)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want a usage error with %q", bad.args, err, bad.want)
		}
	}
}
