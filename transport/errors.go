package transport

import (
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
	// KindConfig: the client's own options are wrong (an unreadable or
	// empty RootCertificates file, Insecure with RootCertificates).
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
	// KindTLSPeer: we speak plaintext (Insecure) and the server speaks TLS.
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
// cause, the option (a ClientOptions field, such as
// ClientOptions.RootCertificates) or file involved and the fix, and with
// the facts behind it in its fields, so that a program can word it for its
// own users (a command names its flags). It unwraps to the sentinel of its
// Kind and to the original error, so errors.Is(err, ErrExpired) and
// errors.As(err, &x509.HostnameError{}) both work when the cause was typed.
type Error struct {
	Kind Kind
	// Addr is the address dialled, as given to Explain or Probe.
	Addr string
	// Cause is why the client certificate was refused, for
	// KindClientCertRefused ("" otherwise).
	Cause ClientCertCause
	// Field is the ClientOptions field whose value is at fault, for
	// KindConfig, such as "RootCertificates" (the first of two that
	// conflict). Its message names each field as ClientOptions.Field.
	Field string
	// File is the file involved, when there is one: the file of Field
	// (KindConfig), the RootCertificates file the server's certificate
	// was checked against (KindUnknownAuthority; "" for the system
	// roots), or the client certificate refused (KindClientCertRefused).
	File string
	// Cert is the certificate at fault, when it is known: the server's
	// (KindUnknownAuthority, KindExpired, KindNotYetValid,
	// KindNameMismatch; nil when only the text of the failure was left,
	// as gRPC leaves it) or this client's own (KindClientCertRefused).
	Cert *x509.Certificate
	// NotBefore and NotAfter are the validity of the server's certificate,
	// and Now the time it was checked at (KindExpired, KindNotYetValid);
	// a bound the failure did not tell is zero.
	NotBefore, NotAfter, Now time.Time
	// Name is the name the server's certificate was checked against
	// (KindNameMismatch: the host dialled, or ClientOptions.ServerName);
	// Names are the names it holds, DNS names then IPs, when they are
	// known; Holds says them in words ("a.example, 10.0.0.1", or what is
	// known, such as "many other names"), "" when it holds none.
	Name, Holds string
	Names       []string
	// Closed reports a connection the server closed at once (KindNetwork),
	// as a TLS server closes one from a plaintext client.
	Closed bool
	// Alert is the TLS alert the server ended the handshake with, for
	// KindClientCertRefused (such as "tls: bad certificate").
	Alert string
	// problem is what went wrong, fix what to do about it: the message is
	// "problem: fix".
	problem, fix string
	err          error
}

// Error is one line: what went wrong, then what to do about it. Names and
// issuers come from the peer's certificate, which a hostile server
// chooses: control characters in them are shown as '?', so a message
// cannot break a log line or a terminal.
func (e *Error) Error() string {
	if e.fix == "" {
		return e.Problem()
	}
	return strings.Map(printable, e.problem+": "+e.fix)
}

// Problem is the message without its fix: what went wrong, with the facts
// (the server, the certificate's names, issuer and dates, the file), for a
// program that words the fix for its own users. It names no ClientOptions
// field, except for KindConfig, whose problem is the value of one
// (ClientOptions.RootCertificates FILE: ...). Like Error, it holds no
// control characters.
func (e *Error) Problem() string { return strings.Map(printable, e.problem) }

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
// *Error whose one-line message names the cause, the option or file that is
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
	if e.Kind == KindNetwork && reClosed.MatchString(errText(err)) {
		e.Closed = true
		if o.Insecure {
			e.fix += "; if the server speaks TLS, unset ClientOptions.Insecure and set ClientOptions.RootCertificates"
		}
	}
	// TLS to 0.0.0.0 or :: fails on the name (or reaches nothing): say why.
	if !o.Insecure && o.ServerName == "" && isUnspecified(host) {
		switch e.Kind {
		case KindNameMismatch, KindUnknown, KindHandshake:
			return unspecified(addr)
		case KindNetwork:
			u := unspecified(addr)
			e.fix += "; besides, " + u.problem + ": " + u.fix
		}
	}
	return e
}

