package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"time"
	"unicode"

	"google.golang.org/grpc/status"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// Kind classifies a failure to reach a server over TLS or plaintext.
type Kind int

// The kinds of failure Explain and Probe tell apart. Network failures (and
// unclassified ones) may pass; every other kind fails the same way on each
// try, so IsPermanent reports true for it and clients must not retry.
const (
	// KindUnknown: a failure this package cannot classify. Not permanent.
	KindUnknown Kind = iota
	// KindNetwork: connection refused, reset or timed out, name not
	// resolved. Not permanent: retry with backoff.
	KindNetwork
	// KindConfig: the client's own options are wrong (unreadable or empty
	// --root-certificates file, --insecure with --root-certificates).
	KindConfig
	// KindUnknownAuthority: the server's certificate does not chain to a
	// trusted CA.
	KindUnknownAuthority
	// KindExpired: the server's certificate has expired.
	KindExpired
	// KindNotYetValid: the server's certificate is not valid yet.
	KindNotYetValid
	// KindNameMismatch: the server's certificate does not hold the name
	// checked (the host dialled or ClientOptions.ServerName).
	KindNameMismatch
	// KindPlaintextPeer: we speak TLS and the server speaks plaintext.
	KindPlaintextPeer
	// KindTLSPeer: we speak plaintext (--insecure) and the server speaks TLS.
	KindTLSPeer
	// KindUnspecifiedAddress: TLS to 0.0.0.0 or ::, addresses servers
	// listen on, which no certificate holds.
	KindUnspecifiedAddress
	// KindHandshake: another TLS handshake failure, such as a TLS alert
	// from the server (no common version or cipher suite).
	KindHandshake
	// KindServerNotReady: the server ended the handshake with an
	// internal_error alert, as a Go server does when it has no certificate
	// to serve yet (an ACME SuperLink still obtaining its first one). Not
	// permanent: retry with backoff.
	KindServerNotReady
	// KindClientCertRefused: the server requires a client certificate
	// (mutual TLS) and refused this client's, or its absence; Error.Cause
	// says why.
	KindClientCertRefused
)

var kindNames = [...]string{
	KindUnknown:            "unknown",
	KindNetwork:            "network",
	KindConfig:             "config",
	KindUnknownAuthority:   "unknown authority",
	KindExpired:            "expired",
	KindNotYetValid:        "not yet valid",
	KindNameMismatch:       "name mismatch",
	KindPlaintextPeer:      "plaintext peer",
	KindTLSPeer:            "TLS peer",
	KindUnspecifiedAddress: "unspecified address",
	KindHandshake:          "handshake",
	KindServerNotReady:     "server not ready",
	KindClientCertRefused:  "client certificate refused",
}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return fmt.Sprintf("Kind(%d)", int(k))
	}
	return kindNames[k]
}

// Permanent reports whether a failure of this kind repeats on every try.
func (k Kind) Permanent() bool {
	return k != KindUnknown && k != KindNetwork && k != KindServerNotReady
}

// Sentinels, one per Kind: errors.Is(err, ErrExpired) holds for every
// *Error of KindExpired.
var (
	ErrUnknown            = errors.New("unclassified failure")
	ErrNetwork            = errors.New("network failure")
	ErrConfig             = errors.New("bad client options")
	ErrUnknownAuthority   = errors.New("certificate signed by unknown authority")
	ErrExpired            = errors.New("certificate expired")
	ErrNotYetValid        = errors.New("certificate not yet valid")
	ErrNameMismatch       = errors.New("certificate does not hold the name checked")
	ErrPlaintextPeer      = errors.New("server does not speak TLS")
	ErrTLSPeer            = errors.New("server speaks TLS")
	ErrUnspecifiedAddress = errors.New("unspecified address dialled")
	ErrHandshake          = errors.New("TLS handshake failed")
	ErrServerNotReady     = errors.New("server has no certificate to serve yet")
	ErrClientCertRefused  = errors.New("client certificate refused")
)

