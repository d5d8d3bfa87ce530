//go:build linux

package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
// Run the sub-benchmarks alternately (the machine's load drifts), e.g.
//
//	go test -c -o t.bench ./transport
//	for i in 1 2 3 4 5 6; do for k in ecdsa rsa; do
//	  ./t.bench -test.run '^$' -test.bench "KeyType/$k"; done; done | benchstat -

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
// generate.sh does) and returns the certificate and a client config
// trusting the CA.
func benchPKI(b *testing.B, kt selfsigned.KeyType) (*selfsigned.CA, *selfsigned.Pair, *tls.Certificate, *tls.Config) {
	b.Helper()
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{KeyType: kt})
	if err != nil {
		b.Fatal(err)
	}
	pair, err := ca.IssueServer(selfsigned.ServerOptions{KeyType: kt})
	if err != nil {
		b.Fatal(err)
	}
	cert, err := pair.TLSCertificate()
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	client := &tls.Config{
		RootCAs:                pool,
		ServerName:             "localhost",
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{"h2"},
		SessionTicketsDisabled: true, // every handshake is a full one
	}
	return ca, pair, &cert, client
}

func benchHandshakes(b *testing.B, server, client *tls.Config) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var cpu []time.Duration
	handshake := func() {
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
		s := tls.Server(raw, server)
		t0 := threadCPU(b)
		err = s.Handshake()
		cpu = append(cpu, threadCPU(b)-t0)
		if err != nil {
			b.Fatal(err)
		}
		if st := s.ConnectionState(); st.Version != tls.VersionTLS13 || st.DidResume {
			b.Fatal("not a full TLS 1.3 handshake")
		}
		s.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	handshake() // warm up outside the measurement
	cpu = cpu[:0]
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	n := 0
	for b.Loop() {
		handshake()
		n++
	}
	wall := time.Since(start)
	slices.Sort(cpu)
	median := cpu[len(cpu)/2]
	b.ReportMetric(float64(median.Nanoseconds()), "server-cpu-ns/op")
	b.ReportMetric(1/median.Seconds(), "server-hs/cpu-s")
	b.ReportMetric(float64(n)/wall.Seconds(), "handshakes/s")
}

// ECDSA P-256 (flower-certs' default) vs RSA-4096 (what Flower's
// generate.sh makes), through transport.ServerConfig. Goal: P-256 costs the
// server at least 10x less CPU per full handshake.
func BenchmarkHandshakeKeyType(b *testing.B) {
	for _, kt := range []selfsigned.KeyType{selfsigned.ECDSAP256, selfsigned.RSA4096} {
		b.Run(string(kt), func(b *testing.B) {
			_, _, cert, client := benchPKI(b, kt)
			benchHandshakes(b, transport.ServerConfig(staticSource{cert}), client)
		})
	}
}

// GetCertificate through the reloading selfsigned.FileSource (running, as
// a SuperLink runs it) vs a static tls.Config.Certificates, with the same
// policy otherwise. Goal: within 3%.
func BenchmarkHandshakeSource(b *testing.B) {
	ca, pair, cert, client := benchPKI(b, selfsigned.ECDSAP256)

	b.Run("static", func(b *testing.B) {
		cfg := transport.ServerConfig(staticSource{cert})
		cfg.GetCertificate = nil
		cfg.Certificates = []tls.Certificate{*cert}
		benchHandshakes(b, cfg, client)
	})

	b.Run("filesource", func(b *testing.B) {
		dir := b.TempDir()
		caFile, certFile, keyFile := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
		for path, data := range map[string][]byte{caFile: ca.CertPEM, certFile: pair.CertPEM, keyFile: pair.KeyPEM} {
			if err := os.WriteFile(path, data, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		src, err := selfsigned.NewFileSource(selfsigned.FileSourceOptions{
			CAFile: caFile, CertFile: certFile, KeyFile: keyFile,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan error, 1)
		go func() { ran <- src.Run(ctx) }()
		defer func() { cancel(); <-ran }()
		benchHandshakes(b, transport.ServerConfig(src), client)
	})
}
