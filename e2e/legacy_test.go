// The harness's former names, unused here, wait for the branches that call them.
//
//lint:file-ignore U1000 kept for branches that still call these names

package e2e

// The harness's former names, kept as thin wrappers of the harness (see
// harness_test.go) while branches written against them are merged; new
// tests call the harness.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// slFlowerCerts is flowerCerts.
func slFlowerCerts(t testing.TB, dir string, args ...string) {
	t.Helper()
	flowerCerts(t, dir, args...)
}

// slProc is a superLink.
type slProc = superLink

// slStart is startSuperLink in dir with args.
func slStart(t testing.TB, dir string, args ...string) *slProc {
	t.Helper()
	return startSuperLink(t, linkOptions{dir: dir, args: args})
}

// slTLS is trustCA of dir's seed CA.
func slTLS(t testing.TB, dir string) *tls.Config {
	t.Helper()
	return trustCA(t, filepath.Join(dir, slCA))
}

// slHealth is the status of one health check of addr trusting caFile.
func slHealth(t *testing.T, addr, caFile string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	st, err := testkit.HealthCheck(t, addr, credentials.NewTLS(trustCA(t, caFile)))
	if err != nil {
		t.Fatalf("health check of %s over TLS: %v", addr, err)
	}
	return st
}

// slServedSerial is servedSerial trusting caFile.
func slServedSerial(t *testing.T, addr, caFile string) *big.Int {
	t.Helper()
	return servedSerial(t, addr, trustCA(t, caFile))
}

// startSuperLinkBin is startSuperLink in dir with args.
func startSuperLinkBin(t *testing.T, dir string, args ...string) link {
	t.Helper()
	l := startSuperLink(t, linkOptions{dir: dir, args: args})
	return link{fleet: l.fleet, driver: l.driver}
}

// handshake is handshakeTLS with acmeTLS.
func handshake(addr, serverName string, roots *x509.CertPool) (*x509.Certificate, error) {
	return handshakeTLS(addr, acmeTLS(roots, serverName))
}

// healthCheck is one health check of addr over acmeTLS, nil when SERVING.
func healthCheck(ctx context.Context, addr string, roots *x509.CertPool) error {
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(acmeTLS(roots, acmeDomain))))
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := testkit.CheckHealth(ctx, cc)
	if err == nil && st != healthpb.HealthCheckResponse_SERVING {
		err = fmt.Errorf("health %v", st)
	}
	return err
}

// waitServing is waitACMECert.
func waitServing(t *testing.T, l *acmeLink, roots *x509.CertPool, d time.Duration) (*x509.Certificate, time.Duration) {
	t.Helper()
	return waitACMECert(t, l, roots, d)
}

// oneHandshake is tryHandshake.
func oneHandshake(addr string, cfg *tls.Config, raw string) error {
	return tryHandshake(addr, cfg, raw)
}
