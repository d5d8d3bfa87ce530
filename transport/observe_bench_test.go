//go:build linux

package transport_test

import (
	"crypto/tls"
	"net"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

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
	creds := []credentials.TransportCredentials{plain, observed}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := make([][]time.Duration, len(creds))
	handshake := func(i int) {
		done := make(chan error, 1)
		go func() {
			c, err := tls.Dial("tcp", addr, client)
			if err == nil {
				c.Close()
			}
			done <- err
		}()
		raw, err := ln.Accept()
		if err != nil {
			b.Fatal(err)
		}
		t0 := threadCPU(b)
		conn, _, err := creds[i].ServerHandshake(raw)
		cpu[i] = append(cpu[i], threadCPU(b)-t0)
		if err != nil {
			b.Fatal(err)
		}
		conn.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	for i := range creds {
		handshake(i)
		cpu[i] = cpu[i][:0]
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		for i := range creds {
			handshake(i)
		}
	}
	mp, mo := median(cpu[0]), median(cpu[1])
	b.ReportMetric(float64(mp.Nanoseconds()), "plain-cpu-ns/op")
	b.ReportMetric(float64(mo.Nanoseconds()), "observed-cpu-ns/op")
	b.ReportMetric(float64(mo)/float64(mp), "observed/plain")
	if n.Load() == 0 {
		b.Fatal("no handshake was observed")
	}
}
