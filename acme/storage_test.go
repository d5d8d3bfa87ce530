package acme

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/sepal-fl/sepal/selfsigned"
)

// unreachableCA is a directory URL where nothing listens.
const unreachableCA = "https://127.0.0.1:1/dir"

// seedStorage writes a valid certificate for domain into storage in the
// client's own layout, as an earlier run would have left it.
func seedStorage(t testing.TB, client, storage, domain string) *selfsigned.Pair {
	t.Helper()
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueServer(selfsigned.ServerOptions{Hosts: []string{domain}, NoDefaultHosts: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	switch client {
	case ClientCertmagic:
		o, err := Options{Domains: []string{domain}, CA: unreachableCA, Storage: storage}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		b, err := newCertmagic(o, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.stop()
		cb := b.(*certmagicBackend)
		key := cb.iss.IssuerKey()
		for k, v := range map[string][]byte{
			certmagic.StorageKeys.SiteCert(key, domain):       pair.CertPEM,
			certmagic.StorageKeys.SitePrivateKey(key, domain): pair.KeyPEM,
			certmagic.StorageKeys.SiteMeta(key, domain):       []byte(`{"sans":["` + domain + `"]}`),
		} {
			if err := cb.cfg.Storage.Store(ctx, k, v); err != nil {
				t.Fatal(err)
			}
		}
	case ClientAutocert:
		dir := filepath.Join(storage, "autocert")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, domain), append(append([]byte{}, pair.KeyPEM...), pair.CertPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return pair
}

// A valid certificate in storage is served when the CA cannot be reached,
// with both clients, and GetCertificate serves it from memory.
func TestStoredCertificateWithoutCA(t *testing.T) {
	for _, client := range []string{ClientCertmagic, ClientAutocert} {
		t.Run(client, func(t *testing.T) {
			storage := t.TempDir()
			pair := seedStorage(t, client, storage, "stored.test")
			s, err := New(context.Background(), Options{Domains: []string{"stored.test"}, CA: unreachableCA,
				Storage: storage, Client: client, TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			cert, err := s.GetCertificate(&tls.ClientHelloInfo{})
			if err != nil {
				t.Fatal(err)
			}
			if cert.Leaf == nil || cert.Leaf.SerialNumber.Cmp(pair.Leaf.SerialNumber) != 0 {
				t.Fatalf("served %v, want the stored serial %x", cert.Leaf, pair.Leaf.SerialNumber)
			}
		})
	}
}

// BenchmarkGetCertificate measures the handshake hot path of each client
// with a certificate loaded from storage (no CA involved).
func BenchmarkGetCertificate(b *testing.B) {
	for _, client := range []string{ClientCertmagic, ClientAutocert} {
		b.Run(client, func(b *testing.B) {
			storage := b.TempDir()
			seedStorage(b, client, storage, "bench.test")
			s, err := New(context.Background(), Options{Domains: []string{"bench.test"}, CA: unreachableCA,
				Storage: storage, Client: client, TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 10 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			hello := &tls.ClientHelloInfo{ServerName: "bench.test", SupportedProtos: []string{"h2"}}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := s.GetCertificate(hello); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// CertmagicStorage replaces the folder: a certificate that only the given
// certmagic.Storage holds is loaded from it, and nothing is read from (or
// written to) the folder.
func TestCertmagicStorageReplacesFolder(t *testing.T) {
	shared := t.TempDir()
	pair := seedStorage(t, ClientCertmagic, shared, "shared.test")
	folder := t.TempDir()
	s, err := New(context.Background(), Options{Domains: []string{"shared.test"}, CA: unreachableCA,
		Storage: folder, CertmagicStorage: &certmagic.FileStorage{Path: shared},
		TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cert, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: "shared.test"})
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.SerialNumber.Cmp(pair.Leaf.SerialNumber) != 0 {
		t.Fatalf("served serial %x, want %x from the given storage", cert.Leaf.SerialNumber, pair.Leaf.SerialNumber)
	}
	if entries, _ := os.ReadDir(folder); len(entries) != 0 {
		t.Errorf("the folder was used beside CertmagicStorage: %v", entries)
	}
}
