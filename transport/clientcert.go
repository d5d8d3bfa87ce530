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
// KindConfig, names the fields. ClientConfig checks them too.
func (o ClientOptions) ValidateClientCert() error {
	switch {
	case o.ClientCertificate == "" && o.ClientKey == "":
		return nil
	case o.Insecure:
		return &Error{Kind: KindConfig, Field: "Insecure", File: o.ClientCertificate,
			problem: "ClientOptions.Insecure and ClientOptions.ClientCertificate conflict",
			fix:     "a client certificate is presented only over TLS; unset Insecure"}
	case o.ClientKey == "":
		return &Error{Kind: KindConfig, Field: "ClientCertificate", File: o.ClientCertificate,
			problem: "ClientOptions.ClientCertificate " + o.ClientCertificate + " needs ClientOptions.ClientKey",
			fix:     "set it to the certificate's private key"}
	case o.ClientCertificate == "":
		return &Error{Kind: KindConfig, Field: "ClientKey", File: o.ClientKey,
			problem: "ClientOptions.ClientKey " + o.ClientKey + " needs ClientOptions.ClientCertificate",
			fix:     "set it to the key's certificate"}
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
		return nil, &Error{Kind: KindConfig, Field: "ClientCertificate", File: o.ClientCertificate, err: err,
			problem: fmt.Sprintf("ClientOptions.ClientCertificate %s and ClientOptions.ClientKey %s: %s", o.ClientCertificate, o.ClientKey, what),
			fix:     "pass the " + RoleName(roleOr(o.Role)) + " certificate issued for this client and its key"}
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
	role := roleOr(o.Role)
	var leaf *x509.Certificate
	if o.ClientCertificate != "" {
		leaf = certfmt.ReadFirstCert(o.ClientCertificate)
	}
	refused := func(cause ClientCertCause, problem, fix string) *Error {
		return &Error{Kind: KindClientCertRefused, Cause: cause, File: o.ClientCertificate, Cert: leaf, Alert: alert,
			problem: problem, fix: fix}
	}
	if alert == alertCertRequired || o.ClientCertificate == "" && alert == alertBadCert {
		return refused(CauseNoCertificate,
			fmt.Sprintf("%s requires a client certificate (mutual TLS) and this client presented none (%s)", where(addr), alert),
			fmt.Sprintf("set ClientOptions.ClientCertificate and ClientOptions.ClientKey to a %s certificate from the server's CA and its key", RoleName(role)))
	}
	if o.ClientCertificate == "" {
		return nil
	}
	cert := clientCertName(o.ClientCertificate, leaf)
	switch alert {
	case alertUnknownCA:
		issuer := ""
		if leaf != nil {
			issuer = fmt.Sprintf(", issuer %q", leaf.Issuer.String())
		}
		return refused(CauseUnknownCA,
			fmt.Sprintf("%s does not trust the CA that issued %s (%s%s)", where(addr), cert, alert, issuer),
			"present a certificate from the server's CA")
	case alertCertExpired:
		return refused(CauseExpired,
			fmt.Sprintf("%s refused %s as expired or not yet valid (%s%s)", where(addr), cert, alert, dates(leaf)),
			"issue a new one, or check the clocks")
	case alertCertRevoked:
		return refused(CauseRevoked, fmt.Sprintf("%s refused %s: it has been revoked (%s)", where(addr), cert, alert),
			"ask the server's operator for a new certificate")
	case alertBadCert:
	default:
		return nil
	}
	// bad_certificate: what the certificate itself shows, else revoked.
	if leaf == nil {
		return refused(CauseBadCertificate, fmt.Sprintf("%s refused %s (%s)", where(addr), cert, alert),
			"see the server's log for the cause")
	}
	id, err := IdentityOf(leaf)
	switch {
	case !certfmt.HasUsage(leaf, x509.ExtKeyUsageClientAuth):
		return refused(CauseBadCertificate,
			fmt.Sprintf("%s refused %s (%s): it is not a client certificate (no clientAuth usage; a server certificate?)", where(addr), cert, alert),
			"present a client certificate")
	case err != nil:
		return refused(CauseNoIdentity,
			fmt.Sprintf("%s refused %s (%s): it holds no Sepal identity (%v)", where(addr), cert, alert, err),
			"present a certificate issued with one")
	case o.Role != "" && id.Role != o.Role:
		return refused(CauseWrongRole,
			fmt.Sprintf("%s refused %s (%s): it is a %s certificate and this API admits %s certificates", where(addr), cert, alert, RoleName(id.Role), RoleName(o.Role)),
			"present a "+RoleName(o.Role)+" certificate")
	case time.Now().After(leaf.NotAfter) || time.Now().Before(leaf.NotBefore):
		return refused(CauseExpired,
			fmt.Sprintf("%s refused %s as expired or not yet valid (%s%s)", where(addr), cert, alert, dates(leaf)),
			"issue a new one, or check the clocks")
	}
	return refused(CauseRevoked,
		fmt.Sprintf("%s refused %s: it has been revoked (%s, and the certificate is otherwise valid for this API)", where(addr), cert, alert),
		"ask the server's operator for a new one")
}

// clientCertName names a client certificate file for messages: its path,
// and when leaf (its first certificate, nil when unread) holds a Sepal
// identity, the identity and serial ("the client certificate alice.pem
// (sepal:node:alice, serial 0A)").
func clientCertName(file string, leaf *x509.Certificate) string {
	if leaf != nil {
		if id, err := IdentityOf(leaf); err == nil {
			return fmt.Sprintf("the client certificate %s (%s, serial %s)", file, id, certfmt.Serial(leaf.SerialNumber))
		}
	}
	return "the client certificate " + file
}

func dates(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	return fmt.Sprintf("; it is valid from %s until %s", stamp(c.NotBefore), stamp(c.NotAfter))
}
