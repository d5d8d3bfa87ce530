package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// ProbeTimeout bounds a Probe whose context has no deadline.
const ProbeTimeout = 10 * time.Second

// Probe connects to addr once, the way a client with options o would, and
// returns nil when that works or the *Error (see Explain) that says why not.
//
// With TLS it completes a real handshake with ClientConfig(o), so the
// certificate is verified exactly as gRPC would verify it, then sends the
// HTTP/2 preface and waits for the server's first frame (a TLS 1.3 server
// refuses a client certificate only after the client's side of the
// handshake is done: KindClientCertRefused), and closes the connection. With o.Insecure it sends a TLS ClientHello and reports
// KindTLSPeer when the server answers it with TLS (a handshake or a TLS
// alert); any other answer, such as an HTTP/2 frame or a closed
// connection, counts as a plaintext server and returns nil. A dial that
// fails or a peer that stays silent until ctx ends is KindNetwork. Probe blocks until the check ends, ctx is done or
// ProbeTimeout passes when ctx has no deadline. It is safe for concurrent use.
func Probe(ctx context.Context, addr string, o ClientOptions) error {
	if err := o.validate(); err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ProbeTimeout)
		defer cancel()
	}
	if o.Insecure {
		return probePlaintext(ctx, addr, o)
	}
	cfg, err := ClientConfig(o)
	if err != nil {
		return err
	}
	d := &tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Explain(err, addr, o)
	}
	defer conn.Close()
	return firstFrame(ctx, conn.(*tls.Conn), addr, o)
}

// h2Preface is the HTTP/2 client connection preface followed by an empty
// SETTINGS frame (RFC 9113, 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// firstFrame waits for the server's first HTTP/2 frame after a completed
// handshake. With TLS 1.3 a server checks the client's certificate after the
// client has finished its handshake, so a refusal (or the server's demand
// for a certificate this client lacks) arrives only as an alert on the first
// read; a gRPC server sends its SETTINGS at once otherwise. A read that
// ends without an alert (a close, or ctx's end) counts as success: the
// handshake is what Probe checks.
func firstFrame(ctx context.Context, conn *tls.Conn, addr string, o ClientOptions) error {
	if conn.ConnectionState().NegotiatedProtocol != ALPNH2 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte(h2Preface)); err != nil {
		return alertOnly(err, addr, o)
	}
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		return alertOnly(err, addr, o)
	}
	return nil
}

// alertOnly explains err when it is a TLS alert from the server, and
// returns nil for anything else.
func alertOnly(err error, addr string, o ClientOptions) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return Explain(err, addr, o)
	}
	return nil
}

// probePlaintext checks that the server at addr does not answer TLS.
func probePlaintext(ctx context.Context, addr string, o ClientOptions) error {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Explain(err, addr, o)
	}
	defer raw.Close()
	host, _ := splitAddr(addr)
	conn := tls.Client(raw, &tls.Config{
		ServerName:         host,
		NextProtos:         []string{ALPNH2},
		InsecureSkipVerify: true, // only asks whether the peer speaks TLS; nothing is sent after
	})
	err = conn.HandshakeContext(ctx)
	if err == nil {
		e := tlsPeer(addr)
		e.Addr = addr
		return e
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		// A TLS alert: the peer parsed our ClientHello.
		e := tlsPeer(addr)
		e.Addr, e.err = addr, err
		return e
	}
	if ctx.Err() != nil {
		return Explain(ctx.Err(), addr, o)
	}
	return nil
}
