package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sepal-fl/sepal/superlink"
)

var (
	descNodesRefused = prometheus.NewDesc("sepal_node_registrations_refused_total",
		"Node registrations (CreateNode) and pings refused by a node limit, by reason (the limit): max_ping_interval, max_nodes_per_connection, "+
			"max_nodes_per_identity, max_nodes, node_registration_rate.", []string{"reason"}, nil)
	descCallsRefused = prometheus.NewDesc("sepal_node_calls_refused_total",
		"Signed Flower 1.29 Fleet calls refused before their signature was verified, by reason (the limit): node_call_rate (the node's calls), "+
			"node_auth_failures (the peer's calls that failed node authentication).", []string{"reason"}, nil)
	descNodesRevoked = prometheus.NewDesc("sepal_nodes_revoked_total",
		"Nodes this SuperLink took offline because the client certificate that created them was revoked.", nil, nil)
)

// SetNodeLimits exports what the SuperLink's node limits refused, by
// reason (registrations and signed calls apart), and the nodes revocation
// took offline, as f reports them
// (SuperLink.NodeLimitStats) at every scrape. Call it once.
func (m *Metrics) SetNodeLimits(f func() superlink.NodeLimitStats) {
	m.reg.MustRegister(nodeCollector(f))
}

// nodeCollector is the collector of SetNodeLimits.
type nodeCollector func() superlink.NodeLimitStats

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descNodesRefused
	ch <- descCallsRefused
	ch <- descNodesRevoked
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c()
	for _, r := range superlink.NodeRefusalReasons { // a fixed set of labels
		ch <- prometheus.MustNewConstMetric(descNodesRefused, prometheus.CounterValue, float64(st.Refused[r]), r)
	}
	for _, r := range superlink.NodeCallRefusalReasons {
		ch <- prometheus.MustNewConstMetric(descCallsRefused, prometheus.CounterValue, float64(st.Refused[r]), r)
	}
	ch <- prometheus.MustNewConstMetric(descNodesRevoked, prometheus.CounterValue, float64(st.Revoked))
}
