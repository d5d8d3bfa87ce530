package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// ClientCASource supplies what client certificates are checked against:
// the CAs they must chain to and the CRL of revoked ones (nil: none).
// ClientCAs is called on every handshake and on every call of a mutual TLS
// connection: it must not block on I/O, must be safe for concurrent use,
// must not modify what it returned, and must return the same pointers
// until what they hold changes (a reload returns new ones). The CRL applies
// to the certificates of its issuer. certfile.ClientCAFile is one.
type ClientCASource interface {
	ClientCAs() (*x509.CertPool, *x509.RevocationList)
}

// ClientAuth makes a listener require client certificates (mutual TLS).
type ClientAuth struct {
	// CAs supplies the CAs and the CRL. Required.
	CAs ClientCASource
	// Role is the role a certificate's identity must hold: RoleNode on
	// the Fleet API, RoleServerApp on the Driver API. Required.
	Role string
	// Refused, when not nil, is called once for every connection refused
	// for its client certificate (at the handshake, or by Recheck), to
	// log or count it. It runs on the handshake's goroutine and must not
	// block. Default nil.
	Refused func(*ClientCertError)
	// Now is the clock of Recheck; nil means time.Now. Handshakes use the
	// TLS stack's clock.
	Now func() time.Time
}

// ClientCertCause is why a client certificate was refused. Its values are
// short snake_case words, fit for a log attribute or a metric label.
type ClientCertCause string

// The causes a ClientCertError names.
const (
	// CauseNoCertificate: the client presented none (a Flower 1.8.0
	// SuperNode cannot present one).
	CauseNoCertificate ClientCertCause = "no_certificate"
	// CauseUnknownCA: it does not chain to a CA of the client CA file.
	CauseUnknownCA ClientCertCause = "unknown_ca"
	// CauseExpired: it has expired, or is not valid yet.
	CauseExpired ClientCertCause = "expired"
	// CauseRevoked: the CRL lists it.
	CauseRevoked ClientCertCause = "revoked"
	// CauseWrongRole: its identity is of another role (a ServerApp's
	// certificate on the Fleet API, a node's on the Driver API).
	CauseWrongRole ClientCertCause = "wrong_role"
	// CauseNoIdentity: it holds no valid Sepal identity (sepal:ROLE:NAME).
	CauseNoIdentity ClientCertCause = "no_identity"
	// CauseBadCertificate: another reason, such as a certificate that is
	// not for TLS clients.
	CauseBadCertificate ClientCertCause = "bad_certificate"
)

// ClientCertError is a client certificate refused by a listener with
// ClientAuth: at the handshake (the error the handshake returns, and what
// ClientAuth.Refused receives), or later by ClientInfo.Recheck once a
// reload revoked it or dropped its CA. Its message is one line naming the
// cause, the certificate and the fix; errors.Unwrap gives the underlying
// error, if any.
type ClientCertError struct {
	Cause ClientCertCause
	// Role is the role the listener admits.
	Role string
	// Remote is the client's address, when known.
	Remote string
	// Identity is the certificate's, when it holds a valid one.
	Identity Identity
	// Subject, Issuer and Serial describe the certificate, when there is
	// one (Serial as openssl x509 -serial prints it).
	Subject, Issuer, Serial string
	// Err is the underlying error: the TLS stack's, or x509's.
	Err error
}

func (e *ClientCertError) Unwrap() error { return e.Err }

// Error is one line: "client certificate refused: ", what was refused and
// why (Problem), and what to do about it.
func (e *ClientCertError) Error() string {
	var fix string
	switch e.Cause {
	case CauseNoCertificate:
		fix = "give the client one issued by the client CA"
	case CauseUnknownCA:
		fix = "issue it from a CA of the client CA file"
	case CauseExpired:
		fix = "issue a new one, or check the clocks"
	case CauseRevoked:
		fix = "its holder needs a new certificate to connect again"
	case CauseWrongRole, CauseNoIdentity:
		fix = "issue one with a " + RoleName(e.Role) + " identity"
	default:
		fix = "give the client a " + RoleName(e.Role) + " certificate of the client CA"
	}
	return e.Problem() + ": " + fix
}

