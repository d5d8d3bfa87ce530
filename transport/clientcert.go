package transport

// The client's side of mutual TLS: loading the client certificate, and
// explaining the server's refusal of it.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/sepal-fl/sepal/internal/certfmt"
)

// ValidateClientCert checks the client certificate options alone: both
// paths or neither, and not with Insecure. The error, a *Error of
// KindConfig, names the flags. ClientConfig checks them too.
func (o ClientOptions) ValidateClientCert() error {
	switch {
	case o.ClientCertificate == "" && o.ClientKey == "":
		return nil
	case o.Insecure:
		return &Error{Kind: KindConfig, msg: fmt.Sprintf("%s and %s conflict: a client certificate is presented only over TLS; drop %s",
			FlagInsecure, FlagClientCert, FlagInsecure)}
	case o.ClientKey == "":
		return &Error{Kind: KindConfig, msg: fmt.Sprintf("%s %s needs %s with its private key", FlagClientCert, o.ClientCertificate, FlagClientKey)}
	case o.ClientCertificate == "":
		return &Error{Kind: KindConfig, msg: fmt.Sprintf("%s %s needs %s with the certificate", FlagClientKey, o.ClientKey, FlagClientCert)}
	}
	return nil
}

// loadClientCert reads the client certificate and key of o.
func loadClientCert(o ClientOptions) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(o.ClientCertificate, o.ClientKey)
	if err != nil {
		what := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			what = "no such file"
		}
		return nil, &Error{Kind: KindConfig, err: err, msg: fmt.Sprintf(
			"%s %s and %s %s: %s: pass the certificate and key flower-certs wrote for this client (flower-certs %s NAME)",
			FlagClientCert, o.ClientCertificate, FlagClientKey, o.ClientKey, what, roleOr(o.Role))}
	}
	return &cert, nil
}

func roleOr(role string) string {
	if role == "" {
		return RoleNode
	}
	return role
}

// Alerts a server sends about a client certificate.
const (
	alertCertRequired = "tls: certificate required"
	alertUnknownCA    = "tls: unknown certificate authority"
	alertCertExpired  = "tls: expired certificate"
	alertBadCert      = "tls: bad certificate"
	alertCertRevoked  = "tls: revoked certificate"
)

// clientCertAlert explains a TLS alert from the server about the client's
// certificate, or returns nil for any other alert. For a bad_certificate
// alert (which is all a Go server can say for a revoked certificate or the
// wrong role) it reads the client certificate file to tell which.
func clientCertAlert(alert, addr string, o ClientOptions) *Error {
	alert = strings.TrimSpace(alert)
	refused := func(cause ClientCertCause, format string, args ...any) *Error {
		return &Error{Kind: KindClientCertRefused, Cause: cause, msg: fmt.Sprintf(format, args...)}
	}
	role := roleOr(o.Role)
	issue := fmt.Sprintf("flower-certs %s NAME", role)
	if alert == alertCertRequired || o.ClientCertificate == "" && alert == alertBadCert {
		return refused(CauseNoCertificate,
			"%s requires a client certificate (mutual TLS) and this client presented none (%s): pass %s and %s with a %s certificate from the SuperLink's CA (%s on the SuperLink's machine)",
			where(addr), alert, FlagClientCert, FlagClientKey, RoleName(role), issue)
	}
	if o.ClientCertificate == "" {
		return nil
	}
	leaf := certfmt.ReadFirstCert(o.ClientCertificate)
	cert := fmt.Sprintf("the client certificate %s", o.ClientCertificate)
	if leaf != nil {
		if id, err := IdentityOf(leaf); err == nil {
			cert = fmt.Sprintf("the client certificate %s (%s, serial %s)", o.ClientCertificate, id, certfmt.Serial(leaf.SerialNumber))
		}
	}
	switch alert {
	case alertUnknownCA:
		issuer := ""
		if leaf != nil {
			issuer = fmt.Sprintf(", issuer %q", leaf.Issuer.String())
		}
		return refused(CauseUnknownCA,
			"%s does not trust the CA that issued %s (%s%s): pass a certificate from the SuperLink's CA (%s in the SuperLink's certificates folder)",
			where(addr), cert, alert, issuer, issue)
	case alertCertExpired:
		reissue := fmt.Sprintf("flower-certs %s --force NAME", role)
		if leaf != nil {
			if id, err := IdentityOf(leaf); err == nil {
				reissue = fmt.Sprintf("flower-certs %s --force %s", id.Role, id.Name)
			}
		}
		return refused(CauseExpired, "%s refused %s as expired or not yet valid (%s%s): issue a new one (%s), or check the clocks",
			where(addr), cert, alert, dates(leaf), reissue)
	case alertCertRevoked:
		return refused(CauseRevoked, "%s refused %s: it has been revoked (%s): ask the SuperLink's operator for a new certificate", where(addr), cert, alert)
	case alertBadCert:
	default:
		return nil
	}
	// bad_certificate: what the certificate itself shows, else revoked.
	if leaf == nil {
		return refused(CauseBadCertificate, "%s refused %s (%s): see the SuperLink's log for the cause", where(addr), cert, alert)
	}
	id, err := IdentityOf(leaf)
	switch {
	case !certfmt.HasUsage(leaf, x509.ExtKeyUsageClientAuth):
		return refused(CauseBadCertificate, "%s refused %s (%s): it is not a client certificate (no clientAuth usage; a server certificate?): pass the one from %s",
			where(addr), cert, alert, issue)
	case err != nil:
		return refused(CauseNoIdentity, "%s refused %s (%s): it holds no Sepal identity (%v): pass the one from %s",
			where(addr), cert, alert, err, issue)
	case o.Role != "" && id.Role != o.Role:
		return refused(CauseWrongRole, "%s refused %s (%s): it is a %s certificate and this API admits %s certificates: pass a %s certificate (%s)",
			where(addr), cert, alert, RoleName(id.Role), RoleName(o.Role), RoleName(o.Role), issue)
	case time.Now().After(leaf.NotAfter) || time.Now().Before(leaf.NotBefore):
		return refused(CauseExpired, "%s refused %s as expired or not yet valid (%s%s): issue a new one (flower-certs %s --force %s)",
			where(addr), cert, alert, dates(leaf), id.Role, id.Name)
	}
	return refused(CauseRevoked, "%s refused %s: it has been revoked (%s, and the certificate is otherwise valid for this API): ask the SuperLink's operator for a new one (flower-certs %s --force %s)",
		where(addr), cert, alert, id.Role, id.Name)
}

func dates(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf("; it is valid from %s until %s", stamp(c.NotBefore), stamp(c.NotAfter))
}