// unspecified explains TLS to 0.0.0.0 or :: (addr), which no certificate
// holds.
func unspecified(addr string) *Error {
	host, port := splitAddr(addr)
	if port == "" {
		port = "PORT"
	}
	return &Error{Kind: KindUnspecifiedAddress,
		problem: fmt.Sprintf("%s: %s is an address servers listen on, not one to dial", addr, host),
		fix:     fmt.Sprintf("dial 127.0.0.1:%s or the server's host name (a name its certificate holds)", port)}
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
	return &Error{Kind: KindUnknown, problem: fmt.Sprintf("%s: %s", strings.TrimPrefix(where(addr), "the server at "), s)}
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
	fix := "set ClientOptions.RootCertificates to a file with the CA certificate that signed it"
	if o.RootCertificates != "" {
		fix = "set ClientOptions.RootCertificates to the CA certificate that signed it instead of " + o.RootCertificates
	}
	if twin := certfmt.SameNameCA(o.RootCertificates, c); twin != nil {
		if len(c.AuthorityKeyId) > 0 {
			by += " with key id " + certfmt.KeyID(c.AuthorityKeyId)
		}
		other := ""
		if len(twin.SubjectKeyId) > 0 {
			other = ", key id " + certfmt.KeyID(twin.SubjectKeyId)
		}
		by += fmt.Sprintf("; %s holds another CA of that name%s: one of the two was made again", o.RootCertificates, other)
		fix = "set ClientOptions.RootCertificates to the CA certificate that issued the server's certificate (unless the server still serves a certificate of the old CA)"
	}
	return &Error{Kind: KindUnknownAuthority, File: o.RootCertificates, Cert: c,
		problem: fmt.Sprintf("the certificate of %s is not signed by a CA in %s (x509: unknown authority%s)", where(addr), o.rootsName(), by),
		fix:     fix}
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return t.UTC().Format(time.RFC3339)
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
	e := &Error{Kind: KindExpired, Cert: c, NotBefore: notBefore, NotAfter: notAfter, Now: now}
	if notYet {
		e.Kind = KindNotYetValid
		e.problem = fmt.Sprintf("the certificate of %s is not yet valid (%s, and the time here is %s)", where(addr), span, stamp(now))
		e.fix = "check the clock of this machine and of the server"
		return e
	}
	e.problem = fmt.Sprintf("the certificate of %s has expired (%s, and the time here is %s)", where(addr), span, stamp(now))
	e.fix = "its operator must renew it or, if it should still be valid, check the clock of this machine"
	return e
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
	if len(holds) > 0 {
		holdsText = strings.Join(holds, ", ")
	}
	e := &Error{Kind: KindNameMismatch, Cert: c, Name: want, Names: holds, Holds: holdsText}
	if holdsText == "" {
		cn := ""
		if c != nil && c.Subject.CommonName != "" {
			cn = fmt.Sprintf(", only the common name %q, which is not checked", c.Subject.CommonName)
		}
		e.problem = fmt.Sprintf("the certificate of %s holds no names (no subject alternative names%s), so it cannot match %q", where(addr), cn, want)
		e.fix = "re-issue it with the names clients dial"
		return e
	}
	checked := "the name dialled"
	if o.ServerName != "" {
		checked = "the server name checked"
	}
	e.problem = fmt.Sprintf("the certificate of %s does not hold %q, %s; it holds %s", where(addr), want, checked, holdsText)
	example := ""
	if len(holds) > 0 {
		example = " (e.g. " + net.JoinHostPort(holds[0], port) + ")"
	}
	reissue := ", or have the certificate issued for " + want + " too"
	if c != nil && !certfmt.MadeBySepal(c) && net.ParseIP(want) != nil {
		// An ACME certificate holds DNS names: dial one.
		reissue = ""
	}
	e.fix = fmt.Sprintf("dial one of its names with the port%s, or set ClientOptions.ServerName to one of them%s", example, reissue)
	return e
}

func plaintextPeer(addr string) *Error {
	return &Error{Kind: KindPlaintextPeer,
		problem: where(addr) + " does not speak TLS",
		fix:     "set ClientOptions.Insecure if it serves plaintext, or start it with certificates"}
}

func tlsPeer(addr string) *Error {
	return &Error{Kind: KindTLSPeer,
		problem: where(addr) + " speaks TLS",
		fix:     "unset ClientOptions.Insecure and set ClientOptions.RootCertificates to the CA certificate that signed its certificate"}
}

func handshake(addr, cause string) *Error {
	return &Error{Kind: KindHandshake,
		problem: fmt.Sprintf("the TLS handshake with %s failed: %s", where(addr), cause),
		fix:     "the server and this client share no TLS version, cipher suite or protocol; both need TLS 1.2 or later"}
}

// serverNotReady explains an internal_error alert: the server could not
// pick a certificate. Go servers send it when GetCertificate fails, which
// an ACME SuperLink's does until its first certificate is in.
func serverNotReady(addr string) *Error {
	return &Error{Kind: KindServerNotReady,
		problem: where(addr) + " ended the TLS handshake with an internal error (tls: internal error)",
		fix:     "it has no certificate to serve yet, as while an ACME SuperLink obtains its first one, or failed to load one: wait until its log says it serves, or see its log for the cause"}
}

func network(addr, cause string) *Error {
	return &Error{Kind: KindNetwork,
		problem: fmt.Sprintf("cannot reach %s: %s", where(addr), cause),
		fix:     "check that it runs and that the address names it"}
}