// Problem is Error without the fix: "client certificate refused: ", which
// certificate and why, for a program that words the fix for its own users
// (a command names the one that issues client certificates).
func (e *ClientCertError) Problem() string {
	cert := "the client certificate"
	switch {
	case e.Identity.Name != "":
		cert = fmt.Sprintf("the client certificate of %s (serial %s)", e.Identity, e.Serial)
	case e.Subject != "":
		cert = fmt.Sprintf("the client certificate %q (serial %s)", e.Subject, e.Serial)
	}
	from := ""
	if e.Remote != "" {
		from = " from " + e.Remote
	}
	var why string
	switch e.Cause {
	case CauseNoCertificate:
		why = fmt.Sprintf("a client%s presented none; this API admits only %s certificates", from, RoleName(e.Role))
	case CauseUnknownCA:
		why = fmt.Sprintf("%s%s is not issued by a CA of the client CA file (issuer %q)", cert, from, e.Issuer)
	case CauseExpired:
		why = fmt.Sprintf("%s%s has expired or is not valid yet (%v)", cert, from, e.Err)
	case CauseRevoked:
		why = fmt.Sprintf("%s%s is revoked (listed in the CRL)", cert, from)
	case CauseWrongRole:
		why = fmt.Sprintf("%s%s is a %s certificate; this API admits only %s certificates", cert, from, RoleName(e.Identity.Role), RoleName(e.Role))
	case CauseNoIdentity:
		why = fmt.Sprintf("%s%s holds no Sepal identity (%v)", cert, from, e.Err)
	default:
		why = fmt.Sprintf("%s%s was refused: %v", cert, from, e.Err)
	}
	return strings.Map(printable, "client certificate refused: "+why)
}

// PeerMessage is the refusal as its client reads it, when ClientInfo.Recheck
// refused a connection that passed its handshake: which certificate, why,
// and that the connection is refused from now on.
func (e *ClientCertError) PeerMessage() string {
	cert := "this connection's client certificate"
	if e.Identity.Name != "" {
		cert = fmt.Sprintf("this connection's client certificate %s (serial %s)", e.Identity, e.Serial)
	}
	if e.Cause == CauseWrongRole {
		return strings.Map(printable, fmt.Sprintf("client certificate refused: %s is a %s certificate, and this is the SuperLink's %s, which admits only %s certificates: a %s connects to the %s",
			cert, RoleName(e.Identity.Role), apiOf(e.Role), RoleName(e.Role), clientOf(e.Identity.Role), apiOf(e.Identity.Role)))
	}
	why := map[ClientCertCause]string{
		CauseRevoked:   "has been revoked",
		CauseUnknownCA: "is no longer issued by a CA the server trusts (its client CA file changed)",
		CauseExpired:   "has expired",
	}[e.Cause]
	if why == "" {
		why = "is no longer accepted (" + string(e.Cause) + ")"
	}
	return strings.Map(printable, fmt.Sprintf("client certificate refused: %s %s since it connected; every call on it is refused: ask the SuperLink's operator for a new certificate", cert, why))
}

