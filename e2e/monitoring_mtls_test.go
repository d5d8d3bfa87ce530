package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// TestMonitoringMutualTLS: a SuperLink that requires node certificates
// (flower-certs' CA and CRL) with --metrics-address counts client
// certificate refusals by cause (none, another CA, not a client
// certificate, revoked), exports the CRL's date, and the status page shows the nodes
// online with their certificate identity.
func TestMonitoringMutualTLS(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	for _, args := range [][]string{nil, {"node", "alice", "bob"}, {"serverapp"}, {"--dir", "other"}, {"node", "--dir", "other", "eve"}} {
		if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", args...); code != 0 {
			t.Fatalf("flower-certs %q exited %d:\n%s", args, code, out)
		}
	}
	if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", "revoke", "bob"); code != 0 {
		t.Fatalf("flower-certs revoke bob exited %d:\n%s", code, out)
	}
	sl := startSuperLink(t, linkOptions{dir: dir, certs: true, metrics: true,
		args: []string{"--fleet-api-client-ca", "certificates/ca.crt", "--client-crl", "certificates/crl.pem"}})
	fleet, metricsAddr := sl.fleet, sl.metrics
	node := start(t, dir, nil, "flower-client-app", append([]string{"client:app", "--root-certificates", "certificates/ca.crt", "--server", fleet}, clientCert("node", "alice")...)...)
	waitCount(t, sl.proc, "node joined", 1, 20*time.Second)

	caPEM, err := os.ReadFile(filepath.Join(dir, "certificates", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	pair := func(p string) []tls.Certificate {
		c, err := tls.LoadX509KeyPair(filepath.Join(dir, p+".pem"), filepath.Join(dir, p+".key"))
		if err != nil {
			t.Fatal(err)
		}
		return []tls.Certificate{c}
	}
	with := func(certs []tls.Certificate) func(*x509.CertPool) *tls.Config {
		return func(r *x509.CertPool) *tls.Config {
			cfg := &tls.Config{RootCAs: r, ServerName: "localhost", NextProtos: []string{"h2"}}
			if certs != nil {
				// Presented whatever CAs the server names, as Sepal's
				// apps do (Certificates would not send another CA's).
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
			}
			return cfg
		}
	}
	cases := []handshakeCase{
		{cause: "client_certificate_missing", n: 2, cfg: with(nil)},
		{cause: "client_certificate_unknown_ca", n: 2, cfg: with(pair("other/nodes/eve"))},
		{cause: "client_certificate_invalid", n: 1, cfg: with(pair("certificates/server"))},
		{cause: "client_certificate_revoked", n: 3, cfg: with(pair("certificates/nodes/bob"))},
	}
	failHandshakes(t, fleet, roots, cases)
	// Each cause's count, not their sum: waitListening's probes count as
	// closed, so the sum can be reached before the last handshake is.
	s := waitScrape(t, "http://"+metricsAddr+"/metrics", func(s testkit.Samples) bool {
		for _, c := range cases {
			if v, _ := s.Value("sepal_tls_handshake_failures_total", "api", "fleet", "cause", c.cause); v < float64(c.n) {
				return false
			}
		}
		return true
	})
	for _, c := range cases {
		s.Want(t, float64(c.n), "sepal_tls_handshake_failures_total", "api", "fleet", "cause", c.cause)
	}
	crlPEM, err := os.ReadFile(filepath.Join(dir, "certificates", "crl.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(crlPEM)
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	s.Want(t, float64(crl.ThisUpdate.Unix()), "sepal_crl_last_update_timestamp_seconds")
	statusInBrowser(t, "http://"+metricsAddr+"/", "", func(p statusPage) {
		if p.nodesOnline != "1" || len(p.identities) != 1 || p.identities[0] != "sepal:node:alice" {
			t.Errorf("the page shows %q nodes online with identities %q, want 1, sepal:node:alice:\n%s", p.nodesOnline, p.identities, p.text)
		}
		if !strings.Contains(p.text, "client_certificate_revoked 3") {
			t.Errorf("the page does not count the revoked certificates:\n%s", p.text)
		}
	})
	stopClients(t, []*proc{node})
}