var kindSentinels = [...]error{
	KindUnknown:            ErrUnknown,
	KindNetwork:            ErrNetwork,
	KindConfig:             ErrConfig,
	KindUnknownAuthority:   ErrUnknownAuthority,
	KindExpired:            ErrExpired,
	KindNotYetValid:        ErrNotYetValid,
	KindNameMismatch:       ErrNameMismatch,
	KindPlaintextPeer:      ErrPlaintextPeer,
	KindTLSPeer:            ErrTLSPeer,
	KindUnspecifiedAddress: ErrUnspecifiedAddress,
	KindHandshake:          ErrHandshake,
	KindServerNotReady:     ErrServerNotReady,
	KindClientCertRefused:  ErrClientCertRefused,
}

// Error is a classified failure with a one-line message that names the
// cause, the flag or file involved and the fix. It unwraps to the sentinel
// of its Kind and to the original error, so errors.Is(err, ErrExpired) and
// errors.As(err, &x509.HostnameError{}) both work when the cause was typed.
type Error struct {
	Kind Kind
	// Addr is the address dialled, as given to Explain or Probe.
	Addr string
	// Cause is why the client certificate was refused, for
	// KindClientCertRefused ("" otherwise).
	Cause ClientCertCause
	msg   string
	err   error
}

// Error is one line. Names and issuers come from the peer's certificate,
// which a hostile server chooses: control characters in them are shown as
// '?', so a message cannot break a log line or a terminal.
func (e *Error) Error() string { return strings.Map(printable, e.msg) }

func printable(r rune) rune {
	if unicode.IsControl(r) {
		return '?'
	}
	return r
}

// Unwrap returns the sentinel of e.Kind and the original error, if any.
func (e *Error) Unwrap() []error {
	errs := []error{ErrUnknown}
	if e.Kind >= 0 && int(e.Kind) < len(kindSentinels) {
		errs[0] = kindSentinels[e.Kind]
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

// IsPermanent reports whether err, explained or not, is a failure that
// fails the same way on every try: certificate verification (unknown
// authority, expired, not yet valid, name mismatch), a TLS/plaintext
// mismatch, an unspecified address dialled with TLS, a TLS alert, bad
// client options. Clients stop on these instead of retrying. Network
// failures, an internal_error alert (a server without a certificate yet,
// KindServerNotReady), unclassified failures and nil are not permanent.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Kind.Permanent()
	}
	return Explain(err, "", ClientOptions{}).(*Error).Kind.Permanent()
}

// Explain turns the failure of a dial, a TLS handshake or a gRPC call to
// addr (host:port, as the user gave it) made with options o into one
// *Error whose one-line message names the cause, the flag or file that is
// involved and the fix. It reads typed errors (x509.UnknownAuthorityError,
// x509.CertificateInvalidError, x509.HostnameError, tls.RecordHeaderError,
// *net.OpError, ...) when err wraps them, and otherwise the text of err,
// including the message of a gRPC status (where gRPC keeps only the text).
// From text it classifies only what the text shows; a failure it cannot
// place (for instance a plaintext client whose TLS server just closes the
// connection) comes back as KindNetwork or KindUnknown, and Probe tells
// those apart with a handshake of its own. Explain returns nil for nil and
// an *Error unchanged. It does no network I/O; to explain a refused client
// certificate (a bad_certificate alert) it reads o.ClientCertificate. It is
// safe for concurrent use.
func Explain(err error, addr string, o ClientOptions) error {
	if err == nil {
		return nil
	}
	var done *Error
	if errors.As(err, &done) {
		return err
	}
	e := classify(err, addr, o)
	e.Addr, e.err = addr, err
	return e
}

// where names the server for messages.
func where(addr string) string {
	if addr == "" {
		return "the server"
	}
	return "the server at " + addr
}

func splitAddr(addr string) (host, port string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return strings.Trim(addr, "[]"), ""
	}
	return host, port
}

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

