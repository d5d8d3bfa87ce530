// Package transport secures Sepal's gRPC servers and clients with TLS
// around a CertSource of any origin (certfile and acme supply them without
// importing it), and classifies TLS failures with the facts a caller needs
// to say what to do.
package transport

import (
	"context"
	"crypto/tls"
)

// CertSource supplies the serving certificate for each TLS handshake.
// GetCertificate is called on every handshake: it must not block on I/O,
// must be safe for concurrent use, and must not modify a certificate it returned.
// An error that means the source has no certificate yet (an ACME source
// still obtaining its first) should have a method Temporary() bool that
// returns true: ObserveHandshakes then counts the handshake as CauseNotReady.
type CertSource interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// Runner is an optional ability of a CertSource: work that runs in the
// background (reloading files, renewing certificates) until ctx ends.
// Run returns nil when ctx ends and an error only when it cannot go on.
type Runner interface {
	Run(ctx context.Context) error
}

// ALPNSource is an optional ability of a CertSource: ALPN protocols the
// listener must offer beside "h2", such as "acme-tls/1" for the ACME
// TLS-ALPN-01 challenge. The source's GetCertificate answers handshakes
// that negotiate them.
type ALPNSource interface {
	NextProtos() []string
}
