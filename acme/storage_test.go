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
	switch client {
	case ClientCertmagic:
		return seedCertmagicStorage(t, &certmagic.FileStorage{Path: storage}, domain)
	case ClientAutocert:
		pair := newTestPair(t, domain, time.Time{})
		dir := filepath.Join(storage, "autocert")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, domain), append(append([]byte{}, pair.KeyPEM...), pair.CertPEM...), 0o600); err != nil {
			t.Fatal(err)
		}
		return pair
	}
	t.Fatalf("unknown client %q", client)
	return nil
}

// newTestPair issues a certificate for domain from a new CA, expiring at
// notAfter (zero: the selfsigned default).
func newTestPair(t testing.TB, domain string, notAfter time.Time) *selfsigned.Pair {
	t.Helper()
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.IssueServer(selfsigned.ServerOptions{Hosts: []string{domain}, NoDefaultHosts: true, NotAfter: notAfter})
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

// seedCertmagicStorage writes a new valid certificate for domain into a
// certmagic storage, in certmagic's layout for the issuer of the CA
// unreachableCA, and returns it.
func seedCertmagicStorage(t testing.TB, st certmagic.Storage, domain string) *selfsigned.Pair {
	t.Helper()
	pair := newTestPair(t, domain, time.Time{})
	storeCertmagicPair(t, st, domain, pair, true)
	return pair
}

// storeCertmagicPair stores pair as the certificate of domain in st, the
// certificate first, as certmagic writes a renewal; with key false, only
// the certificate (a renewal caught half-written).
func storeCertmagicPair(t testing.TB, st certmagic.Storage, domain string, pair *selfsigned.Pair, key bool) {
	t.Helper()
	issuer := (&certmagic.ACMEIssuer{CA: unreachableCA}).IssuerKey()
	ctx := context.Background()
	kv := [][2]string{{certmagic.StorageKeys.SiteCert(issuer, domain), string(pair.CertPEM)}}
	if key {
		kv = append(kv, [2]string{certmagic.StorageKeys.SitePrivateKey(issuer, domain), string(pair.KeyPEM)},
			[2]string{certmagic.StorageKeys.SiteMeta(issuer, domain), `{"sans":["` + domain + `"]}`})
	}
	for _, e := range kv {
		if err := st.Store(ctx, e[0], []byte(e[1])); err != nil {
			t.Fatal(err)
		}
	}
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
	checkServesStored(t, &certmagic.FileStorage{Path: shared}, folder, "shared.test", pair)
	if entries, _ := os.ReadDir(folder); len(entries) != 0 {
		t.Errorf("the folder was used beside CertmagicStorage: %v", entries)
	}
}

// checkServesStored starts a Source for domain on storage st (with folder
// as Storage, and a CA that cannot be reached) and checks that it serves
// pair, which st holds.
func checkServesStored(t *testing.T, st certmagic.Storage, folder, domain string, pair *selfsigned.Pair) {
	t.Helper()
	s, err := New(context.Background(), Options{Domains: []string{domain}, CA: unreachableCA,
		Storage: folder, CertmagicStorage: st, TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cert, err := s.GetCertificate(&tls.ClientHelloInfo{ServerName: domain})
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.SerialNumber.Cmp(pair.Leaf.SerialNumber) != 0 {
		t.Errorf("served serial %x, want %x from the given storage", cert.Leaf.SerialNumber, pair.Leaf.SerialNumber)
	}
}
