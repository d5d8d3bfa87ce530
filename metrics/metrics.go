// Package metrics holds the SuperLink's Prometheus metrics and its status
// page. The other packages feed it through small hooks and never import
// Prometheus: transport.ObserveHandshakes for TLS handshakes, the reload
// events of certfile and acme for certificates (the caller turns them
// into CertEvents), gRPC server options for calls, and the observation
// methods of the state contracts (State for Flower 1.8.0, LinkState for
// Flower 1.29.0) for nodes, runs, tasks, messages and objects.
//
// Everything is registered on a registry of its own, never the global
// default; every label value comes from a fixed set (nothing a peer sends
// becomes a label), so the number of series is bounded whatever the peers
// do. Metric names follow the Prometheus conventions and the ecosystem's
// spelling (cert-manager's certmanager_certificate_expiration_timestamp_seconds,
// grpc-ecosystem's grpc_server_handled_total).
package metrics

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

// Certificate sources, the values of the source label.
const (
	SourceFile = "file"
	SourceACME = "acme"
)

// APIs, the values of the api label of the handshake metrics.
const (
	APIFleet   = "fleet"
	APIDriver  = "driver"  // and plaintext ServerAppIo on its port, which makes no handshake
	APIControl = "control" // Flower 1.29.0's Control API (flwr)
	APIOther   = "other"   // a listener not given to SetListeners or SetControlListener
)

var apis = []string{APIFleet, APIDriver, APIControl, APIOther}

// Options configure New. The zero value works: no state, no in-flight
// budget, no CRL.
type Options struct {
	// Logger receives scrape problems (a state that cannot be read) at
	// debug level and HTTP server errors. Default: discard.
	Logger *slog.Logger
	// Now is the clock of the status page. Default: time.Now.
	Now func() time.Time
	// Version is exported as sepal_build_info{version}. Default: "".
	Version string
	// State is read on every scrape and page view (SetState may give it
	// later). Default: nil, no state metrics, nodes or runs.
	State State
	// LinkState, the Flower 1.29.0 generation's state, is read on every
	// scrape and page view (SetLinkState may give it later). Default: nil,
	// no Flower 1.29 nodes, runs or objects.
	LinkState LinkState
	// Limits returns the state of the SuperLink's limits (in-flight bytes
	// against the budget, connections, refusals); SetLimits may give it
	// later. Default: nil, not exported.
	Limits func() superlink.LimitStats
	// CRL returns the revocation list in force, or nil when there is none.
	// Default: nil.
	CRL func() *x509.RevocationList
	// RecentRuns is how many runs of each generation the status page
	// lists. Default: 10.
	RecentRuns int
	// ListedNodes is how many Flower 1.29 nodes the status page lists
	// (those not unregistered, in the order they registered; the others
	// are counted). Default: 100.
	ListedNodes int
	// Refresh is how often the status page reloads itself. Default: 10s.
	Refresh time.Duration
}

// Metrics collects the SuperLink's metrics and serves them, with the status
// page, from Handler. All methods are safe for concurrent use.
type Metrics struct {
	o    Options
	log  *slog.Logger
	reg  *prometheus.Registry
	grpc *grpcprom.ServerMetrics

	// Handshakes: [api][0] successes, [api][1+i] failures of
	// transport.HandshakeCauses[i].
	handshakes [][]atomic.Uint64
	ports      sync.Map // int port -> api index

	certMu sync.Mutex
	certs  []certSource
	events map[string]*sourceEvents // by source

	serving   atomic.Bool
	state     atomic.Pointer[State]
	linkState atomic.Pointer[LinkState]
	crl       atomic.Pointer[func() *x509.RevocationList]
	limits    atomic.Pointer[func() superlink.LimitStats]
}

// SetLimits gives the function that reports the SuperLink's limits
// (SuperLink.LimitStats), when it is known after New; it replaces
// Options.Limits.
func (m *Metrics) SetLimits(f func() superlink.LimitStats) {
	if f == nil {
		m.limits.Store(nil)
		return
	}
	m.limits.Store(&f)
}

// limitStats returns the limits' state, and false without Limits.
func (m *Metrics) limitStats() (superlink.LimitStats, bool) {
	if f := m.limits.Load(); f != nil {
		return (*f)(), true
	}
	return superlink.LimitStats{}, false
}

// SetCRL gives the function that returns the client-certificate CRL in
// force (nil when there is none), when it is known after New; it replaces
// Options.CRL.
func (m *Metrics) SetCRL(f func() *x509.RevocationList) {
	if f == nil {
		m.crl.Store(nil)
		return
	}
	m.crl.Store(&f)
}

// SetState gives the state to read, when it is made after New.
func (m *Metrics) SetState(s State) {
	if s == nil {
		m.state.Store(nil)
		return
	}
	m.state.Store(&s)
}

// getState returns the state to read, or nil.
func (m *Metrics) getState() State {
	if p := m.state.Load(); p != nil {
		return *p
	}
	return nil
}

// certSource is a certificate source the metrics read at scrape time.
type certSource struct {
	source string
	src    transport.CertSource
	names  []string // names to ask for (SNI); nil: ask once without SNI
}

