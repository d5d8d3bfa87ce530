package metrics

import (
	"context"
	"crypto/x509"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sepal-fl/sepal/transport"
)

// The metrics computed at scrape time, with their help.
var (
	descBuildInfo = prometheus.NewDesc("sepal_build_info",
		"Always 1; the version of the running SuperLink in a label.", []string{"version"}, nil)
	descHandshakes = prometheus.NewDesc("sepal_tls_handshakes_total",
		"Server-side TLS handshakes, by API and result (success or failure).", []string{"api", "result"}, nil)
	descHandshakeFailures = prometheus.NewDesc("sepal_tls_handshake_failures_total",
		"Failed server-side TLS handshakes, by API and cause.", []string{"api", "cause"}, nil)
	descCertExpiry = prometheus.NewDesc("sepal_certificate_expiration_timestamp_seconds",
		"The not-after time of the certificate served, per name it holds and source (file or acme).", []string{"name", "source"}, nil)
	descCertNotBefore = prometheus.NewDesc("sepal_certificate_not_before_timestamp_seconds",
		"The not-before time of the certificate served, per name it holds and source.", []string{"name", "source"}, nil)
	descCertLastReload = prometheus.NewDesc("sepal_certificate_last_reload_success_timestamp_seconds",
		"When a certificate was last loaded, reloaded or renewed successfully, per source.", []string{"source"}, nil)
	descCertReloadOK = prometheus.NewDesc("sepal_certificate_last_reload_success",
		"1 if the last reload or renewal attempt of the source succeeded, 0 if it failed (the previous certificate is still served).", []string{"source"}, nil)
	descReloads = prometheus.NewDesc("sepal_certificate_reloads_total",
		"Reloads of the certificate files (poll or SIGHUP) that served a new certificate (success) or were refused (failure).", []string{"result"}, nil)
	descOrders = prometheus.NewDesc("sepal_acme_orders_total",
		"ACME orders by kind (obtain: a first certificate; renew) and result; each failed attempt counts.", []string{"kind", "result"}, nil)
	descCRLThis = prometheus.NewDesc("sepal_crl_last_update_timestamp_seconds",
		"The thisUpdate time of the client-certificate revocation list in force (its age is time() minus this).", nil, nil)
	descCRLNext = prometheus.NewDesc("sepal_crl_next_update_timestamp_seconds",
		"The nextUpdate time of the revocation list in force.", nil, nil)
	descStateUp = prometheus.NewDesc("sepal_state_up",
		"1 if the state of both generations answered the scrape (its store is reachable), else 0.", nil, nil)
	descNodes = prometheus.NewDesc("sepal_nodes",
		"Registered Flower 1.8 nodes, by state (online: pinged within their ping interval; offline).", []string{"state"}, nil)
	descRuns = prometheus.NewDesc("sepal_runs",
		"Flower 1.8 runs known to the SuperLink.", nil, nil)
	descTaskIns = prometheus.NewDesc("sepal_task_ins",
		"TaskIns held, by state (waiting: not yet pulled by their node; delivered: pulled, no result yet).", []string{"state"}, nil)
	descTaskRes = prometheus.NewDesc("sepal_task_res_waiting",
		"Results stored and not yet pulled by the ServerApp.", nil, nil)
	descArrays = prometheus.NewDesc("sepal_parameter_arrays",
		"Distinct parameter arrays held (each stored once, however many tasks carry it).", nil, nil)
	descArrayBytes = prometheus.NewDesc("sepal_parameter_bytes",
		"Total size of the parameter arrays held.", nil, nil)
	descInflight = prometheus.NewDesc("sepal_inflight_bytes",
		"Bytes of incoming requests held now, counted against the in-flight budget.", nil, nil)
	descInflightLimit = prometheus.NewDesc("sepal_inflight_limit_bytes",
		"The in-flight budget.", nil, nil)
	descConnections = prometheus.NewDesc("sepal_connections",
		"Connections open now, both APIs.", nil, nil)
	descRefused = prometheus.NewDesc("sepal_requests_refused_total",
		"Requests refused by a limit before their body was read, or reset while it arrived, by reason (too_large: more than the method, or one peer, may send; busy: the in-flight budget was full, the client retries; peer_share: the peer held its share of the budget; too_slow: reset, it arrived slower than the minimum request rate).", []string{"reason"}, nil)
	descLimitClosed = prometheus.NewDesc("sepal_connections_closed_by_limit_total",
		"Connections closed by a limit, by reason (stalled: stopped mid-frame holding budget; control_frames: too many resets, settings, pings or priorities; violation: a refusal that could only be answered so; idle: without a call while the slots ran short).", []string{"reason"}, nil)
	descConnRefused = prometheus.NewDesc("sepal_connections_refused_total",
		"Connections closed at once by a limit, by reason (per_peer: the peer held its share of the connection slots).", []string{"reason"}, nil)
	descPressure = prometheus.NewDesc("sepal_inflight_pressure",
		"1 while small requests (pings, polls) are refused because the in-flight budget is full; health says NOT_SERVING meanwhile.", nil, nil)
)

var certResults = [2]string{"success", "failure"}

