package main

// This file holds the flags of the limits only Flower 1.29 peers meet
// (--max-pending-bytes-per-node, --push-timeout, --max-log-streams and its
// kin), and turns
// them, with --max-nodes, into state.LinkLimits and the Control API's
// options.

import (
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink"
)

// link129Flags are the Flower 1.29 limit flags.
type link129Flags struct {
	pendingBytes      sizeValue
	pushTimeout       time.Duration
	logStreams        int
	logStreamsPerPeer int
}

// registerLink129Flags adds the Flower 1.29 limit flags to fs.
func registerLink129Flags(fs *pflag.FlagSet) *link129Flags {
	l := &link129Flags{pendingBytes: state.DefaultMaxPendingBytesPerNode}
	fs.Var(&l.pendingBytes, "max-pending-bytes-per-node", "the bytes a Flower 1.29 SuperNode may push into a run while its reply there is incomplete (such as 512MiB or 2GiB); "+
		"a push past it is refused with RESOURCE_EXHAUSTED: raise it for replies larger than that")
	fs.DurationVar(&l.pushTimeout, "push-timeout", state.DefaultPushTimeout, "how long a Flower 1.29 SuperNode (or ServerApp) that owes the objects of a message it pushed may push none of them: "+
		"then the message is forgotten with its objects (a reply as never sent)")
	fs.IntVar(&l.logStreams, "max-log-streams", superlink.DefaultMaxLogStreams, "log streams (flwr log, flwr run --stream) open at once; more are refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&l.logStreamsPerPeer, "max-log-streams-per-peer", superlink.DefaultMaxLogStreamsPerPeer, "log streams one peer (a source address) may hold open at once")
	return l
}

// check refuses values out of range, naming the flag.
func (l *link129Flags) check() error {
	if l.pendingBytes < 1<<20 {
		return cli.Usagef("--max-pending-bytes-per-node %s: give at least 1MiB (the default is 1GiB): a reply's chunks are up to 5 MiB", l.pendingBytes.String())
	}
	if l.pushTimeout < 5*time.Second {
		return cli.Usagef("--push-timeout %v: give 5s or more, such as 5m (the default): a 5 MiB object may take that long on a slow link", l.pushTimeout)
	}
	for _, f := range []struct {
		name   string
		v, def int
	}{
		{"max-log-streams", l.logStreams, superlink.DefaultMaxLogStreams},
		{"max-log-streams-per-peer", l.logStreamsPerPeer, superlink.DefaultMaxLogStreamsPerPeer},
	} {
		if f.v < 1 {
			return cli.Usagef("--%s %d: give 1 or more (default %d)", f.name, f.v, f.def)
		}
	}
	return nil
}

// linkLimits returns the bounds of the Flower 1.29 state: maxNodes
// (--max-nodes) bounds its nodes as it bounds 1.8.0's.
func (l *link129Flags) linkLimits(maxNodes int) state.LinkLimits {
	return state.LinkLimits{MaxNodes: maxNodes, MaxPendingBytesPerNode: int64(l.pendingBytes), PushTimeout: l.pushTimeout}
}

// control sets the Control API's limits of o.
func (l *link129Flags) control(o superlink.Flower129Options) superlink.Flower129Options {
	o.MaxLogStreams, o.MaxLogStreamsPerPeer = l.logStreams, l.logStreamsPerPeer
	return o
}

// attrs are the limits as log attributes.
func (l *link129Flags) attrs() []any {
	return []any{"max_pending_bytes_per_node", int64(l.pendingBytes), "push_timeout", l.pushTimeout.String(), "max_log_streams", l.logStreams, "max_log_streams_per_peer", l.logStreamsPerPeer}
}