func classify(err error, addr string, o ClientOptions) *Error {
	host, _ := splitAddr(addr)
	e := classifyTyped(err, addr, o)
	if e == nil {
		e = classifyText(errText(err), addr, o)
	}
	// A TLS server closes on a plaintext client without a word: hint at it.
	if o.Insecure && e.Kind == KindNetwork && reClosed.MatchString(errText(err)) {
		e.msg += fmt.Sprintf("; if the server speaks TLS, drop %s and pass %s", FlagInsecure, FlagRootCertificates)
	}
	// TLS to 0.0.0.0 or :: fails on the name (or reaches nothing): say why.
	if !o.Insecure && o.ServerName == "" && isUnspecified(host) {
		switch e.Kind {
		case KindNameMismatch, KindUnknown, KindHandshake:
			return unspecified(addr, host)
		case KindNetwork:
			e.msg += "; besides, " + unspecifiedText(addr, host)
		}
	}
	return e
}

func unspecifiedText(addr, host string) string {
	_, port := splitAddr(addr)
	if port == "" {
		port = "PORT"
	}
	return fmt.Sprintf("%s %s: %s is an address servers listen on, not one to dial: pass %s 127.0.0.1:%s or the SuperLink's host name (a name its certificate holds)",
		FlagServer, addr, host, FlagServer, port)
}

func unspecified(addr, host string) *Error {
	return &Error{Kind: KindUnspecifiedAddress, msg: unspecifiedText(addr, host)}
}

// errText is the text to read: the message of a gRPC status, else err's text,
// on one line, without gRPC's wrapping ("connection error: desc = ...") and
// grpc-go's own prefixes ("transport: " is that of its internal transport
// package, not this one).
func errText(err error) string {
	s := err.Error()
	if st, ok := status.FromError(err); ok {
		s = st.Message()
	}
	if i := strings.LastIndex(s, `desc = "`); i >= 0 {
		s = strings.TrimSuffix(s[i+len(`desc = "`):], `"`)
		s = strings.ReplaceAll(s, `\"`, `"`)
	}
	for _, p := range []string{"transport: ", "Error while dialing: ", "authentication handshake failed: "} {
		s = strings.TrimPrefix(s, p)
	}
	return oneLine(s)
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func classifyTyped(err error, addr string, o ClientOptions) *Error {
	var leaf *x509.Certificate
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0 {
		leaf = cve.UnverifiedCertificates[0]
	}
	var uae x509.UnknownAuthorityError
	if errors.As(err, &uae) {
		c := leaf
		if c == nil {
			c = uae.Cert
		}
		return unknownAuthority(addr, o, c)
	}
	var cie x509.CertificateInvalidError
	if errors.As(err, &cie) && cie.Reason == x509.Expired && cie.Cert != nil {
		now := time.Now()
		if t, ok := parseCurrentTime(cie.Detail); ok {
			now = t
		}
		return validity(addr, cie.Cert, cie.Cert.NotBefore, cie.Cert.NotAfter, now, now.Before(cie.Cert.NotBefore))
	}
	var he x509.HostnameError
	if errors.As(err, &he) && he.Certificate != nil {
		return nameMismatch(addr, o, he.Host, certNames(he.Certificate), "", he.Certificate)
	}
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) {
		return plaintextPeer(addr)
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		if e := clientCertAlert(oneLine(oe.Err.Error()), addr, o); e != nil {
			return e
		}
		if reInternalAlert.MatchString(oe.Err.Error()) {
			return serverNotReady(addr)
		}
		return handshake(addr, "the server refused the handshake with "+oneLine(oe.Err.Error()))
	}
	if isNetwork(err) {
		return network(addr, oneLine(err.Error()))
	}
	return nil
}

