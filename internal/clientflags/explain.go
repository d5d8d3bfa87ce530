package clientflags

// This file words the failures of transport and app for the user of these
// flags: the libraries name their options (ClientOptions.RootCertificates,
// the address dialled); a command user passed flags, and gets
// certificates from flower-certs.

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/internal/certfmt"
	"github.com/sepal-fl/sepal/transport"
)

// flagOf is the flag of each ClientOptions field.
var flagOf = map[string]string{
	"RootCertificates":  "--root-certificates",
	"Insecure":          "--insecure",
	"ServerName":        "--tls-server-name",
	"ClientCertificate": "--client-certificate",
	"ClientKey":         "--client-key",
}

// fieldsAsFlags replaces the ClientOptions fields a message names with
// their flags.
var fieldsAsFlags = func() *strings.Replacer {
	var pairs []string
	for field, flag := range flagOf {
		pairs = append(pairs, "ClientOptions."+field, flag)
	}
	return strings.NewReplacer(pairs...)
}()

// superLinkAPI is what a command user needs to know of each SuperLink API:
// the flower-superlink flag that sets its address.
var superLinkAPI = map[string]struct{ who, flag, port string }{
	"Fleet API":  {"client apps (SuperNodes)", "--grpc-rere-fleet-api-address", "9092"},
	"Driver API": {"server apps", "--driver-api-address", "9091"},
}

// Explain words err, the failure of app.RunNode, app.RunFedAvg or
// app.StopNodes run with these flags, for the command's user: a
// *transport.Error in it becomes one line that names the flags to pass and
// the flower-certs command that fixes it, an *app.WrongAPIError one that
// names the flower-superlink flag of the API to dial. The result
// unwraps to err, so errors.Is sees what err matched; any other error, and
// nil, come back unchanged.
func (f *Flags) Explain(err error) error {
	var msg string
	var te *transport.Error
	var we *app.WrongAPIError
	switch {
	case errors.As(err, &te):
		msg = f.transportMessage(te)
	case errors.As(err, &we):
		msg = wrongAPIMessage(we)
	}
	if msg == "" {
		return err
	}
	return &explained{msg: msg, err: err}
}

// explained is an error worded for the command's user.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// transportMessage words e for the user of these flags; "" keeps
// transport's words (they name no option).
func (f *Flags) transportMessage(e *transport.Error) string {
	_, port, _ := net.SplitHostPort(e.Addr)
	if port == "" {
		port = "PORT"
	}
	switch e.Kind {
	case transport.KindConfig:
		msg := fieldsAsFlags.Replace(e.Error())
		if e.Field == "RootCertificates" {
			msg += ", such as certificates/ca.crt from flower-certs"
		}
		return msg
	case transport.KindUnknownAuthority:
		if certfmt.SameNameCA(e.File, e.Cert) != nil {
			return e.Problem() + ": pass --root-certificates with the CA certificate that issued the server's certificate (certificates/ca.crt on its machine, unless the server still serves a certificate of the old CA)"
		}
		instead := ""
		if e.File != "" {
			instead = " instead of " + e.File
		}
		return e.Problem() + ": pass --root-certificates with the CA certificate that signed it" + instead + " (flower-certs writes it as certificates/ca.crt on the server's machine)"
	case transport.KindExpired:
		if otherIssuer(e) {
			return e.Problem() + ": its operator must renew it (a SuperLink with --acme-domain renews its own certificate: its log says why it did not) or, if it should still be valid, check the clock of this machine"
		}
		return e.Problem() + ": re-issue it on the server (flower-certs --force) or, if it should still be valid, check the clock of this machine"
	case transport.KindNotYetValid:
		if otherIssuer(e) {
			return e.Problem() + ": check the clock of this machine and of the server"
		}
		return e.Problem() + ": check the clock of this machine and of the server, or re-issue the certificate (flower-certs --force)"
	case transport.KindNameMismatch:
		return f.nameMismatch(e, port)
	case transport.KindPlaintextPeer:
		return e.Problem() + "; it may run with --insecure: pass --insecure, or start it with certificates"
	case transport.KindTLSPeer:
		return e.Problem() + "; drop --insecure and pass --root-certificates with the CA certificate that signed its certificate"
	case transport.KindUnspecifiedAddress:
		return "--server " + unspecified(e.Addr, port)
	case transport.KindNetwork:
		msg := e.Problem() + ": check that it runs and that --server names it"
		if e.Closed && f.Insecure {
			msg += "; if the server speaks TLS, drop --insecure and pass --root-certificates"
		}
		if host, _, _ := net.SplitHostPort(e.Addr); !f.Insecure && f.TLSServerName == "" && isUnspecified(host) {
			msg += "; besides, --server " + unspecified(e.Addr, port)
		}
		return msg
	case transport.KindClientCertRefused:
		return f.clientCertRefused(e)
	}
	return ""
}