// collector is Metrics seen as a prometheus.Collector of the metrics it
// computes at scrape time.
type collector Metrics

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBuildInfo, descHandshakes, descHandshakeFailures, descCertExpiry, descCertNotBefore,
		descCertLastReload, descCertReloadOK, descReloads, descOrders, descCRLThis, descCRLNext, descStateUp, descNodes, descRuns,
		descTaskIns, descTaskRes, descArrays, descArrayBytes, descInflight, descInflightLimit, descConnections, descRefused,
		descLimitClosed, descConnRefused, descPressure} {
		ch <- d
	}
	for _, d := range linkDescs {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descBuildInfo, 1, m.o.Version)

	for a, api := range apis {
		row := m.handshakes[a]
		var failed uint64
		for i, cause := range transport.HandshakeCauses {
			n := row[1+i].Load()
			failed += n
			counter(descHandshakeFailures, float64(n), api, string(cause))
		}
		counter(descHandshakes, float64(row[0].Load()), api, "success")
		counter(descHandshakes, float64(failed), api, "failure")
	}

	m.collectCertificates(gauge, counter)

	if f := m.crl.Load(); f != nil {
		if crl := (*f)(); crl != nil {
			gauge(descCRLThis, unix(crl.ThisUpdate))
			if !crl.NextUpdate.IsZero() {
				gauge(descCRLNext, unix(crl.NextUpdate))
			}
		}
	}
	if l, ok := m.limitStats(); ok {
		gauge(descInflight, float64(l.InflightBytes))
		gauge(descInflightLimit, float64(l.MaxInflightBytes))
		gauge(descConnections, float64(l.Connections))
		for reason, n := range l.Refused {
			counter(descRefused, float64(n), reason)
		}
		for reason, n := range l.Closed {
			counter(descLimitClosed, float64(n), reason)
		}
		for reason, n := range l.ConnectionsRefused {
			counter(descConnRefused, float64(n), reason)
		}
		pressure := 0.0
		if l.Pressure {
			pressure = 1
		}
		gauge(descPressure, pressure)
	}
	state, link := m.getState(), m.getLinkState()
	if state == nil && link == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	up := true
	if state != nil {
		up = m.collectState(ctx, state, gauge)
	}
	if link != nil {
		up = m.collectLink(ctx, link, gauge) && up
	}
	if up {
		gauge(descStateUp, 1)
	} else {
		gauge(descStateUp, 0)
	}
}

// collectState exports the Flower 1.8.0 state, and reports whether it
// answered.
func (m *Metrics) collectState(ctx context.Context, state State, gauge func(*prometheus.Desc, float64, ...string)) bool {
	st, err := state.Stats(ctx)
	if err != nil {
		m.log.Debug("the state did not answer a scrape", "error", err)
		return false
	}
	gauge(descNodes, float64(st.NodesOnline), "online")
	gauge(descNodes, float64(st.Nodes-st.NodesOnline), "offline")
	gauge(descRuns, float64(st.Runs))
	gauge(descTaskIns, float64(st.TaskInsWaiting), "waiting")
	gauge(descTaskIns, float64(st.TaskInsDelivered), "delivered")
	gauge(descTaskRes, float64(st.TaskResWaiting))
	gauge(descArrays, float64(st.Blobs))
	gauge(descArrayBytes, float64(st.BlobBytes))
	return true
}

// collectCertificates exports the served certificates' dates, per name
// they hold, and the reload and renewal history.
func (m *Metrics) collectCertificates(gauge, counter func(*prometheus.Desc, float64, ...string)) {
	type key struct{ name, source string }
	seen := map[key]bool{}
	for _, s := range m.servedAll() {
		for _, n := range certNames(s.leaf) {
			k := key{n, s.source}
			if seen[k] {
				continue
			}
			seen[k] = true
			gauge(descCertExpiry, unix(s.leaf.NotAfter), n, s.source)
			gauge(descCertNotBefore, unix(s.leaf.NotBefore), n, s.source)
		}
	}

	m.certMu.Lock()
	defer m.certMu.Unlock()
	sources := map[string]bool{}
	for _, c := range m.certs {
		sources[c.source] = true
	}
	for src, se := range m.events {
		sources[src] = true
		if !se.lastSuccess.IsZero() {
			gauge(descCertLastReload, unix(se.lastSuccess), src)
		}
		ok := 1.0
		if se.last.Err != nil {
			ok = 0
		}
		gauge(descCertReloadOK, ok, src)
	}
	if sources[SourceFile] {
		se := m.events[SourceFile]
		for i, r := range certResults {
			var n uint64
			if se != nil {
				n = se.reloads[i]
			}
			counter(descReloads, float64(n), r)
		}
	}
	if sources[SourceACME] {
		se := m.events[SourceACME]
		for _, kind := range []string{"obtain", "renew"} {
			for i, r := range certResults {
				var n uint64
				if se != nil && se.orders[kind] != nil {
					n = se.orders[kind][i]
				}
				counter(descOrders, float64(n), kind, r)
			}
		}
	}
}

// certNames are the names a certificate holds: its DNS and IP SANs, or its
// common name when it has none. They come from the operator's own
// certificate, not from a peer.
func certNames(leaf *x509.Certificate) []string {
	var out []string
	out = append(out, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		out = append(out, ip.String())
	}
	if len(out) == 0 && leaf.Subject.CommonName != "" {
		out = append(out, leaf.Subject.CommonName)
	}
	return slices.Compact(out)
}

func unix(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
