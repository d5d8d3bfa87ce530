//go:build linux

package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/testkit"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/transport"
)

// Full TLS 1.3 handshakes over loopback TCP, the server's CPU measured
// alone.
//
// The server handshake runs in the benchmark goroutine, locked to its OS
// thread, and the client (dial and handshake) in another goroutine; the
// thread's CPU clock (CLOCK_THREAD_CPUTIME_ID) is read just before and
// after each server Handshake, so it counts the handshake's crypto and its
// socket reads and writes, not Accept. The median over the run is reported,
// as the machine is shared and a few handshakes are slowed by others. The client disables session tickets and
// has no session cache, so every handshake is a full one. Reported:
//
//	server-cpu-ns/op   server CPU per full handshake (median)
//	server-hs/cpu-s    full handshakes one server core does per second
//	                   (1 / the median)
//	handshakes/s       wall-clock rate of client+server pairs on this
//	                   machine (both sides share its cores)
//
// On a shared machine the load drifts between sub-benchmarks; the
// "alternating" sub-benchmarks compare two configs handshake by handshake
// and report the ratio, which holds up under load:
//
//	go test -run '^$' -bench 'Handshake.*/alternating' -count 10 ./transport | benchstat -

const clockThreadCPUTime = 3 // CLOCK_THREAD_CPUTIME_ID (Linux)

// threadCPU is the CPU time of the calling OS thread, in nanoseconds.
func threadCPU(b *testing.B) time.Duration {
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		b.Fatal(errno)
	}
	return time.Duration(ts.Nano())
}

// benchPKI issues a CA and a server certificate of key type kt (both, as
// generate.sh does) and returns them and a client config trusting the CA.
func benchPKI(b *testing.B, kt selfsigned.KeyType) (*testkit.PKI, *tls.Config) {
	b.Helper()
	p := testkit.NewPKI(b, selfsigned.CAOptions{KeyType: kt}, selfsigned.ServerOptions{KeyType: kt})
	pool := x509.NewCertPool()
	pool.AddCert(p.CA.Cert)
	client := &tls.Config{
		RootCAs:                pool,
		ServerName:             "localhost",
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		SessionTicketsDisabled: true, // every handshake is a full one
	}
	return p, client
}

// serverSide makes the server side of one handshake on raw and returns
// its connection state and a function that closes the connection.
type serverSide func(raw net.Conn) (tls.ConnectionState, func(), error)

// tlsServer is the server side of crypto/tls with config.
func tlsServer(config *tls.Config) serverSide {
	return func(raw net.Conn) (tls.ConnectionState, func(), error) {
		s := tls.Server(raw, config)
		err := s.Handshake()
		return s.ConnectionState(), func() { s.Close() }, err
	}
}

// handshakes runs b.N rounds; each round makes one full handshake with
// each server config in turn, so that configs compared in one run share the
// machine's load. It returns the server CPU time of every handshake, per
// config, and the wall time of the rounds.
func handshakes(b *testing.B, client *tls.Config, servers ...*tls.Config) ([][]time.Duration, time.Duration) {
	sides := make([]serverSide, len(servers))
	for i, s := range servers {
		sides[i] = tlsServer(s)
	}
	return handshakesWith(b, client, sides...)
}

// handshakesWith is handshakes with any server side, such as gRPC's
// transport credentials.
func handshakesWith(b *testing.B, client *tls.Config, servers ...serverSide) ([][]time.Duration, time.Duration) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := make([][]time.Duration, len(servers))
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
		st, closeConn, err := servers[i](raw)
		cpu[i] = append(cpu[i], threadCPU(b)-t0)
		if err != nil {
			b.Fatal(err)
		}
		if st.Version != tls.VersionTLS13 || st.DidResume {
			b.Fatal("not a full TLS 1.3 handshake")
		}
		closeConn()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	for i := range servers { // warm up outside the measurement
		handshake(i)
		cpu[i] = cpu[i][:0]
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		for i := range servers {
			handshake(i)
		}
	}
	return cpu, time.Since(start)
}

