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
// certificate is verified exactly as gRPC would verify it, and closes the
// connection. With o.Insecure it sends a TLS ClientHello and reports
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
	return conn.Close()
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
		return &Error{Kind: KindTLSPeer, Addr: addr, msg: tlsPeer(addr).msg}
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		// A TLS alert: the peer parsed our ClientHello.
		return &Error{Kind: KindTLSPeer, Addr: addr, msg: tlsPeer(addr).msg, err: err}
	}
	if ctx.Err() != nil {
		return Explain(ctx.Err(), addr, o)
	}
	return nil
}
