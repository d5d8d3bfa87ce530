//go:build linux

package transport_test

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// The server's CPU per full TLS 1.3 handshake with a node certificate
// required and checked (ClientAuthConfig: the client CA and CRL of a
// ClientCAFile, the role) vs no client certificate, one handshake with each
// in turn; reported: both medians and their ratio (mtls/tls). Mutual TLS
// adds the verification of one ECDSA chain and a signature.
//
//	go test -run '^$' -bench HandshakeClientAuth -count 5 ./transport
func BenchmarkHandshakeClientAuth(b *testing.B) {
	p, client := benchPKI(b, selfsigned.ECDSAP256)
	dir := b.TempDir()
	crl, err := p.CA.SignCRL(nil, nil, time.Time{})
	if err != nil {
		b.Fatal(err)
	}
	crlFile := filepath.Join(dir, "crl.pem")
	if err := certfile.WriteFileAtomic(crlFile, crl.PEM, 0o644); err != nil {
		b.Fatal(err)
	}
	src, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: p.CAFile, CRLFile: crlFile,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	id := transport.Identity{Role: transport.RoleNode, Name: "bench"}
	pair, err := p.CA.IssueClient(selfsigned.ClientOptions{CommonName: "bench", URIs: []*url.URL{id.URI()}})
	if err != nil {
		b.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		b.Fatal(err)
	}
	client = client.Clone()
	client.Certificates = []tls.Certificate{cert}
	plain := transport.ServerConfig(p.Source())
	mtls := transport.ClientAuthConfig(p.Source(), transport.ClientAuth{CAs: src, Role: transport.RoleNode})
	b.Run("alternating", func(b *testing.B) {
		cpu, wall := handshakes(b, client, plain, mtls)
		mp, mm := median(cpu[0]), median(cpu[1])
		b.ReportMetric(float64(mp.Nanoseconds()), "tls-cpu-ns/op")
		b.ReportMetric(float64(mm.Nanoseconds()), "mtls-cpu-ns/op")
		b.ReportMetric(float64(mm)/float64(mp), "mtls/tls")
		b.ReportMetric(float64(2*len(cpu[0]))/wall.Seconds(), "handshakes/s")
	})
}
