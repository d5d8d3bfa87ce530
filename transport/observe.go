package transport

// Server-side handshake observation, for metrics: a wrapper around gRPC
// transport credentials that reports the outcome of every TLS handshake,
// with failures sorted into a fixed set of causes. transport knows nothing
// of Prometheus; the caller turns the events into counters.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
)

// HandshakeCause says why a server-side TLS handshake failed. The set is
// fixed (see HandshakeCauses), so it can be a metric label: nothing a peer
// sends ends up in it.
type HandshakeCause string

// The causes of a failed server-side handshake.
const (
	// CauseVersion: the client offered only TLS versions the server refuses
	// (below 1.2).
	CauseVersion HandshakeCause = "protocol_version"
	// CauseCipher: no cipher suite or key exchange group in common.
	CauseCipher HandshakeCause = "no_shared_cipher"
	// CauseALPN: the client offered no application protocol the server
	// speaks (gRPC needs h2), or none at all.
	CauseALPN HandshakeCause = "no_application_protocol"
	// CausePlaintext: the first bytes were not TLS (a plaintext gRPC or HTTP
	// client on a TLS port).
	CausePlaintext HandshakeCause = "plaintext"
	// CauseServerName: the client asked for a server name that the
	// certificate does not hold and then refused the certificate, or an
	// ACME validation asked for a name that is not managed here.
	CauseServerName HandshakeCause = "bad_server_name"
	// CauseNotReady: the certificate source has no certificate yet (an ACME
	// SuperLink still obtaining its first one).
	CauseNotReady HandshakeCause = "not_ready"
	// CauseRejectedByClient: the client refused the server's certificate
	// (unknown authority, expired) for a name the certificate holds.
	CauseRejectedByClient HandshakeCause = "client_rejected_certificate"
	// CauseNoClientCert: mutual TLS is required and the client sent no
	// certificate.
	CauseNoClientCert HandshakeCause = "client_certificate_missing"
	// CauseClientUnknownCA: the client certificate does not chain to the
	// client CA.
	CauseClientUnknownCA HandshakeCause = "client_certificate_unknown_ca"
	// CauseClientRevoked: the client certificate is on the CRL.
	CauseClientRevoked HandshakeCause = "client_certificate_revoked"
	// CauseBadClientCert: the client certificate was refused for another
	// reason (expired, the other role, no Sepal identity, not for TLS
	// clients).
	CauseBadClientCert HandshakeCause = "client_certificate_invalid"
	// CauseClosed: the peer closed or reset the connection, or the handshake
	// timed out, before it was complete.
	CauseClosed HandshakeCause = "closed"
	// CauseOther is any other failure.
	CauseOther HandshakeCause = "other"
)

// HandshakeCauses lists every HandshakeCause, for metrics that start each
// one at zero.
var HandshakeCauses = []HandshakeCause{
	CauseVersion, CauseCipher, CauseALPN, CausePlaintext, CauseServerName, CauseNotReady,
	CauseRejectedByClient, CauseNoClientCert, CauseClientUnknownCA, CauseClientRevoked, CauseBadClientCert,
	CauseClosed, CauseOther,
}

// HandshakeEvent is the outcome of one server-side handshake.
type HandshakeEvent struct {
	// Local is the address the connection came in on (which listener).
	Local net.Addr
	// Err is nil when the handshake succeeded, else the error of the
	// handshake (never shown to metrics: it may hold peer-controlled text).
	Err error
	// Cause is "" on success, else why it failed.
	Cause HandshakeCause
	// Duration is how long the handshake took.
	Duration time.Duration
}

// ObserveHandshakes wraps gRPC server credentials so that observe is called
// once per server-side handshake, after it ended, with its outcome. The
// handshake itself is unchanged: the same connection, AuthInfo and error
// are returned. observe runs on the connection's goroutine before gRPC sees
// the result: it must be quick and safe for concurrent use.
//
// Causes that depend on the ClientHello (a server name the certificate
// does not hold, an ACME validation) are found when creds were built by
// ServerCredentials or from ServerConfig.
func ObserveHandshakes(creds credentials.TransportCredentials, observe func(HandshakeEvent)) credentials.TransportCredentials {
	if creds == nil || observe == nil {
		return creds
	}
	return &observedCreds{TransportCredentials: creds, observe: observe}
}

type observedCreds struct {
	credentials.TransportCredentials
	observe func(HandshakeEvent)
}

func (c *observedCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	began := time.Now()
	oc := &observedConn{Conn: raw}
	conn, info, err := c.TransportCredentials.ServerHandshake(oc)
	ev := HandshakeEvent{Local: raw.LocalAddr(), Err: err, Duration: time.Since(began)}
	if errors.Is(err, errValidationClosed) {
		ev.Err = nil // an ACME validation: its handshake completed
	}
	if ev.Err != nil {
		ev.Cause = classifyServer(err, &oc.hello)
	}
	c.observe(ev)
	return conn, info, err
}

