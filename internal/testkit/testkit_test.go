package testkit

import (
	"context"
	"crypto/x509"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/selfsigned"
)

func TestPKI(t *testing.T) {
	p := NewPKI(t, selfsigned.CAOptions{}, selfsigned.ServerOptions{})
	pem, err := os.ReadFile(p.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", p.CAFile)
	}
	named := p.Issue(t, selfsigned.ServerOptions{Hosts: []string{"superlink.sepal.test"}, NoDefaultHosts: true})
	if named.CA != p.CA || named.CAFile != p.CAFile || named.Pair.Leaf.SerialNumber.Cmp(p.Pair.Leaf.SerialNumber) == 0 {
		t.Fatalf("Issue did not reuse the CA for a new certificate")
	}
	for _, c := range []struct {
		p    *PKI
		name string
	}{{p, "localhost"}, {named, "superlink.sepal.test"}} {
		cert, _ := c.p.Source().GetCertificate(nil)
		if cert != c.p.Cert || cert.Leaf == nil {
			t.Fatalf("Source served %v, want Cert with its Leaf", cert)
		}
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: c.name}); err != nil {
			t.Errorf("certificate for %s does not verify against %s: %v", c.name, p.CAFile, err)
		}
	}
	f := p.WriteFiles(t, t.TempDir()+"/certificates")
	if _, err := certfile.Check(f.CA, f.Cert, f.Key, time.Now()); err != nil {
		t.Fatalf("written files do not pass Check: %v", err)
	}
	if st, err := os.Stat(f.Key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, want mode 0600", f.Key, err)
	}
}

type fakeServer struct {
	fleet   net.Addr
	stopped chan struct{}
}

func (s *fakeServer) serve(ctx context.Context, fleet, driver net.Listener) error {
	s.fleet = fleet.Addr()
	<-ctx.Done()
	fleet.Close()
	driver.Close()
	close(s.stopped)
	return nil
}

func TestServe(t *testing.T) {
	s := &fakeServer{stopped: make(chan struct{})}
	t.Run("serve", func(t *testing.T) {
		l := Serve(t, s.serve)
		for _, a := range []string{l.Fleet, l.Driver} {
			c, err := net.Dial("tcp", a)
			if err != nil {
				t.Fatalf("%s does not accept: %v", a, err)
			}
			c.Close()
		}
		if l.Fleet == l.Driver {
			t.Fatalf("one address for both APIs: %s", l.Fleet)
		}
	})
	select {
	case <-s.stopped:
	default:
		t.Fatal("Serve's context did not end with the test")
	}
	if s.fleet.String() == "" {
		t.Fatal("no Fleet listener")
	}
}

func TestSyncBuffer(t *testing.T) {
	var b SyncBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				b.Write([]byte("x"))
				_ = b.String()
			}
		}()
	}
	wg.Wait()
	if n := len(b.String()); n != 800 {
		t.Fatalf("%d bytes, want 800", n)
	}
}

func TestHealthCheck(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(l)
	defer s.Stop()
	if st, err := HealthCheck(t, l.Addr().String(), insecure.NewCredentials()); err != nil || st != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("HealthCheck = %v, %v; want SERVING", st, err)
	}
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	dead.Close()
	if _, err := HealthCheck(t, dead.Addr().String(), insecure.NewCredentials()); err == nil {
		t.Fatal("HealthCheck of a closed port succeeded")
	}
}