// ClientAuthCredentials returns gRPC transport credentials that serve
// ServerConfig(src) and require a client certificate that a: chains to a
// CA of a.CAs (as it is at each handshake), is valid now, is not listed in
// its CRL, and holds a Sepal identity. Anything else ends the handshake
// with a TLS alert (certificate_required with TLS 1.3 when there is none,
// unknown_ca, certificate_expired, or bad_certificate for a revoked
// certificate) and a *ClientCertError, which is passed to a.Refused.
//
// A certificate that passes all of that but holds the identity of another
// role than a.Role (a node's certificate on the Driver API, usually a
// client pointed at the wrong port) completes its handshake, so that its
// client can be told why in words: a TLS alert could only say
// bad_certificate, which is also what a revoked certificate gets. Its
// refusal (CauseWrongRole) is passed to a.Refused at the handshake, and
// ClientInfo.Recheck returns it on every call: the server must call
// Recheck before it serves any call (superlink does, in an interceptor)
// and answer with the refusal's PeerMessage.
//
// The configuration is built once; each change of what a.CAs returns builds
// one more for the handshakes that follow, so a reload of the CA or CRL
// files takes effect at the next handshake without a restart. Session
// tickets are off, so every handshake verifies the certificate against the
// current CAs and CRL. When src offers ACME's acme-tls/1, a handshake
// that offers exactly that protocol (a CA validating the domain, which has
// no client certificate) completes without one and the connection is
// then closed: no call is ever served
// without a verified client certificate.
//
// The AuthInfo of each connection is a *ClientInfo: its Identity, and
// Recheck to find a certificate revoked after the handshake.
// ClientAuthCredentials panics if src or a.CAs is nil or a.Role is not a
// role; it does not block.
func ClientAuthCredentials(src CertSource, a ClientAuth) credentials.TransportCredentials {
	st := newClientAuthState(src, a)
	return &clientAuthCreds{TransportCredentials: credentials.NewTLS(st.outer), st: st}
}

// ClientAuthConfig is the TLS configuration of ClientAuthCredentials, for
// a listener that is not gRPC (tests, probes). Its handshakes verify the
// client certificate in the same way, except that a certificate of
// another role is refused at the handshake (bad_certificate), since no
// call follows to say why; the Refused hook and the closing of acme-tls/1
// connections are the credentials'.
func ClientAuthConfig(src CertSource, a ClientAuth) *tls.Config {
	st := newClientAuthState(src, a)
	st.roleAtHandshake = true
	return st.outer
}

// clientAuthState is what the credentials of one listener share.
type clientAuthState struct {
	a     ClientAuth
	base  *tls.Config
	outer *tls.Config
	cur   atomic.Pointer[trustConfig]
	// acme: the source answers ACME's TLS-ALPN-01 challenge (base
	// offers acme-tls/1), whose validations present no client
	// certificate.
	acme bool
	// roleAtHandshake: refuse a certificate of another role at the
	// handshake (ClientAuthConfig) instead of at every call.
	roleAtHandshake bool
}

// trustConfig is the TLS configuration for one pool and CRL of the source.
type trustConfig struct {
	pool *x509.CertPool
	crl  *x509.RevocationList
	cfg  *tls.Config
}

func newClientAuthState(src CertSource, a ClientAuth) *clientAuthState {
	if a.CAs == nil {
		panic("ClientAuth needs a ClientCASource")
	}
	if a.Role != RoleNode && a.Role != RoleServerApp {
		panic(fmt.Sprintf("ClientAuth role %q is not RoleNode or RoleServerApp", a.Role))
	}
	if a.Now == nil {
		a.Now = time.Now
	}
	st := &clientAuthState{a: a, base: ServerConfig(src)}
	st.acme = slices.Contains(st.base.NextProtos, alpnACME)
	st.outer = st.base.Clone()
	st.outer.ClientAuth = tls.RequireAndVerifyClientCert
	st.outer.SessionTicketsDisabled = true
	st.outer.GetConfigForClient = st.configForClient
	return st
}

// current returns the configuration for what the source holds now, making
// it on the first handshake after a change (two racing handshakes may both
// make it; either is right).
func (st *clientAuthState) current() *trustConfig {
	pool, crl := st.a.CAs.ClientCAs()
	if t := st.cur.Load(); t != nil && t.pool == pool && t.crl == crl {
		return t
	}
	t := &trustConfig{pool: pool, crl: crl}
	t.cfg = st.base.Clone()
	t.cfg.ClientAuth = tls.RequireAndVerifyClientCert
	t.cfg.ClientCAs = pool
	t.cfg.SessionTicketsDisabled = true
	t.cfg.VerifyConnection = func(cs tls.ConnectionState) error { return st.admitHandshake(t, cs.PeerCertificates) }
	st.cur.Store(t)
	return t
}