// sourceEvents is the reload or renewal history of one source.
type sourceEvents struct {
	lastSuccess time.Time
	last        CertEvent // the most recent event
	reloads     [2]uint64 // file reloads: success, failure
	orders      map[string]*[2]uint64
}

// CertEvent is a certificate loaded, reloaded or renewed, or an attempt
// that failed; the caller translates its source's events into these.
type CertEvent struct {
	// Source is SourceFile or SourceACME.
	Source string
	// Kind is what happened: "start" and "reload" for files, "load",
	// "obtain" and "renew" for ACME.
	Kind string
	// Trigger is what caused a file reload ("poll", "reload"); "" for ACME.
	Trigger string
	// Name is the ACME domain; "" for files.
	Name string
	// Err is nil on success.
	Err error
	// Time is when it happened.
	Time time.Time
}

// New returns Metrics with the Go runtime and process collectors, the gRPC
// server metrics (every method of both generations' services and of
// health at zero), the handshake counters and the scrape-time collectors
// registered on a registry of its own.
func New(o Options) *Metrics {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RecentRuns <= 0 {
		o.RecentRuns = 10
	}
	if o.Refresh <= 0 {
		o.Refresh = 10 * time.Second
	}
	if o.ListedNodes <= 0 {
		o.ListedNodes = 100
	}
	m := &Metrics{o: o, log: o.Logger, reg: prometheus.NewRegistry(), events: map[string]*sourceEvents{}}
	m.SetState(o.State)
	m.SetLinkState(o.LinkState)
	m.SetCRL(o.CRL)
	m.SetLimits(o.Limits)
	for range apis {
		m.handshakes = append(m.handshakes, make([]atomic.Uint64, 1+len(transport.HandshakeCauses)))
	}
	m.grpc = grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300})))
	m.grpc.InitializeMetrics(serviceInfo{})
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.grpc,
		(*collector)(m),
	)
	return m
}

// serviceInfo lists the services a SuperLink serves, so that every method
// has its series from the start: Flower 1.8.0's Fleet and Driver, and
// Flower 1.29.0's Fleet (under the same service name), ServerAppIo and
// Control, by the names Flower's peers call.
type serviceInfo struct{}

func (serviceInfo) GetServiceInfo() map[string]grpc.ServiceInfo {
	out := map[string]grpc.ServiceInfo{}
	for _, d := range []grpc.ServiceDesc{flwrproto.Fleet_ServiceDesc, flwrproto.Driver_ServiceDesc,
		flwr129.FlowerService(&flwr129.Fleet_ServiceDesc), flwr129.FlowerService(&flwr129.ServerAppIo_ServiceDesc),
		flwr129.FlowerService(&flwr129.Control_ServiceDesc)} {
		ms := out[d.ServiceName].Methods
		for _, md := range d.Methods {
			ms = append(ms, grpc.MethodInfo{Name: md.MethodName})
		}
		for _, sd := range d.Streams {
			ms = append(ms, grpc.MethodInfo{Name: sd.StreamName, IsClientStream: sd.ClientStreams, IsServerStream: sd.ServerStreams})
		}
		out[d.ServiceName] = grpc.ServiceInfo{Methods: ms}
	}
	out["grpc.health.v1.Health"] = grpc.ServiceInfo{Methods: []grpc.MethodInfo{
		{Name: "Check"}, {Name: "List"}, {Name: "Watch", IsServerStream: true}}}
	return out
}

// Registry returns the registry the metrics are on, for a caller that adds
// collectors of its own.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// GRPCServerOptions returns the interceptors that count every call by
// service, method and code, with its latency: give them to both gRPC
// servers (superlink.Options.ServerOptions). Only registered methods reach
// interceptors, so the method label is bounded.
func (m *Metrics) GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.grpc.StreamServerInterceptor()),
	}
}

// Credentials wraps server credentials so that every TLS handshake is
// counted by API, result and cause. Plaintext credentials (nil, or
// insecure) are returned as they are.
func (m *Metrics) Credentials(creds credentials.TransportCredentials) credentials.TransportCredentials {
	if creds == nil || creds.Info().SecurityProtocol != "tls" {
		return creds
	}
	return transport.ObserveHandshakes(creds, m.observeHandshake)
}

// SetListeners tells which listener is which API, by port, for the api
// label of the handshake metrics.
func (m *Metrics) SetListeners(fleet, driver net.Addr) {
	for i, a := range []net.Addr{fleet, driver} {
		if ta, ok := a.(*net.TCPAddr); ok {
			m.ports.Store(ta.Port, i)
		}
	}
}

// SetControlListener tells which listener is Flower 1.29.0's Control API,
// by port, for the api label of the handshake metrics.
func (m *Metrics) SetControlListener(control net.Addr) {
	if ta, ok := control.(*net.TCPAddr); ok {
		m.ports.Store(ta.Port, slices.Index(apis, APIControl))
	}
}

func (m *Metrics) apiIndex(local net.Addr) int {
	if ta, ok := local.(*net.TCPAddr); ok {
		if i, ok := m.ports.Load(ta.Port); ok {
			return i.(int)
		}
	}
	return slices.Index(apis, APIOther)
}

