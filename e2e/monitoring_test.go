package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
)

// The monitoring tests run flower-superlink with --metrics-address, do what
// an operator watches for (a FedAvg run, reloads good and bad, an ACME
// issuance, handshakes that fail for each cause), then scrape /metrics
// with the Prometheus text parser and read the status page in Chromium.

// handshakeCase is one kind of failed handshake a peer can cause.
type handshakeCase struct {
	cause string
	n     int
	cfg   func(roots *x509.CertPool) *tls.Config // nil: raw bytes
	raw   string                                 // "" with cfg nil: connect and close
}

// peerFailures are the failures any peer can cause on a TLS listener
// without client certificates, each a few times.
var peerFailures = []handshakeCase{
	{cause: "plaintext", n: 3, raw: "GET /metrics HTTP/1.1\r\nHost: superlink\r\n\r\n"},
	{cause: "protocol_version", n: 2, cfg: func(r *x509.CertPool) *tls.Config {
		return &tls.Config{RootCAs: r, ServerName: "localhost", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11, NextProtos: []string{"h2"}}
	}},
	{cause: "no_shared_cipher", n: 2, cfg: func(r *x509.CertPool) *tls.Config {
		return &tls.Config{RootCAs: r, ServerName: "localhost", MaxVersion: tls.VersionTLS12, NextProtos: []string{"h2"},
			CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA}}
	}},
	{cause: "no_application_protocol", n: 2, cfg: func(r *x509.CertPool) *tls.Config {
		return &tls.Config{RootCAs: r, ServerName: "localhost"}
	}},
	{cause: "bad_server_name", n: 3, cfg: func(r *x509.CertPool) *tls.Config {
		return &tls.Config{RootCAs: r, ServerName: "not-this-server.example", NextProtos: []string{"h2"}}
	}},
	{cause: "client_rejected_certificate", n: 2, cfg: func(*x509.CertPool) *tls.Config {
		return &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "localhost", NextProtos: []string{"h2"}}
	}},
	{cause: "closed", n: 1},
}

// failHandshakes makes every case of cases against addr.
func failHandshakes(t *testing.T, addr string, roots *x509.CertPool, cases []handshakeCase) {
	t.Helper()
	for _, c := range cases {
		for range c.n {
			var cfg *tls.Config
			if c.cfg != nil {
				cfg = c.cfg(roots)
			}
			if err := tryHandshake(addr, cfg, c.raw); err == nil {
				t.Fatalf("a %s handshake to %s succeeded", c.cause, addr)
			}
		}
	}
}

// tryHandshake makes a TLS handshake with addr with cfg (handshakeTLS),
// or, with cfg nil, writes raw (nothing: closes at once), and returns the
// client's error once the server has given its verdict.
func tryHandshake(addr string, cfg *tls.Config, raw string) error {
	if cfg != nil {
		_, err := handshakeTLS(addr, cfg)
		return err
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if raw == "" {
		return errors.New("closed")
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte(raw))
	b, _ := io.ReadAll(c) // until the server closes
	if strings.HasPrefix(string(b), "HTTP/") {
		return nil // an HTTP answer: the port serves HTTP
	}
	return errors.New("no HTTP answer")
}

// waitScrape scrapes url until ready(s) holds or 15 s pass.
func waitScrape(t *testing.T, url string, ready func(testkit.Samples) bool) testkit.Samples {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		s := testkit.Scrape(t, url)
		if ready(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listeners returns the TCP ports the process pid listens on, from /proc.
func listeners(t *testing.T, pid int) []int {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var ports []int
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" || !inodes[fs[9]] { // 0A: LISTEN
				continue
			}
			hexPort := fs[1][strings.LastIndex(fs[1], ":")+1:]
			p, _ := strconv.ParseInt(hexPort, 16, 32)
			ports = append(ports, int(p))
		}
	}
	return ports
}

