package main

// This file holds the flags that bound node registration (--max-nodes and
// its kin) and the signed calls of Flower 1.29 nodes (--node-call-rate,
// --node-auth-failure-rate and their bursts), and turns them into
// superlink.NodeLimits, and hands the Fleet
// API's CRL to the SuperLink, which takes the nodes of a revoked
// certificate offline.

import (
	"crypto/x509"
	"math"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/superlink"
)

const maxNodesPerIdentityFlag = "max-nodes-per-identity"

// minPingCap is the lowest --max-ping-interval: the ping_interval Flower
// 1.8.0 SuperNodes send, which they cannot change.
const minPingCap = 30 * time.Second

// nodeLimitFlags are the node limit flags.
type nodeLimitFlags struct {
	fs                                   *pflag.FlagSet
	pingInterval                         time.Duration
	maxNodes, perConnection, perIdentity int
	rate                                 float64
	burst                                int
	callRate, failureRate                float64
	callBurst, failureBurst              int
}

// registerNodeLimitFlags adds the node limit flags to fs.
func registerNodeLimitFlags(fs *pflag.FlagSet) *nodeLimitFlags {
	n := &nodeLimitFlags{fs: fs}
	fs.DurationVar(&n.pingInterval, "max-ping-interval", superlink.DefaultMaxPingInterval,
		"the longest ping_interval a node may ask for in CreateNode and Ping, 30s or more (Flower 1.8.0 SuperNodes send 30s); a longer one is refused with INVALID_ARGUMENT")
	fs.IntVar(&n.maxNodes, "max-nodes", superlink.DefaultMaxNodes,
		"nodes registered at once, online or offline, over every SuperLink on the --database, for each Flower generation; when all places are taken the node offline the longest is forgotten for a new one "+
			"(Flower 1.29: an unregistered or never activated one first, never a key registered with flwr supernode register), and while none can go registration is refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&n.perConnection, "max-nodes-per-connection", superlink.DefaultMaxNodesPerConnection,
		"nodes one connection may have created and not deleted (a SuperNode creates one); more are refused with RESOURCE_EXHAUSTED")
	fs.IntVar(&n.perIdentity, maxNodesPerIdentityFlag, superlink.DefaultMaxNodesPerIdentity,
		"with --"+fleetClientCAFlag+": nodes one node certificate's name may hold at once, as --max-nodes does for all")
	fs.Float64Var(&n.rate, "node-registration-rate", superlink.DefaultNodeRegistrationRate,
		"CreateNode and RegisterNode (Flower 1.29, Fleet and Control API) calls a second one peer may make, after --node-registration-burst at once; a peer is a source address (an IPv6 /64), or a node certificate's name with --"+
			fleetClientCAFlag+"; more are refused with RESOURCE_EXHAUSTED, which Flower 1.8.0 SuperNodes retry and a Flower 1.29.0 SuperNode exits on (behind a TCP load balancer every node comes from the balancer's address: raise both)")
	fs.IntVar(&n.burst, "node-registration-burst", superlink.DefaultNodeRegistrationBurst,
		"node registrations one peer may make at once (see --node-registration-rate)")
	fs.Float64Var(&n.callRate, "node-call-rate", superlink.DefaultNodeCallRate,
		"call units a second one Flower 1.29 node may spend on signed Fleet calls, after --node-call-burst at once; a call is 1 unit, a PushMessages 1 more per object its message names "+
			"(a SuperNode that pulls and answers a model of 1,000 arrays spends about 6,000 a round); a call past it is refused with UNAVAILABLE before its signature is verified, "+
			"which SuperNodes retry with backoff; 0 turns the limit off")
	fs.IntVar(&n.callBurst, "node-call-burst", superlink.DefaultNodeCallBurst,
		"call units one Flower 1.29 node may spend at once (see --node-call-rate): the default pulls and pushes back the largest message, of 16384 objects; "+
			"a call that costs more than the burst passes when the node's bucket is full")
	fs.Float64Var(&n.failureRate, "node-auth-failure-rate", superlink.DefaultAuthFailureRate,
		"signed Flower 1.29 Fleet calls a second, after --node-auth-failure-burst at once, that may fail node authentication (a bad, stale or replayed signature, a key of no node, "+
			"another node's id) for one peer, a source address (an IPv6 /64) or a node certificate's name with --"+fleetClientCAFlag+"; past it the peer's signed calls are refused with UNAVAILABLE "+
			"without verifying them, those of other peers are not (behind a TCP load balancer every node comes from the balancer's address: raise both)")
	fs.IntVar(&n.failureBurst, "node-auth-failure-burst", superlink.DefaultAuthFailureBurst,
		"signed calls that may fail node authentication at once for one peer (see --node-auth-failure-rate)")
	return n
}