// otherIssuer reports whether the server's certificate is known and was
// not made by flower-certs: one from an ACME CA (or another), which
// flower-certs cannot re-issue, so a fix must not send the operator there.
func otherIssuer(e *transport.Error) bool {
	return e.Cert != nil && !certfmt.MadeBySepal(e.Cert)
}

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// unspecified explains TLS to 0.0.0.0 or :: (addr), after "--server ".
func unspecified(addr, port string) string {
	host, _, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("%s: %s is an address servers listen on, not one to dial: pass --server 127.0.0.1:%s or the SuperLink's host name (a name its certificate holds)",
		addr, host, port)
}

// nameMismatch explains a server certificate that does not hold the name
// checked.
func (f *Flags) nameMismatch(e *transport.Error, port string) string {
	if e.Holds == "" {
		return e.Problem() + ": re-issue it with the server's names (flower-certs --host NAME --force)"
	}
	checked := "the name dialled"
	if f.TLSServerName != "" {
		checked = "the name --tls-server-name asks for"
	}
	where := "the server"
	if e.Addr != "" {
		where = "the server at " + e.Addr
	}
	example := ""
	if len(e.Names) > 0 {
		example = fmt.Sprintf(" (e.g. --server %s)", net.JoinHostPort(e.Names[0], port))
	}
	reissue := fmt.Sprintf(", or re-issue the certificate for %s (flower-certs --host %s --force)", e.Name, e.Name)
	switch {
	case otherIssuer(e) && net.ParseIP(e.Name) != nil:
		// An ACME certificate holds DNS names: dial one.
		reissue = ""
	case otherIssuer(e):
		// An ACME certificate (or another CA's) holds the names it was
		// obtained for.
		reissue = fmt.Sprintf(", or have the SuperLink obtain its certificate for %s too (with ACME: --acme-domain %s)", e.Name, e.Name)
	}
	return fmt.Sprintf("the certificate of %s does not hold %q, %s; it holds %s: pass --server with one of its names and the port%s, or --tls-server-name with one of them%s",
		where, e.Name, checked, e.Holds, example, reissue)
}

// clientCertRefused explains the server's refusal of this client's
// certificate, or of its absence.
func (f *Flags) clientCertRefused(e *transport.Error) string {
	issue := fmt.Sprintf("flower-certs %s NAME", f.role)
	reissue := fmt.Sprintf("flower-certs %s --force NAME", f.role)
	if e.Cert != nil {
		if id, err := transport.IdentityOf(e.Cert); err == nil {
			reissue = fmt.Sprintf("flower-certs %s --force %s", id.Role, id.Name)
		}
	}
	var fix string
	switch e.Cause {
	case transport.CauseNoCertificate:
		fix = fmt.Sprintf("pass --client-certificate and --client-key with a %s certificate from the SuperLink's CA (%s on the SuperLink's machine)",
			transport.RoleName(f.role), issue)
	case transport.CauseUnknownCA:
		fix = fmt.Sprintf("pass a certificate from the SuperLink's CA (%s in the SuperLink's certificates folder)", issue)
	case transport.CauseExpired:
		fix = fmt.Sprintf("issue a new one (%s), or check the clocks", reissue)
	case transport.CauseRevoked:
		fix = fmt.Sprintf("ask the SuperLink's operator for a new one (%s)", reissue)
		if e.Alert == "tls: revoked certificate" {
			fix = "ask the SuperLink's operator for a new certificate"
		}
	case transport.CauseWrongRole:
		fix = fmt.Sprintf("pass a %s certificate (%s)", transport.RoleName(f.role), issue)
	case transport.CauseNoIdentity, transport.CauseBadCertificate:
		if e.Cert == nil {
			fix = "see the SuperLink's log for the cause"
		} else {
			fix = "pass the one from " + issue
		}
	default:
		return ""
	}
	return e.Problem() + ": " + fix
}

// wrongAPIMessage says which SuperLink API the address is and which
// flower-superlink flag sets the one to dial.
func wrongAPIMessage(e *app.WrongAPIError) string {
	want, ok := superLinkAPI[e.Want]
	if !ok {
		return ""
	}
	where := fmt.Sprintf("%s connect to the SuperLink's %s: the port of flower-superlink's %s (default %s), such as --server %s",
		strings.ToUpper(want.who[:1])+want.who[1:], e.Want, want.flag, want.port, e.Instead)
	if found, ok := superLinkAPI[e.Found]; ok {
		return fmt.Sprintf("%s is the SuperLink's %s, where %s connect, not its %s. %s", e.Addr, e.Found, found.who, e.Want, where)
	}
	return fmt.Sprintf("%s does not serve the SuperLink's %s (it answered: %s); is it a SuperLink? %s", e.Addr, e.Want, e.Answer, where)
}
