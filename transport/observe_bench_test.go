//go:build linux

package transport_test

import (
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// credsServer is the server side of gRPC transport credentials.
func credsServer(creds credentials.TransportCredentials) serverSide {
	return func(raw net.Conn) (tls.ConnectionState, func(), error) {
		conn, info, err := creds.ServerHandshake(raw)
		if err != nil {
			return tls.ConnectionState{}, nil, err
		}
		return info.(credentials.TLSInfo).State, func() { conn.Close() }, nil
	}
}

// BenchmarkObserveHandshakes: full TLS 1.3 handshakes through gRPC's server
// credentials, plain and wrapped by ObserveHandshakes (counting into an
// atomic, as the metrics do), one of each in turn; reported are the server
// CPU medians and their ratio (observed/plain; goal: within 3%).
//
//	go test -run '^$' -bench ObserveHandshakes -count 5 ./transport
func BenchmarkObserveHandshakes(b *testing.B) {
	p, client := benchPKI(b, selfsigned.ECDSAP256)
	var n atomic.Uint64
	plain := transport.ServerCredentials(p.Source())
	observed := transport.ObserveHandshakes(transport.ServerCredentials(p.Source()), func(transport.HandshakeEvent) { n.Add(1) })
	cpu, _ := handshakesWith(b, client, credsServer(plain), credsServer(observed))
	mp, mo := median(cpu[0]), median(cpu[1])
	b.ReportMetric(float64(mp.Nanoseconds()), "plain-cpu-ns/op")
	b.ReportMetric(float64(mo.Nanoseconds()), "observed-cpu-ns/op")
	b.ReportMetric(float64(mo)/float64(mp), "observed/plain")
	if n.Load() == 0 {
		b.Fatal("no handshake was observed")
	}
}
