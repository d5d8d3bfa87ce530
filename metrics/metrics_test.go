package metrics_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/metrics"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

var quiet = slog.New(slog.DiscardHandler)

// rig is a SuperLink on loopback serving certificate files over TLS, with
// every metrics hook connected as flower-superlink connects them, and the
// metrics served by an httptest server.
type rig struct {
	m      *metrics.Metrics
	src    *certfile.FileSource
	files  testkit.Files
	pki    *testkit.PKI
	link   testkit.Link
	http   *httptest.Server
	roots  *x509.CertPool
	fleetC credentials.TransportCredentials
}

func newRig(t *testing.T, o metrics.Options) *rig {
	t.Helper()
	r := &rig{}
	r.pki = testkit.NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	r.files = r.pki.WriteFiles(t, filepath.Join(t.TempDir(), "certificates"))
	o.Logger = quiet
	r.m = metrics.New(o)
	src, err := certfile.NewFileSource(certfile.FileSourceOptions{CAFile: r.files.CA, CertFile: r.files.Cert, KeyFile: r.files.Key,
		Logger: quiet, OnReload: func(e certfile.ReloadEvent) {
			kind := "reload"
			if e.Trigger == "start" {
				kind = "start"
			}
			r.m.CertificateEvent(metrics.CertEvent{Source: metrics.SourceFile, Kind: kind, Trigger: e.Trigger, Err: e.Err, Time: e.Time})
		}})
	if err != nil {
		t.Fatal(err)
	}
	r.src = src
	r.m.SetCertificateSource(metrics.SourceFile, src, nil)
	sl := superlink.New(superlink.Options{State: memstate.New(memstate.Options{}), Logger: quiet, ServerOptions: r.m.GRPCServerOptions()})
	if o.State == nil {
		r.m.SetState(sl.State()) // as flower-superlink does
	}
	if o.LinkState == nil {
		r.m.SetLinkState(sl.LinkState())
	}
	r.m.SetLimits(sl.LimitStats)
	creds := r.m.Credentials(transport.ServerCredentials(src))
	r.link = testkit.Serve(t, func(ctx context.Context, fleet, driver net.Listener) error {
		return sl.Serve(ctx, superlink.Listeners{Fleet: fleet, Driver: driver, FleetCreds: creds, DriverCreds: creds})
	})
	fleet, _ := net.ResolveTCPAddr("tcp", r.link.Fleet)
	driver, _ := net.ResolveTCPAddr("tcp", r.link.Driver)
	r.m.SetListeners(fleet, driver)
	r.http = httptest.NewServer(r.m.Handler())
	t.Cleanup(r.http.Close)
	r.roots = x509.NewCertPool()
	r.roots.AddCert(r.pki.CA.Cert)
	r.fleetC = credentials.NewTLS(&tls.Config{RootCAs: r.roots, ServerName: "localhost"})
	return r
}