func (st *clientAuthState) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if st.acme && acmeChallenge(hello.SupportedProtos) {
		// A CA validating the domain (TLS-ALPN-01) has no client
		// certificate; the credentials close the connection once its
		// handshake is done.
		return st.base, nil
	}
	return st.current().cfg, nil
}

// alpnACME is the ALPN protocol of ACME's TLS-ALPN-01 challenge.
const alpnACME = "acme-tls/1"

// acmeChallenge reports whether a client's ALPN protocols are those of an
// ACME TLS-ALPN-01 validation: exactly acme-tls/1, the only one RFC 8737
// lets it offer.
func acmeChallenge(protos []string) bool {
	return len(protos) == 1 && protos[0] == alpnACME
}

// admit checks what the chain verification by the TLS stack (against t's
// pool) does not: the identity, the CRL and the identity's role, in that
// order (a revoked certificate of another role is refused as revoked).
// The error is a *ClientCertError.
func (st *clientAuthState) admit(t *trustConfig, certs []*x509.Certificate) error {
	if len(certs) == 0 {
		return &ClientCertError{Cause: CauseNoCertificate, Role: st.a.Role}
	}
	leaf := certs[0]
	id, err := IdentityOf(leaf)
	var cause ClientCertCause
	switch {
	case err != nil:
		cause = CauseNoIdentity
	case certfmt.Revoked(t.crl, leaf):
		cause = CauseRevoked
	case id.Role != st.a.Role:
		cause = CauseWrongRole
	default:
		return nil
	}
	// A refusal only: the description costs more than the checks.
	e := describeAs(leaf, st.a.Role, id)
	e.Cause, e.Err = cause, err
	return e
}

// admitHandshake is admit at the handshake: a certificate of another role
// passes, unless roleAtHandshake, and is refused at its calls instead
// (ClientAuthCredentials says why).
func (st *clientAuthState) admitHandshake(t *trustConfig, certs []*x509.Certificate) error {
	err := st.admit(t, certs)
	if e, ok := err.(*ClientCertError); ok && e.Cause == CauseWrongRole && !st.roleAtHandshake {
		return nil
	}
	return err
}

// describe starts the refusal of a certificate.
func describe(leaf *x509.Certificate, role string) *ClientCertError {
	id, _ := IdentityOf(leaf)
	return describeAs(leaf, role, id)
}

// describeAs is describe of a certificate whose identity (zero when it
// holds none) was read already.
func describeAs(leaf *x509.Certificate, role string, id Identity) *ClientCertError {
	return &ClientCertError{Role: role, Identity: id, Subject: leaf.Subject.String(), Issuer: leaf.Issuer.String(), Serial: certfmt.Serial(leaf.SerialNumber)}
}