func (m *Metrics) observeHandshake(e transport.HandshakeEvent) {
	row := m.handshakes[m.apiIndex(e.Local)]
	if e.Err == nil {
		row[0].Add(1)
		return
	}
	i := slices.Index(transport.HandshakeCauses, e.Cause)
	if i < 0 {
		i = slices.Index(transport.HandshakeCauses, transport.CauseOther)
	}
	row[1+i].Add(1)
}

// SetCertificateSource adds a certificate source whose served certificates
// the metrics and the status page show: source is SourceFile or SourceACME;
// names are the server names to ask it for (the ACME domains), or nil to
// ask once without a name (a file source serves one certificate).
func (m *Metrics) SetCertificateSource(source string, src transport.CertSource, names []string) {
	m.certMu.Lock()
	defer m.certMu.Unlock()
	m.certs = append(m.certs, certSource{source: source, src: src, names: names})
}

// CertificateEvent records a certificate load, reload or renewal, or a
// failed attempt. It is quick and may be called from any goroutine,
// including with the source's lock held.
func (m *Metrics) CertificateEvent(e CertEvent) {
	m.certMu.Lock()
	defer m.certMu.Unlock()
	se := m.events[e.Source]
	if se == nil {
		se = &sourceEvents{orders: map[string]*[2]uint64{}}
		m.events[e.Source] = se
	}
	if e.Time.IsZero() {
		e.Time = m.o.Now()
	}
	se.last = e
	result := 0
	if e.Err != nil {
		result = 1
	} else {
		se.lastSuccess = e.Time
	}
	switch e.Kind {
	case "reload":
		se.reloads[result]++
	case "obtain", "renew":
		c := se.orders[e.Kind]
		if c == nil {
			c = &[2]uint64{}
			se.orders[e.Kind] = c
		}
		c[result]++
	}
}

// SetServing marks the SuperLink as serving (its certificate in, its
// listeners open), or not: /readyz answers 200 only while it is, and the
// state's Check passes.
func (m *Metrics) SetServing(on bool) { m.serving.Store(on) }

// Handler serves /metrics (Prometheus text or OpenMetrics), the status page
// at /, /healthz (200 while the process runs) and /readyz (200 once a
// certificate is served and the state is reachable, else 503 with why).
// Anything else is 404.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(m.log.Handler(), slog.LevelWarn),
		Registry:          m.reg,
		EnableOpenMetrics: true,
		Timeout:           10 * time.Second,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", m.readyz)
	mux.HandleFunc("GET /{$}", m.statusPage)
	return mux
}

// Ready reports whether the SuperLink is ready for traffic, and why not.
func (m *Metrics) Ready(ctx context.Context) (bool, string) {
	if !m.serving.Load() {
		return false, "not serving yet (the certificate is still being obtained, or the listeners are not open)"
	}
	m.certMu.Lock()
	certs := append([]certSource(nil), m.certs...)
	m.certMu.Unlock()
	for _, c := range certs {
		if len(served(c)) == 0 {
			return false, "no certificate is being served yet"
		}
	}
	if l, ok := m.limitStats(); ok && l.Pressure {
		return false, "small requests are being refused: the in-flight budget is full"
	}
	if st := m.getState(); st != nil {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := st.Check(ctx); err != nil {
			return false, "the state cannot be reached: " + err.Error()
		}
	}
	return true, "ready"
}

func (m *Metrics) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	ok, why := m.Ready(r.Context())
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	w.Write([]byte(why + "\n"))
}

// servedCert is a certificate a source serves now, and the name asked.
type servedCert struct {
	source string
	name   string // the name asked for, "" without SNI
	leaf   *x509.Certificate
	chain  int
}

// scrapeConn stands in for the connection of a ClientHello made up to ask a
// source what it serves: some sources log the peer's address.
type scrapeConn struct{ net.Conn }

var loopback = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}

func (scrapeConn) LocalAddr() net.Addr  { return loopback }
func (scrapeConn) RemoteAddr() net.Addr { return loopback }

// served asks c's source for what it serves for each of its names. A
// source that fails (an ACME source still obtaining) serves nothing.
func served(c certSource) []servedCert {
	names := c.names
	if len(names) == 0 {
		names = []string{""}
	}
	var out []servedCert
	for _, n := range names {
		cert, err := c.src.GetCertificate(&tls.ClientHelloInfo{ServerName: n, SupportedProtos: []string{transport.ALPNH2}, Conn: scrapeConn{}})
		if err != nil || cert == nil || len(cert.Certificate) == 0 {
			continue
		}
		leaf := cert.Leaf
		if leaf == nil {
			if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
				continue
			}
		}
		out = append(out, servedCert{source: c.source, name: n, leaf: leaf, chain: len(cert.Certificate)})
	}
	return out
}

// servedAll returns what every source serves now.
func (m *Metrics) servedAll() []servedCert {
	m.certMu.Lock()
	certs := append([]certSource(nil), m.certs...)
	m.certMu.Unlock()
	var out []servedCert
	for _, c := range certs {
		out = append(out, served(c)...)
	}
	return out
}