func (c *observedCreds) Clone() credentials.TransportCredentials {
	return &observedCreds{TransportCredentials: c.TransportCredentials.Clone(), observe: c.observe}
}

// observedConn carries what GetCertificate saw of the ClientHello to the
// classification of the handshake's outcome.
type observedConn struct {
	net.Conn
	hello helloNote
}

// SyscallConn lets gRPC reach the socket under the wrapper, as it would
// without it.
func (c *observedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("the connection has no socket")
}

// helloNote is written by the GetCertificate of ServerConfig during the
// handshake, on the handshake's goroutine, and read after it.
type helloNote struct {
	seen      bool
	challenge bool  // an ACME TLS-ALPN-01 validation (acme-tls/1 only)
	mismatch  bool  // SNI sent, and the certificate returned does not hold it
	certErr   error // GetCertificate failed
}

// noteHello records the hello and the result of GetCertificate when the
// connection is one that ObserveHandshakes watches; otherwise it costs one
// type assertion.
func noteHello(h *tls.ClientHelloInfo, cert *tls.Certificate, err error) {
	oc, ok := h.Conn.(*observedConn)
	if !ok {
		return
	}
	n := &oc.hello
	n.seen = true
	n.challenge = acmeChallenge(h.SupportedProtos)
	n.certErr = err
	if err == nil && cert != nil && h.ServerName != "" {
		leaf := cert.Leaf
		if leaf == nil && len(cert.Certificate) > 0 {
			leaf, _ = x509.ParseCertificate(cert.Certificate[0])
		}
		n.mismatch = leaf != nil && leaf.VerifyHostname(h.ServerName) != nil
	}
}

// observedGetCertificate is the GetCertificate of ServerConfig: src's, plus
// a note for ObserveHandshakes.
func observedGetCertificate(src CertSource) func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := src.GetCertificate(h)
		noteHello(h, c, err)
		return c, err
	}
}

// classifyServer returns why a server-side handshake failed with err,
// given what GetCertificate saw of the ClientHello. A certificate source's
// error with a method Temporary() that returns true means it has no
// certificate yet (CauseNotReady).
func classifyServer(err error, n *helloNote) HandshakeCause {
	if err == nil {
		return ""
	}
	if n.certErr != nil {
		var t interface{ Temporary() bool }
		switch {
		case errors.As(n.certErr, &t) && t.Temporary():
			return CauseNotReady
		case n.challenge:
			return CauseServerName
		}
		return CauseOther
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		return CausePlaintext
	}
	var ce *ClientCertError
	if errors.As(err, &ce) {
		switch ce.Cause {
		case CauseNoCertificate:
			return CauseNoClientCert
		case CauseUnknownCA:
			return CauseClientUnknownCA
		case CauseRevoked:
			return CauseClientRevoked
		}
		return CauseBadClientCert
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		var ua x509.UnknownAuthorityError
		if errors.As(cv.Err, &ua) {
			return CauseClientUnknownCA
		}
		return CauseBadClientCert
	}
	if isTimeout(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE) {
		return CauseClosed
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "client offered only unsupported versions"),
		strings.Contains(s, "unsupported versions"),
		strings.Contains(s, "protocol version not supported"):
		return CauseVersion
	case strings.Contains(s, "no cipher suite supported by both"),
		strings.Contains(s, "no ECDHE curve supported by both"),
		strings.Contains(s, "no mutually supported"),
		strings.Contains(s, "handshake failure") && strings.Contains(s, "remote error"):
		return CauseCipher
	case strings.Contains(s, "unsupported application protocols"),
		strings.Contains(s, "missing selected ALPN property"),
		strings.Contains(s, "no application protocol"):
		return CauseALPN
	case strings.Contains(s, "client didn't provide a certificate"),
		strings.Contains(s, "certificate required"):
		return CauseNoClientCert
	case strings.HasPrefix(s, "remote error: tls: bad certificate"),
		strings.HasPrefix(s, "remote error: tls: unknown certificate authority"),
		strings.HasPrefix(s, "remote error: tls: certificate expired"),
		strings.HasPrefix(s, "remote error: tls: unsupported certificate"),
		strings.HasPrefix(s, "remote error: tls: certificate unknown"),
		strings.HasPrefix(s, "remote error: tls: access denied"):
		if n.mismatch {
			return CauseServerName
		}
		return CauseRejectedByClient
	case strings.Contains(s, "client certificate"), strings.Contains(s, "x509:"):
		return CauseBadClientCert
	case strings.Contains(s, "connection reset"), strings.Contains(s, "broken pipe"):
		return CauseClosed
	}
	if n.mismatch {
		return CauseServerName
	}
	return CauseOther
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