// refusal turns the error of a failed handshake into a *ClientCertError
// when the client certificate was the cause, and returns nil otherwise.
func (st *clientAuthState) refusal(err error) *ClientCertError {
	var e *ClientCertError
	if errors.As(err, &e) {
		return e
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0 {
		e = describe(cve.UnverifiedCertificates[0], st.a.Role)
		e.Err = cve.Err
		var inv x509.CertificateInvalidError
		switch {
		case errors.As(cve.Err, new(x509.UnknownAuthorityError)):
			e.Cause = CauseUnknownCA
		case errors.As(cve.Err, &inv) && inv.Reason == x509.Expired:
			e.Cause = CauseExpired
		default:
			e.Cause = CauseBadCertificate
		}
		return e
	}
	if strings.Contains(err.Error(), "didn't provide a certificate") {
		return &ClientCertError{Cause: CauseNoCertificate, Role: st.a.Role, Err: err}
	}
	return nil
}

// clientAuthCreds are ClientAuthCredentials.
type clientAuthCreds struct {
	credentials.TransportCredentials
	st *clientAuthState
}

// errValidationClosed ends the connection of an ACME validation, whose
// handshake completed without a client certificate.
var errValidationClosed = errors.New("a connection without a client certificate (an ACME validation) is closed after its handshake")

func (c *clientAuthCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// The trust before the handshake: the handshake checked the
	// certificate against the one configForClient chose at the
	// ClientHello, which is t0 only if no reload landed in between.
	t0 := c.st.current()
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		if e := c.st.refusal(err); e != nil {
			e.Remote = raw.RemoteAddr().String()
			if c.st.a.Refused != nil {
				c.st.a.Refused(e)
			}
			return nil, nil, e
		}
		return nil, nil, err
	}
	ti, ok := info.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		// An acme-tls/1 handshake: done, and nothing more.
		conn.Close()
		return nil, nil, errValidationClosed
	}
	leaf := ti.State.PeerCertificates[0]
	id, _ := IdentityOf(leaf) // admit checked it
	ci := &ClientInfo{TLSInfo: ti, Identity: id, Remote: raw.RemoteAddr().String(), st: c.st}
	// Unless the trust is still t0, the handshake may have used another
	// (an older CRL): no trust recorded, so the first Recheck verifies.
	var checked *trustConfig
	if c.st.current() == t0 {
		checked = t0
	}
	var refused *ClientCertError
	if id.Role != c.st.a.Role {
		// Admitted for its calls to be refused in words.
		refused = describeAs(leaf, c.st.a.Role, id)
		refused.Cause, refused.Remote = CauseWrongRole, ci.Remote
		if c.st.a.Refused != nil {
			c.st.a.Refused(refused)
		}
	}
	ci.checked.Store(&recheck{trust: checked, err: refused})
	return conn, ci, nil
}

func (c *clientAuthCreds) Clone() credentials.TransportCredentials {
	return &clientAuthCreds{TransportCredentials: c.TransportCredentials.Clone(), st: c.st}
}

// ClientInfo is the gRPC AuthInfo of a connection whose client certificate
// ClientAuthCredentials admitted: a credentials.TLSInfo with the
// certificate's identity.
type ClientInfo struct {
	credentials.TLSInfo
	Identity Identity
	Remote   string

	st      *clientAuthState
	checked atomic.Pointer[recheck]
}

// recheck is the result of checking a connection's certificate against one
// trust.
type recheck struct {
	trust *trustConfig
	err   *ClientCertError
}

// ClientIdentity returns the identity, sepal:ROLE:NAME: the ability
// superlink looks for in a connection's AuthInfo.
func (ci *ClientInfo) ClientIdentity() string { return ci.Identity.String() }

// Recheck checks the connection's certificate against the CAs and CRL the
// source holds now, as a handshake would: it returns nil while the
// certificate is still admitted, and a *ClientCertError (also passed once
// to ClientAuth.Refused) once a reload revoked it, dropped its CA, or it
// expired, and from the first call on for a certificate of another role
// (see ClientAuthCredentials). It is cheap while nothing changed (one comparison), safe for
// concurrent use, and does no I/O; a caller such as a gRPC interceptor
// calls it on every call, so that a revocation takes effect on connections
// made before it.
func (ci *ClientInfo) Recheck() error {
	t := ci.st.current()
	r := ci.checked.Load()
	now := ci.st.a.Now()
	if r.trust == t && (r.err != nil || !now.After(ci.State.PeerCertificates[0].NotAfter)) {
		if r.err != nil {
			return r.err
		}
		return nil
	}
	n := &recheck{trust: t, err: ci.verify(t, now)}
	if ci.checked.CompareAndSwap(r, n) && n.err != nil && ci.st.a.Refused != nil {
		ci.st.a.Refused(n.err)
	}
	if n.err != nil {
		return n.err
	}
	return nil
}

// verify checks the connection's chain against t as the handshake did.
func (ci *ClientInfo) verify(t *trustConfig, now time.Time) *ClientCertError {
	certs := ci.State.PeerCertificates
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: t.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		e := ci.st.refusal(&tls.CertificateVerificationError{UnverifiedCertificates: certs, Err: err})
		e.Remote = ci.Remote
		return e
	}
	if err := ci.st.admit(t, certs); err != nil {
		e := err.(*ClientCertError)
		e.Remote = ci.Remote
		return e
	}
	return nil
}
