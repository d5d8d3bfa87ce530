package acme_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"log/slog"
	"os"
	"slices"

	"github.com/sepal-fl/sepal/acme"
)

func ExampleResolveCA() {
	for _, ca := range []string{"", "staging", "https://127.0.0.1:14000/dir"} {
		url, err := acme.ResolveCA(ca)
		fmt.Println(url, err)
	}
	// Output:
	// https://acme-v02.api.letsencrypt.org/directory <nil>
	// https://acme-staging-v02.api.letsencrypt.org/directory <nil>
	// https://127.0.0.1:14000/dir <nil>
}

// A server that obtains its certificate from Let's Encrypt with TLS-ALPN-01
// on its own port 443. New returns once the certificate is in (or loaded
// from storage); Run keeps renewal going until the context ends.
func ExampleNew() {
	ctx := context.Background()
	src, err := acme.New(ctx, acme.Options{
		Domains:        []string{"superlink.example.org"},
		Email:          "ops@example.org",
		CA:             "staging", // Let's Encrypt staging while testing
		TLSALPNAddress: ":443",    // where the server below listens
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, nil)),
	})
	if err != nil {
		log.Fatal(err) // says what to check: DNS, port 443, rate limits
	}
	go src.Run(ctx)
	cfg := &tls.Config{
		GetCertificate: src.GetCertificate,
		NextProtos:     slices.Concat([]string{"h2"}, src.NextProtos()), // h2 and acme-tls/1
	}
	ln, err := tls.Listen("tcp", ":443", cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
}