func median(d []time.Duration) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[len(d)/2]
}

// benchHandshakes measures full handshakes with one server config.
func benchHandshakes(b *testing.B, server, client *tls.Config) {
	cpu, wall := handshakes(b, client, server)
	m := median(cpu[0])
	b.ReportMetric(float64(m.Nanoseconds()), "server-cpu-ns/op")
	b.ReportMetric(1/m.Seconds(), "server-hs/cpu-s")
	b.ReportMetric(float64(len(cpu[0]))/wall.Seconds(), "handshakes/s")
}

// ECDSA P-256 (flower-certs' default) vs RSA-4096 (what Flower's
// generate.sh makes), through transport.ServerConfig. Goal: P-256 costs the
// server at least 10x less CPU per full handshake. "alternating" makes one
// handshake with each in turn and reports the ratio of the medians
// (rsa-4096/ecdsa-p256).
func BenchmarkHandshakeKeyType(b *testing.B) {
	kts := []selfsigned.KeyType{selfsigned.ECDSAP256, selfsigned.RSA4096}
	var servers []*tls.Config
	both := x509.NewCertPool() // for the alternating client
	var client *tls.Config
	for _, kt := range kts {
		p, c := benchPKI(b, kt)
		server := transport.ServerConfig(p.Source())
		servers = append(servers, server)
		both.AddCert(p.CA.Cert)
		client = c
		b.Run(string(kt), func(b *testing.B) { benchHandshakes(b, server, c) })
	}
	b.Run("alternating", func(b *testing.B) {
		client := client.Clone()
		client.RootCAs = both
		cpu, wall := handshakes(b, client, servers...)
		me, mr := median(cpu[0]), median(cpu[1])
		b.ReportMetric(float64(me.Nanoseconds()), "ecdsa-cpu-ns/op")
		b.ReportMetric(float64(mr.Nanoseconds()), "rsa-cpu-ns/op")
		b.ReportMetric(float64(mr)/float64(me), "rsa/ecdsa")
		b.ReportMetric(float64(2*len(cpu[0]))/wall.Seconds(), "handshakes/s")
	})
}

// GetCertificate through the reloading certfile.FileSource (running, as
// a SuperLink runs it) vs a static tls.Config.Certificates, with the same
// policy otherwise. Goal: within 3%.
//
// "static" and "filesource" measure each alone; "alternating" makes one
// handshake with each in turn in one run, so both see the same load on a
// shared machine, and reports both medians and their ratio
// (filesource/static, 1.0 = the same cost).
func BenchmarkHandshakeSource(b *testing.B) {
	p, client := benchPKI(b, selfsigned.ECDSAP256)
	static := transport.ServerConfig(p.Source())
	static.GetCertificate = nil
	static.Certificates = []tls.Certificate{*p.Cert}

	f := p.WriteFiles(b, b.TempDir())
	src, err := certfile.NewFileSource(certfile.FileSourceOptions{
		CAFile: f.CA, CertFile: f.Cert, KeyFile: f.Key,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- src.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	file := transport.ServerConfig(src)

	b.Run("static", func(b *testing.B) { benchHandshakes(b, static, client) })
	b.Run("filesource", func(b *testing.B) { benchHandshakes(b, file, client) })
	b.Run("alternating", func(b *testing.B) {
		cpu, wall := handshakes(b, client, static, file)
		ms, mf := median(cpu[0]), median(cpu[1])
		b.ReportMetric(float64(ms.Nanoseconds()), "static-cpu-ns/op")
		b.ReportMetric(float64(mf.Nanoseconds()), "filesource-cpu-ns/op")
		b.ReportMetric(float64(mf)/float64(ms), "filesource/static")
		b.ReportMetric(float64(2*len(cpu[0]))/wall.Seconds(), "handshakes/s")
	})
}