func (r *rig) get(t *testing.T, path string) (int, string) {
	t.Helper()
	res, err := http.Get(r.http.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// rawHandshake makes one TLS handshake (cfg) or writes raw bytes to addr
// and waits for the server's verdict.
func rawHandshake(t *testing.T, addr string, cfg *tls.Config, raw string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if cfg == nil {
		c.Write([]byte(raw))
		io.Copy(io.Discard, c) // until the server closes
		return
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err == nil {
		tc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var b [1]byte
		tc.Read(b[:])
	}
}

// TestMetricsScrape serves a SuperLink with every hook connected, makes
// calls, handshakes that fail for several causes, a good and a bad reload,
// then scrapes /metrics with the Prometheus text parser and checks the
// values.
func TestMetricsScrape(t *testing.T) {
	r := newRig(t, metrics.Options{Version: "v9.9.9-test"})

	// Calls: a health check and a CreateNode on the Fleet API, a CreateRun on the Driver API.
	if _, err := testkit.HealthCheck(t, r.link.Fleet, r.fleetC); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(r.link.Fleet, grpc.WithTransportCredentials(r.fleetC))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := flwrproto.NewFleetClient(conn).CreateNode(ctx, &flwrproto.CreateNodeRequest{PingInterval: 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := flwrproto.NewFleetClient(conn).Ping(ctx, &flwrproto.PingRequest{}); err == nil {
		t.Fatal("Ping without a node succeeded")
	}
	dconn, err := grpc.NewClient(r.link.Driver, grpc.WithTransportCredentials(r.fleetC))
	if err != nil {
		t.Fatal(err)
	}
	defer dconn.Close()
	if _, err := flwrproto.NewDriverClient(dconn).CreateRun(ctx, &flwrproto.CreateRunRequest{}); err != nil {
		t.Fatal(err)
	}

	// Failed handshakes: 3 plaintext and 2 TLS 1.1 on the Fleet API, 1
	// server name not held on the Driver API.
	for range 3 {
		rawHandshake(t, r.link.Fleet, nil, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	for range 2 {
		rawHandshake(t, r.link.Fleet, &tls.Config{RootCAs: r.roots, ServerName: "localhost", MaxVersion: tls.VersionTLS11, MinVersion: tls.VersionTLS10}, "")
	}
	rawHandshake(t, r.link.Driver, &tls.Config{RootCAs: r.roots, ServerName: "elsewhere.example", NextProtos: []string{"h2"}}, "")

	// Reloads: one good (a new certificate), one bad (a key of another pair).
	next := r.pki.Issue(t, selfsigned.ServerOptions{})
	next.WriteFiles(t, filepath.Dir(r.files.Cert))
	if err := r.src.Reload(); err != nil {
		t.Fatal(err)
	}
	other := r.pki.Issue(t, selfsigned.ServerOptions{})
	if err := certfile.WriteFileAtomic(r.files.Key, other.Pair.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.src.Reload(); !errors.Is(err, certfile.ErrKeyMismatch) {
		t.Fatalf("bad reload: %v", err)
	}

	// Handshake events are counted before gRPC sees the connection, but
	// the failed ones on other goroutines: wait for all of them.
	var s testkit.Samples
	deadline := time.Now().Add(10 * time.Second)
	for {
		s = testkit.Scrape(t, r.http.URL+"/metrics")
		if s.Sum("sepal_tls_handshakes_total", "result", "failure") >= 6 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.Want(t, 3, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "plaintext")
	s.Want(t, 2, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "protocol_version")
	s.Want(t, 1, "sepal_tls_handshake_failures_total", "api", "driver", "cause", "bad_server_name")
	s.Want(t, 0, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "not_ready")
	s.Want(t, 5, "sepal_tls_handshakes_total", "api", "fleet", "result", "failure")
	s.Want(t, 1, "sepal_tls_handshakes_total", "api", "driver", "result", "failure")
	// Two client connections (health + Fleet calls share a target but not
	// a connection) on the Fleet API, one on the Driver API.
	if v, _ := s.Value("sepal_tls_handshakes_total", "api", "fleet", "result", "success"); v < 2 {
		t.Errorf("fleet handshakes succeeded: %v, want at least 2", v)
	}
	s.Want(t, 1, "sepal_tls_handshakes_total", "api", "driver", "result", "success")

	s.Want(t, 1, "grpc_server_handled_total", "grpc_service", "flwr.proto.Fleet", "grpc_method", "CreateNode", "grpc_code", "OK")
	s.Want(t, 1, "grpc_server_handled_total", "grpc_service", "flwr.proto.Fleet", "grpc_method", "Ping", "grpc_code", "InvalidArgument")
	s.Want(t, 1, "grpc_server_handled_total", "grpc_service", "flwr.proto.Driver", "grpc_method", "CreateRun", "grpc_code", "OK")
	s.Want(t, 0, "grpc_server_handled_total", "grpc_service", "flwr.proto.Driver", "grpc_method", "PushTaskIns", "grpc_code", "OK")
	s.Want(t, 1, "grpc_server_handling_seconds", "grpc_service", "flwr.proto.Fleet", "grpc_method", "CreateNode")

	s.Want(t, 1, "sepal_certificate_reloads_total", "result", "success")
	s.Want(t, 1, "sepal_certificate_reloads_total", "result", "failure")
	s.Want(t, 0, "sepal_certificate_last_reload_success", "source", "file")
	s.Want(t, float64(next.Pair.Leaf.NotAfter.Unix()), "sepal_certificate_expiration_timestamp_seconds", "name", "localhost", "source", "file")
	s.Want(t, float64(next.Pair.Leaf.NotAfter.Unix()), "sepal_certificate_expiration_timestamp_seconds", "name", "127.0.0.1", "source", "file")
	if v, ok := s.Value("sepal_certificate_last_reload_success_timestamp_seconds", "source", "file"); !ok || time.Since(time.Unix(int64(v), 0)) > time.Minute {
		t.Errorf("last reload success at %v (%v), want just now", v, ok)
	}
	if _, ok := s.Value("sepal_acme_orders_total", "kind", "renew", "result", "success"); ok {
		t.Errorf("ACME orders are exported without an ACME source")
	}
	s.Want(t, 1, "sepal_state_up")
	s.Want(t, 1, "sepal_nodes", "state", "online")
	s.Want(t, 1, "sepal_runs")
	s.Want(t, 0, "sepal_inflight_bytes") // nothing being received now
	s.Want(t, superlink.DefaultMaxInflightBytes, "sepal_inflight_limit_bytes")
	if v, _ := s.Value("sepal_connections"); v < 2 {
		t.Errorf("sepal_connections = %v, want at least the 2 client connections still open", v)
	}
	s.Want(t, 0, "sepal_requests_refused_total", "reason", "too_large")
	s.Want(t, 1, "sepal_build_info", "version", "v9.9.9-test")
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "process_start_time_seconds"} {
		if s[name] == nil {
			t.Errorf("%s is missing: no Go runtime or process collector", name)
		}
	}

	// Bounded labels: whatever the peers sent, only the fixed sets appear.
	if got := s.LabelValues("sepal_tls_handshake_failures_total", "api"); !slices.Equal(got, []string{"control", "driver", "fleet", "other"}) {
		t.Errorf("api label values %v", got)
	}
	var causes []string
	for _, c := range transport.HandshakeCauses {
		causes = append(causes, string(c))
	}
	slices.Sort(causes)
	if got := s.LabelValues("sepal_tls_handshake_failures_total", "cause"); !slices.Equal(got, causes) {
		t.Errorf("cause label values %v, want %v", got, causes)
	}
	if got := s.LabelValues("sepal_certificate_expiration_timestamp_seconds", "name"); strings.Contains(strings.Join(got, ","), "elsewhere") {
		t.Errorf("a name a peer asked for became a label: %v", got)
	}
}

// TestHealthAndReady: /healthz answers at once; /readyz only once serving
// with a certificate.
func TestHealthAndReady(t *testing.T) {
	r := newRig(t, metrics.Options{})
	if code, body := r.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := r.get(t, "/readyz"); code != 503 || !strings.Contains(body, "not serving yet") {
		t.Errorf("/readyz before SetServing: %d %q", code, body)
	}
	r.m.SetServing(true)
	if code, body := r.get(t, "/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz when serving: %d %q", code, body)
	}
	if code, _ := r.get(t, "/nothing"); code != 404 {
		t.Errorf("/nothing: %d, want 404", code)
	}
	res, err := http.Post(r.http.URL+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %d, want 405", res.StatusCode)
	}
}

func scrape(t *testing.T, r *rig) testkit.Samples {
	t.Helper()
	return testkit.Scrape(t, r.http.URL+"/metrics")
}