func isNetwork(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var (
	reUnknownAuthority = regexp.MustCompile(`certificate signed by unknown authority`)
	reCurrentTime      = regexp.MustCompile(`current time ([0-9][0-9TZ:+.\-]*[0-9Z]) is (after|before) ([0-9][0-9TZ:+.\-]*[0-9Z])`)
	reExpiredAny       = regexp.MustCompile(`certificate has expired or is not yet valid`)
	reValidFor         = regexp.MustCompile(`certificate is valid for (.+?), not ([^\s"\\,;)]+)`)
	reNoIPSANs         = regexp.MustCompile(`cannot validate certificate for (\S+) because it doesn't contain any IP SANs`)
	reNoNames          = regexp.MustCompile(`certificate is not valid for any names, but wanted to match ([^\s"\\,;)]+)`)
	reManyNames        = regexp.MustCompile(`certificate is valid for \d+ (?:IP SANs|names), but none matched ([^\s"\\,;)]+)`)
	reLegacyCN         = regexp.MustCompile(`certificate relies on legacy Common Name field`)
	rePlaintext        = regexp.MustCompile(`first record does not look like a TLS handshake`)
	reRemoteAlert      = regexp.MustCompile(`remote error: (tls: [a-z0-9 ]+)`)
	reInternalAlert    = regexp.MustCompile(`tls: internal error`)
	reNetwork          = regexp.MustCompile(`connection refused|connection reset|i/o timeout|no such host|network is unreachable|no route to host|deadline exceeded|context canceled|broken pipe|\bEOF\b`)
	reClosed           = regexp.MustCompile(`server preface|connection reset|\bEOF\b`)
	reTLSOther         = regexp.MustCompile(`\btls: [^"\\]+`)
)

func parseCurrentTime(detail string) (time.Time, bool) {
	m := reCurrentTime.FindStringSubmatch(detail)
	if m == nil {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, m[1])
	return t, err == nil
}

func classifyText(s, addr string, o ClientOptions) *Error {
	switch {
	case reUnknownAuthority.MatchString(s):
		return unknownAuthority(addr, o, nil)
	case reCurrentTime.MatchString(s):
		m := reCurrentTime.FindStringSubmatch(s)
		now, _ := time.Parse(time.RFC3339, m[1])
		bound, _ := time.Parse(time.RFC3339, m[3])
		if m[2] == "before" {
			return validity(addr, nil, bound, time.Time{}, now, true)
		}
		return validity(addr, nil, time.Time{}, bound, now, false)
	case reExpiredAny.MatchString(s):
		return validity(addr, nil, time.Time{}, time.Time{}, time.Now(), false)
	case reValidFor.MatchString(s):
		m := reValidFor.FindStringSubmatch(s)
		return nameMismatch(addr, o, m[2], strings.Split(m[1], ", "), "", nil)
	case reNoIPSANs.MatchString(s):
		m := reNoIPSANs.FindStringSubmatch(s)
		return nameMismatch(addr, o, m[1], nil, "no IP address (only DNS names, if any)", nil)
	case reNoNames.MatchString(s):
		m := reNoNames.FindStringSubmatch(s)
		return nameMismatch(addr, o, m[1], nil, "", nil)
	case reManyNames.MatchString(s):
		m := reManyNames.FindStringSubmatch(s)
		return nameMismatch(addr, o, m[1], nil, "many other names", nil)
	case reLegacyCN.MatchString(s):
		return nameMismatch(addr, o, "", nil, "", nil)
	case rePlaintext.MatchString(s):
		return plaintextPeer(addr)
	case reRemoteAlert.MatchString(s):
		m := reRemoteAlert.FindStringSubmatch(s)
		if e := clientCertAlert(m[1], addr, o); e != nil {
			return e
		}
		if reInternalAlert.MatchString(m[1]) {
			return serverNotReady(addr)
		}
		return handshake(addr, "the server refused the handshake with "+strings.TrimSpace(m[1]))
	case reNetwork.MatchString(s):
		return network(addr, s)
	case reTLSOther.MatchString(s):
		return handshake(addr, strings.TrimSpace(reTLSOther.FindString(s)))
	}
	return &Error{Kind: KindUnknown, msg: fmt.Sprintf("%s: %s", strings.TrimPrefix(where(addr), "the server at "), s)}
}

// unknownAuthority explains a certificate c (nil: unknown) that does not
// chain to the roots of o. When the roots file holds a CA of the very name
// of c's issuer (a CA made again under the same name), it says so, with
// the key ids that tell the two apart.
func unknownAuthority(addr string, o ClientOptions, c *x509.Certificate) *Error {
	by := ""
	if c != nil {
		by = fmt.Sprintf(", it was issued by %q", c.Issuer.String())
	}
	fix := fmt.Sprintf("pass %s with the CA certificate that signed it (flower-certs writes it as certificates/ca.crt on the server's machine)", FlagRootCertificates)
	if o.RootCertificates != "" {
		fix = fmt.Sprintf("pass %s with the CA certificate that signed it instead of %s (flower-certs writes it as certificates/ca.crt on the server's machine)", FlagRootCertificates, o.RootCertificates)
	}
	if twin := sameNameRoot(o.RootCertificates, c); twin != nil {
		if len(c.AuthorityKeyId) > 0 {
			by += " with key id " + certfmt.KeyID(c.AuthorityKeyId)
		}
		other := ""
		if len(twin.SubjectKeyId) > 0 {
			other = ", key id " + certfmt.KeyID(twin.SubjectKeyId)
		}
		by += fmt.Sprintf("; %s holds another CA of that name%s: one of the two was made again (flower-certs --new-ca)",
			o.RootCertificates, other)
		fix = fmt.Sprintf("pass %s with the CA certificate that issued the server's certificate (certificates/ca.crt on its machine, unless the server still serves a certificate of the old CA)", FlagRootCertificates)
	}
	return &Error{Kind: KindUnknownAuthority, msg: fmt.Sprintf(
		"the certificate of %s is not signed by a CA in %s (x509: unknown authority%s): %s",
		where(addr), o.rootsName(), by, fix)}
}

// sameNameRoot returns a CA certificate of the roots file whose subject is
// the issuer of c, or nil: none, no file, or no c.
func sameNameRoot(roots string, c *x509.Certificate) *x509.Certificate {
	if roots == "" || c == nil {
		return nil
	}
	for _, r := range certfmt.ReadCerts(roots) {
		if bytes.Equal(r.RawSubject, c.RawIssuer) {
			return r
		}
	}
	return nil
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return t.UTC().Format(time.RFC3339)
}

// otherIssuer reports whether c, the server's certificate, is known and
// was not made by flower-certs: one from an ACME CA (or another), which
// flower-certs cannot re-issue, so a fix must not send the operator there.
func otherIssuer(c *x509.Certificate) bool {
	return c != nil && !certfmt.MadeBySepal(c)
}

// validity explains an expired (notYet false) or not yet valid certificate
// c (nil: unknown); unknown bounds are zero.
func validity(addr string, c *x509.Certificate, notBefore, notAfter, now time.Time, notYet bool) *Error {
	span := fmt.Sprintf("valid from %s until %s", stamp(notBefore), stamp(notAfter))
	switch {
	case notBefore.IsZero() && !notAfter.IsZero():
		span = "valid until " + stamp(notAfter)
	case notAfter.IsZero() && !notBefore.IsZero():
		span = "valid from " + stamp(notBefore)
	}
	reissue, renew := ", or re-issue the certificate (flower-certs --force)", "re-issue it on the server (flower-certs --force)"
	if otherIssuer(c) {
		// An ACME certificate (or another CA's): renewed where it came from.
		reissue = ""
		renew = "its operator must renew it (a SuperLink with --acme-domain renews its own certificate: its log says why it did not)"
	}
	if notYet {
		return &Error{Kind: KindNotYetValid, msg: fmt.Sprintf(
			"the certificate of %s is not yet valid (%s, and the time here is %s): check the clock of this machine and of the server%s",
			where(addr), span, stamp(now), reissue)}
	}
	return &Error{Kind: KindExpired, msg: fmt.Sprintf(
		"the certificate of %s has expired (%s, and the time here is %s): %s or, if it should still be valid, check the clock of this machine",
		where(addr), span, stamp(now), renew)}
}

// certNames lists the names a certificate holds: DNS names, then IPs.
func certNames(c *x509.Certificate) []string {
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	return names
}

// nameMismatch explains a certificate that does not hold want. holds are
// the names it holds; when they are unknown (read from text), holdsText
// says what is known, and c, when known, gives the common name.
func nameMismatch(addr string, o ClientOptions, want string, holds []string, holdsText string, c *x509.Certificate) *Error {
	_, port := splitAddr(addr)
	if port == "" {
		port = "PORT"
	}
	if want == "" {
		want = o.ServerName
	}
	if want == "" {
		want, _ = splitAddr(addr)
	}
	if len(holds) == 0 && holdsText == "" {
		cn := ""
		if c != nil && c.Subject.CommonName != "" {
			cn = fmt.Sprintf(", only the common name %q, which is not checked", c.Subject.CommonName)
		}
		return &Error{Kind: KindNameMismatch, msg: fmt.Sprintf(
			"the certificate of %s holds no names (no subject alternative names%s), so it cannot match %q: re-issue it with the server's names (flower-certs --host NAME --force)",
			where(addr), cn, want)}
	}
	checked := "the name dialled"
	if o.ServerName != "" {
		checked = fmt.Sprintf("the name %s asks for", FlagTLSServerName)
	}
	example := ""
	if len(holds) > 0 {
		holdsText = strings.Join(holds, ", ")
		example = fmt.Sprintf(" (e.g. %s %s)", FlagServer, net.JoinHostPort(holds[0], port))
	}
	reissue := fmt.Sprintf(", or re-issue the certificate for %s (flower-certs --host %s --force)", want, want)
	switch {
	case otherIssuer(c) && net.ParseIP(want) != nil:
		// An ACME certificate holds DNS names: dial one.
		reissue = ""
	case otherIssuer(c):
		// An ACME certificate (or another CA's) holds the names it was
		// obtained for.
		reissue = fmt.Sprintf(", or have the SuperLink obtain its certificate for %s too (with ACME: --acme-domain %s)", want, want)
	}
	return &Error{Kind: KindNameMismatch, msg: fmt.Sprintf(
		"the certificate of %s does not hold %q, %s; it holds %s: pass %s with one of its names and the port%s, or %s with one of them%s",
		where(addr), want, checked, holdsText, FlagServer, example, FlagTLSServerName, reissue)}
}

func plaintextPeer(addr string) *Error {
	return &Error{Kind: KindPlaintextPeer, msg: fmt.Sprintf(
		"%s does not speak TLS; it may run with %s: pass %s, or start it with certificates",
		where(addr), FlagInsecure, FlagInsecure)}
}

func tlsPeer(addr string) *Error {
	return &Error{Kind: KindTLSPeer, msg: fmt.Sprintf(
		"%s speaks TLS; drop %s and pass %s with the CA certificate that signed its certificate",
		where(addr), FlagInsecure, FlagRootCertificates)}
}

func handshake(addr, cause string) *Error {
	return &Error{Kind: KindHandshake, msg: fmt.Sprintf(
		"the TLS handshake with %s failed: %s: the server and this client share no TLS version, cipher suite or protocol; both need TLS 1.2 or later",
		where(addr), cause)}
}

// serverNotReady explains an internal_error alert: the server could not
// pick a certificate. Go servers send it when GetCertificate fails, which
// an ACME SuperLink's does until its first certificate is in.
func serverNotReady(addr string) *Error {
	return &Error{Kind: KindServerNotReady, msg: fmt.Sprintf(
		"%s ended the TLS handshake with an internal error (tls: internal error): it has no certificate to serve yet, as while an ACME SuperLink obtains its first one, or failed to load one: wait until its log says it serves, or see its log for the cause",
		where(addr))}
}

func network(addr, cause string) *Error {
	return &Error{Kind: KindNetwork, msg: fmt.Sprintf(
		"cannot reach %s: %s: check that it runs and that %s names it",
		where(addr), cause, FlagServer)}
}