// check refuses values out of range, naming the flag.
func (n *nodeLimitFlags) check(m *mtlsFlags) error {
	for _, f := range []struct {
		name string
		v    int
		def  int
	}{
		{"max-nodes", n.maxNodes, superlink.DefaultMaxNodes},
		{"max-nodes-per-connection", n.perConnection, superlink.DefaultMaxNodesPerConnection},
		{maxNodesPerIdentityFlag, n.perIdentity, superlink.DefaultMaxNodesPerIdentity},
		{"node-registration-burst", n.burst, superlink.DefaultNodeRegistrationBurst},
		{"node-call-burst", n.callBurst, superlink.DefaultNodeCallBurst},
		{"node-auth-failure-burst", n.failureBurst, superlink.DefaultAuthFailureBurst},
	} {
		if f.v < 1 {
			return cli.Usagef("--%s %d: give 1 or more (default %d)", f.name, f.v, f.def)
		}
	}
	if n.pingInterval < minPingCap {
		return cli.Usagef("--max-ping-interval %v: give 30s or more, such as 1h (the default): Flower 1.8.0 SuperNodes ask for 30s, and retry for ever when refused", n.pingInterval)
	}
	if !(n.rate > 0) || math.IsInf(n.rate, 0) {
		return cli.Usagef("--node-registration-rate %v: give a number of calls a second above 0, such as 10 (the default) or 0.5", n.rate)
	}
	if !(n.failureRate > 0) || math.IsInf(n.failureRate, 0) {
		return cli.Usagef("--node-auth-failure-rate %v: give a number of failures a second above 0, such as 10 (the default) or 0.5", n.failureRate)
	}
	if !(n.callRate >= 0) || math.IsInf(n.callRate, 0) {
		return cli.Usagef("--node-call-rate %v: give a number of call units a second, such as 200 (the default) or 1000, or 0 to turn the limit off", n.callRate)
	}
	if n.fs.Changed(maxNodesPerIdentityFlag) && m.fleetCA == "" {
		return cli.Usagef("--%s needs --%s: it counts the nodes of a node certificate, which only mutual TLS asks for", maxNodesPerIdentityFlag, fleetClientCAFlag)
	}
	return nil
}

// limits returns the superlink.NodeLimits of the flags.
func (n *nodeLimitFlags) limits() superlink.NodeLimits {
	callRate := n.callRate
	if callRate == 0 {
		callRate = math.Inf(1)
	}
	return superlink.NodeLimits{MaxPingInterval: n.pingInterval, MaxNodes: n.maxNodes, MaxPerConnection: n.perConnection,
		MaxPerIdentity: n.perIdentity, Rate: n.rate, Burst: n.burst,
		CallRate: callRate, CallBurst: n.callBurst, AuthFailureRate: n.failureRate, AuthFailureBurst: n.failureBurst}
}

// attrs are the node limits as log attributes; the one per identity only
// with node certificates.
func (n *nodeLimitFlags) attrs(m *mtlsFlags) []any {
	attrs := []any{"max_nodes", n.maxNodes, "max_nodes_per_connection", n.perConnection}
	if m.fleetCA != "" {
		attrs = append(attrs, "max_nodes_per_identity", n.perIdentity)
	}
	var callRate any = n.callRate
	if n.callRate == 0 {
		callRate = "off"
	}
	return append(attrs, "node_registration_rate", n.rate, "node_registration_burst", n.burst, "max_ping_interval", n.pingInterval.String(),
		"node_call_rate", callRate, "node_call_burst", n.callBurst, "node_auth_failure_rate", n.failureRate, "node_auth_failure_burst", n.failureBurst)
}

// revocations returns the Fleet API's CRL as it is loaded now, for
// superlink.Options.Revocations; nil without a node certificate CA.
func (m *mtlsFlags) revocations() func() *x509.RevocationList {
	if m.fleetSrc == nil {
		return nil
	}
	src := m.fleetSrc
	return func() *x509.RevocationList {
		_, crl := src.ClientCAs()
		return crl
	}
}
