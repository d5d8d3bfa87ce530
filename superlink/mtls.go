package superlink

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// identified is the ability of a connection's AuthInfo whose client
// certificate was verified (transport.ClientInfo): its identity, and a
// check of the certificate against the CAs and CRL as they are now.
type identified interface {
	ClientIdentity() string
	Recheck() error
}

// peerIdentity is the client-certificate identity of the caller
// (sepal:ROLE:NAME), "" when its connection has none (no mutual TLS): what
// the state ties a node id to.
func peerIdentity(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		if c, ok := p.AuthInfo.(identified); ok {
			return c.ClientIdentity()
		}
	}
	return ""
}

// recheckInterceptor refuses, with Unauthenticated, every call on a
// connection whose client certificate no longer passes (revoked, or its CA
// dropped, since the handshake), so that a revocation takes effect on open
// connections without a restart, and every call on one whose certificate
// is of the other API's role (admitted at the handshake to be told so in
// words). Connections without a client certificate pass.
func recheckInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := recheck(ctx); err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// recheck returns Unauthenticated, with the refusal as its client reads it,
// when the caller's client certificate no longer passes; nil while it
// does, or without one.
func recheck(ctx context.Context) error {
	if p, ok := peer.FromContext(ctx); ok {
		if c, ok := p.AuthInfo.(identified); ok {
			if err := c.Recheck(); err != nil {
				msg := err.Error()
				var pm interface{ PeerMessage() string }
				if errors.As(err, &pm) {
					msg = pm.PeerMessage()
				}
				return status.Error(codes.Unauthenticated, msg)
			}
		}
	}
	return nil
}
