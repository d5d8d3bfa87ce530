package transport

import (
	"crypto/tls"
	"slices"

	"google.golang.org/grpc/credentials"
)

// ALPNH2 is the ALPN protocol of gRPC (HTTP/2 over TLS). Every Sepal
// listener offers it first.
const ALPNH2 = "h2"

// serverCipherSuites are the TLS 1.2 suites of Mozilla's "intermediate"
// profile: ECDHE key exchange with AEAD ciphers only, no CBC, no static RSA.
// TLS 1.3 suites are not configurable in crypto/tls and are all AEAD.
var serverCipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// serverCurves are the key exchange groups offered: the hybrid
// post-quantum X25519MLKEM768 (Go's default), X25519, P-256 and P-384.
var serverCurves = []tls.CurveID{
	tls.X25519MLKEM768,
	tls.X25519,
	tls.CurveP256,
	tls.CurveP384,
}

// ServerConfig returns the TLS configuration of a Sepal listener around src.
//
// The configuration is meant to be built once per listener and never
// modified: only the certificate behind src.GetCertificate changes, which is
// called on every handshake. Policy: TLS 1.2 minimum (1.3 preferred by
// crypto/tls); for TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305;
// key exchange X25519MLKEM768, X25519, P-256 or P-384; session tickets on;
// no client certificates requested; ALPN "h2", followed by the protocols of
// src when it implements ALPNSource (for example "acme-tls/1"), read once
// here. A source that implements Runner is not started: the caller runs it.
//
// ServerConfig does not block and panics if src is nil.
func ServerConfig(src CertSource) *tls.Config {
	if src == nil {
		panic("ServerConfig called with a nil CertSource")
	}
	return &tls.Config{
		MinVersion:       tls.VersionTLS12,
		CipherSuites:     slices.Clone(serverCipherSuites),
		CurvePreferences: slices.Clone(serverCurves),
		NextProtos:       serverProtos(src),
		GetCertificate:   observedGetCertificate(src),
		ClientAuth:       tls.NoClientCert,
	}
}

// serverProtos is "h2" plus the protocols src asks for, without duplicates
// or empty names, in the order given.
func serverProtos(src CertSource) []string {
	protos := []string{ALPNH2}
	a, ok := src.(ALPNSource)
	if !ok {
		return protos
	}
	for _, p := range a.NextProtos() {
		if p != "" && !slices.Contains(protos, p) {
			protos = append(protos, p)
		}
	}
	return protos
}

// ServerCredentials returns gRPC transport credentials serving
// ServerConfig(src): pass them to grpc.Creds. grpc-go keeps our cipher
// suites and MinVersion (it fills only unset fields) and, as it enforces ALPN,
// refuses clients that negotiate no protocol at all. A handshake that
// negotiates another protocol of the source, such as "acme-tls/1" from an
// ACME validation server, completes with the certificate src returns for
// it; the connection then ends when the peer closes it, as it does not
// speak HTTP/2.
func ServerCredentials(src CertSource) credentials.TransportCredentials {
	return credentials.NewTLS(ServerConfig(src))
}