// TestMonitoringFiles: a SuperLink on certificate files with
// --metrics-address runs a FedAvg run, a good reload and a bad one, and
// meets failed handshakes of every cause a peer without a client
// certificate can cause; /metrics, /readyz and the status page (in
// Chromium) show it all. The Fleet and Driver ports serve no HTTP page.
func TestMonitoringFiles(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	files, pki := writeTestCerts(t, filepath.Join(dir, "certificates"), selfsigned.ServerOptions{})
	roots := x509.NewCertPool()
	roots.AddCert(pki.CA.Cert)
	sl := startSuperLink(t, linkOptions{dir: dir, metrics: true, args: []string{"--certificates", files.CA, files.Cert, files.Key,
		"--log-format", "json", "--max-inflight-bytes", "256MiB"}})
	fleet, driver, metricsAddr := sl.fleet, sl.driver, sl.metrics
	sl.waitOutput(t, `"msg":"serving","fleet_api_address"`, 10*time.Second)
	if !strings.Contains(sl.out.String(), `"metrics_address":"`+metricsAddr+`"`) {
		t.Errorf("the serving line does not name the metrics address:\n%s", sl.out.String())
	}
	base := "http://" + metricsAddr
	if ports := listeners(t, sl.cmd.Process.Pid); len(ports) != 4 {
		t.Errorf("flower-superlink --metrics-address listens on %v, want the Fleet, Driver (and ServerAppIo), Control and metrics ports", ports)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz once serving: %d %q", code, body)
	}

	// A FedAvg run of two rounds with two client apps, which stay online.
	var clients []*proc
	for range 2 {
		clients = append(clients, start(t, dir, nil, "flower-client-app", "client:app",
			"--root-certificates", files.CA, "--server", fleet, "--poll-interval", "300ms"))
	}
	out, code := run(t, 90*time.Second, dir, nil, "flower-server-app", "server:app",
		"--root-certificates", files.CA, "--server", driver, "--rounds", "2", "--min-nodes", "2")
	if code != 0 {
		t.Fatalf("flower-server-app exited %d:\n%s", code, out)
	}

	// A good reload, then a bad one (the key of another pair), on SIGHUP.
	next := pki.Issue(t, selfsigned.ServerOptions{})
	next.WriteFiles(t, filepath.Dir(files.Cert))
	sl.cmd.Process.Signal(syscall.SIGHUP)
	waitCount(t, sl.proc, `"msg":"serving certificate"`, 2, 10*time.Second)
	other := pki.Issue(t, selfsigned.ServerOptions{})
	if err := certfile.WriteFileAtomic(files.Key, other.Pair.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	sl.cmd.Process.Signal(syscall.SIGHUP)
	sl.waitOutput(t, "certificate reload failed", 10*time.Second)

	// A request past its method's limit (CreateNode takes 1 MiB), refused
	// before its body is read.
	tooLarge(t, fleet, roots)

	// Failed handshakes of each cause on the Fleet API, and a connection
	// closed before its handshake on the Driver API. (An HTTP/2 preface in
	// plaintext from this machine on the Driver API's port is
	// ServerAppIo's: no handshake failure.)
	failHandshakes(t, fleet, roots, peerFailures)
	failHandshakes(t, driver, roots, []handshakeCase{{cause: "closed", n: 1}})
	// The Fleet and Driver ports serve no HTTP page, over TLS either.
	for _, addr := range []string{fleet, driver} {
		noHTTPPages(t, addr, roots)
	}
	// The closed one on the Driver API and the plain HTTP request of each
	// noHTTPPages.
	failedWant := 1 + 2
	for _, c := range peerFailures {
		failedWant += c.n
	}

	s := waitScrape(t, base+"/metrics", func(s testkit.Samples) bool {
		return s.Sum("sepal_tls_handshakes_total", "result", "failure") >= float64(failedWant)
	})
	for _, c := range peerFailures {
		n := float64(c.n)
		if c.cause == "plaintext" {
			n++ // noHTTPPages's plain HTTP request
		}
		s.Want(t, n, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", c.cause)
	}
	s.Want(t, 1, "sepal_tls_handshake_failures_total", "api", "driver", "cause", "plaintext") // noHTTPPages's plain HTTP request
	s.Want(t, 1, "sepal_tls_handshake_failures_total", "api", "driver", "cause", "closed")
	s.Want(t, 0, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "not_ready")
	s.Want(t, 0, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "other")
	if v, _ := s.Value("sepal_tls_handshakes_total", "api", "fleet", "result", "success"); v < 2 {
		t.Errorf("successful Fleet API handshakes: %v, want one per client app at least", v)
	}
	// The run: one CreateRun, a CreateNode per client app, TaskIns pushed
	// per round, every result pulled.
	s.Want(t, 1, "grpc_server_handled_total", "grpc_service", "flwr.proto.Driver", "grpc_method", "CreateRun", "grpc_code", "OK")
	s.Want(t, 2, "grpc_server_handled_total", "grpc_service", "flwr.proto.Fleet", "grpc_method", "CreateNode", "grpc_code", "OK")
	if v, _ := s.Value("grpc_server_handled_total", "grpc_service", "flwr.proto.Fleet", "grpc_method", "PushTaskRes", "grpc_code", "OK"); v < 4 {
		t.Errorf("PushTaskRes OK: %v, want at least 4 (2 nodes x 2 rounds)", v)
	}
	if v, _ := s.Value("grpc_server_handling_seconds", "grpc_service", "flwr.proto.Driver", "grpc_method", "PushTaskIns"); v < 2 {
		t.Errorf("PushTaskIns latency samples: %v, want one per round at least", v)
	}
	s.Want(t, 1, "sepal_certificate_reloads_total", "result", "success")
	s.Want(t, 1, "sepal_certificate_reloads_total", "result", "failure")
	s.Want(t, 0, "sepal_certificate_last_reload_success", "source", "file")
	s.Want(t, float64(next.Pair.Leaf.NotAfter.Unix()), "sepal_certificate_expiration_timestamp_seconds", "name", "localhost", "source", "file")
	if s["process_resident_memory_bytes"] == nil || s["go_goroutines"] == nil {
		t.Errorf("no process or Go runtime metrics")
	}
	checkStateMetrics(t, s)
	s.Want(t, 256<<20, "sepal_inflight_limit_bytes")
	s.Want(t, 1, "sepal_requests_refused_total", "reason", "too_large")
	s.Want(t, 0, "sepal_requests_refused_total", "reason", "busy")
	if v, _ := s.Value("sepal_connections"); v < 2 {
		t.Errorf("sepal_connections = %v, want the two client apps' connections at least", v)
	}

	statusInBrowser(t, base+"/", "status-page.png", func(p statusPage) {
		if p.ready != "ready" {
			t.Errorf("the page says %q, want ready", p.ready)
		}
		for _, want := range []string{"localhost, 127.0.0.1, ::1", "file", "failed", "the previous certificate is still served", "plaintext"} {
			if !strings.Contains(p.text, want) {
				t.Errorf("the page lacks %q:\n%s", want, p.text)
			}
		}
		checkStatePage(t, p)
	})
	stopClients(t, clients)
}

// tooLarge sends CreateNode a 2 MiB message over TLS and expects the
// SuperLink to refuse it with ResourceExhausted.
func tooLarge(t *testing.T, addr string, roots *x509.CertPool) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = cc.Invoke(ctx, "/flwr.proto.Fleet/CreateNode", &wrapperspb.BytesValue{Value: make([]byte, 2<<20)}, &emptypb.Empty{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 2 MiB CreateNode: %v, want ResourceExhausted", err)
	}
}

// noHTTPPages checks that addr (a Fleet or Driver API) answers no HTTP
// request with a page: plain HTTP fails the handshake (counted as
// plaintext), and over TLS (HTTP/2, as gRPC) / and /metrics are not 200.
func noHTTPPages(t *testing.T, addr string, roots *x509.CertPool) {
	t.Helper()
	if err := tryHandshake(addr, nil, "GET / HTTP/1.1\r\nHost: superlink\r\n\r\n"); err == nil {
		t.Errorf("%s answered a plain HTTP request", addr)
	}
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}, ForceAttemptHTTP2: true}}
	defer c.CloseIdleConnections()
	for _, path := range []string{"/", "/metrics", "/healthz"} {
		res, err := c.Get("https://" + addr + path)
		if err != nil {
			continue // refused: no page
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == http.StatusOK || strings.Contains(string(body), "sepal_") || strings.Contains(string(body), "<html") {
			t.Errorf("https://%s%s answered %s:\n%s", addr, path, res.Status, body)
		}
	}
}

// TestMetricsOffByDefault: without --metrics-address the SuperLink listens
// on its API ports only, and its serving line names no metrics address.
func TestMetricsOffByDefault(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	files, _ := writeTestCerts(t, filepath.Join(dir, "certificates"), selfsigned.ServerOptions{})
	sl := startSuperLink(t, linkOptions{dir: dir, args: []string{"--certificates", files.CA, files.Cert, files.Key}})
	fleet, driver := sl.fleet, sl.driver
	// Its API ports: the Fleet API, the Driver API (and ServerAppIo), and
	// the Control API, on the port its serving line names.
	m := regexp.MustCompile(`control_api_address=\S*:(\d+)`).FindStringSubmatch(sl.out.String())
	if m == nil {
		t.Fatalf("the serving line names no Control API address:\n%s", sl.out.String())
	}
	control, _ := strconv.Atoi(m[1])
	want := []int{port(t, fleet), port(t, driver), control}
	ports := listeners(t, sl.cmd.Process.Pid)
	slices.Sort(ports)
	slices.Sort(want)
	if !slices.Equal(ports, want) {
		t.Errorf("flower-superlink without --metrics-address listens on %v, want only its API ports %v", ports, want)
	}
	if strings.Contains(sl.out.String(), "metrics_address") {
		t.Errorf("the log names a metrics address without --metrics-address:\n%s", sl.out.String())
	}
	out, code := run(t, 10*time.Second, dir, nil, "flower-superlink", "--insecure", "--metrics-address", "nonsense")
	if code != 2 || !strings.Contains(out, "--metrics-address \"nonsense\": want HOST:PORT") {
		t.Errorf("--metrics-address nonsense: exit %d:\n%s", code, out)
	}
	busy := freeAddr(t)
	l, err := net.Listen("tcp", busy)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	out, code = run(t, 20*time.Second, dir, nil, "flower-superlink", "--insecure", "--metrics-address", busy,
		"--grpc-rere-fleet-api-address", freeAddr(t), "--driver-api-address", freeAddr(t))
	if code != 1 || !strings.Contains(out, "--metrics-address "+busy+": the address is already in use") {
		t.Errorf("--metrics-address in use: exit %d:\n%s", code, out)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// chromium returns the path of Debian's Chromium. Without it the test
// fails in CI (.ci/run installs it) and is skipped elsewhere.
func chromium(t *testing.T) string {
	t.Helper()
	return needTool(t, "chromium", "chromium", "chromium-browser")
}

// TestMonitoringACME: an ACME SuperLink with --metrics-address says it is
// not ready while it obtains its certificate (handshakes meanwhile fail as
// not_ready, as many as the clients saw), then counts the issuance from
// pebble, exports the certificate's expiry per domain, and counts an ACME
// validation for a name it does not manage as a bad server name.
func TestMonitoringACME(t *testing.T) {
	needE2E(t)
	t.Parallel()
	fleet, metricsAddr := freeAddr(t), freeAddr(t)
	pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), AuthzReuse: -1})
	roots := pb.issuingRoots(t)
	l := startACMELink(t, pb, acmeLinkOptions{client: "certmagic", fleet: fleet,
		extra: []string{"--metrics-address", metricsAddr}})

	// Until the certificate is in: handshakes (counting the refusals the
	// clients see) and /readyz (which must say not ready at least once).
	base := "http://" + metricsAddr
	var refused, notReady int
	var leaf *x509.Certificate
	deadline := time.Now().Add(60 * time.Second)
	for leaf == nil {
		if time.Now().After(deadline) {
			t.Fatalf("no ACME certificate served within 60s")
		}
		served, err := handshakeTLS(fleet, acmeTLS(roots, acmeDomain))
		switch {
		case err == nil:
			leaf = served
		case strings.Contains(err.Error(), "internal error"):
			refused++
		}
		if res, err := (&http.Client{Timeout: 2 * time.Second}).Get(base + "/readyz"); err == nil {
			if res.StatusCode == http.StatusServiceUnavailable {
				notReady++
			}
			res.Body.Close()
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("while obtaining: %d handshakes refused, /readyz not ready %d times", refused, notReady)
	if refused == 0 || notReady == 0 {
		t.Errorf("no refused handshake (%d) or no not-ready /readyz (%d) while the certificate was obtained", refused, notReady)
	}
	l.waitOutput(t, "msg=serving", 10*time.Second)
	if code, body := httpGet(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz once serving: %d %q", code, body)
	}
	// Validations for names not managed here.
	for range 2 {
		tryHandshake(fleet, &tls.Config{InsecureSkipVerify: true, ServerName: "unknown.superlink.test", NextProtos: []string{"acme-tls/1"}}, "")
	}

	s := waitScrape(t, base+"/metrics", func(s testkit.Samples) bool {
		v, _ := s.Value("sepal_tls_handshake_failures_total", "api", "fleet", "cause", "bad_server_name")
		return v >= 2
	})
	s.Want(t, float64(refused), "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "not_ready")
	s.Want(t, 2, "sepal_tls_handshake_failures_total", "api", "fleet", "cause", "bad_server_name")
	s.Want(t, 1, "sepal_acme_orders_total", "kind", "obtain", "result", "success")
	s.Want(t, 0, "sepal_acme_orders_total", "kind", "obtain", "result", "failure")
	s.Want(t, 0, "sepal_acme_orders_total", "kind", "renew", "result", "success")
	s.Want(t, float64(leaf.NotAfter.Unix()), "sepal_certificate_expiration_timestamp_seconds", "name", acmeDomain, "source", "acme")
	s.Want(t, 1, "sepal_certificate_last_reload_success", "source", "acme")
	if v, ok := s.Value("sepal_certificate_last_reload_success_timestamp_seconds", "source", "acme"); !ok || time.Since(time.Unix(int64(v), 0)) > 2*time.Minute {
		t.Errorf("last ACME success at %v (%v), want just now", v, ok)
	}
	if _, ok := s.Value("sepal_certificate_reloads_total", "result", "success"); ok {
		t.Errorf("file reloads are exported for an ACME SuperLink")
	}
	if _, page := httpGet(t, base+"/"); !strings.Contains(page, "acme ("+acmeDomain+")") || !strings.Contains(page, "Pebble") || !strings.Contains(page, "obtain of "+acmeDomain) {
		t.Errorf("the status page does not show the ACME certificate and its issuance:\n%s", page)
	}
}
