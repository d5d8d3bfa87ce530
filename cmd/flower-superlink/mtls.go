package main

// This file is who may connect: the client CA and CRL flags of mutual TLS,
// the credentials they make for each API, the Driver API's loopback default
// with --acme-domain, and the warning for a Driver API open to the network.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/transport"
)

// acmeDriverAddress is the Driver API's default address with --acme-domain:
// a SuperLink that serves the internet keeps the API that controls every run
// on loopback unless told otherwise.
const acmeDriverAddress = "127.0.0.1:9091"

// Flag names.
const (
	fleetClientCAFlag  = "fleet-api-client-ca"
	driverClientCAFlag = "driver-api-client-ca"
	clientCRLFlag      = "client-crl"
)

// mtlsFlags are the flags of mutual TLS, and the sources they make.
type mtlsFlags struct {
	fs                     *pflag.FlagSet
	fleetCA, driverCA, crl string
	fleetSrc, driverSrc    *certfile.ClientCAFile // nil: that API asks for no client certificate
	refusals               *refusalLog
}

// registerMTLSFlags adds the mutual TLS flags to fs.
func registerMTLSFlags(fs *pflag.FlagSet) *mtlsFlags {
	m := &mtlsFlags{fs: fs}
	fs.StringVar(&m.fleetCA, fleetClientCAFlag, "", "require node certificates on the Fleet API: the PEM CA certificate(s) that issue them, such as certificates/ca.crt (flower-certs node NAME issues them); Flower 1.8.0 SuperNodes cannot present one")
	fs.StringVar(&m.driverCA, driverClientCAFlag, "", "require ServerApp certificates on the Driver API: the PEM CA certificate(s) that issue them, such as certificates/ca.crt (flower-certs serverapp issues them); may be the same file as --"+fleetClientCAFlag)
	fs.StringVar(&m.crl, clientCRLFlag, "", "PEM CRL of revoked client certificates, signed by the client CA, such as certificates/crl.pem (flower-certs revoke NAME writes it); reloaded with the certificates")
	return m
}

// enabled reports whether any API requires client certificates.
func (m *mtlsFlags) enabled() bool { return m.fleetCA != "" || m.driverCA != "" }

// check refuses flags that cannot work together (a *cli.UsageError naming
// them), and gives the Driver API its loopback default in ACME mode.
func (m *mtlsFlags) check(c *config) error {
	for _, f := range []string{fleetClientCAFlag, driverClientCAFlag, clientCRLFlag} {
		if m.fs.Changed(f) && m.fs.Lookup(f).Value.String() == "" {
			return cli.Usagef("--%s is empty: give the path of a PEM file", f)
		}
	}
	if m.crl != "" && !m.enabled() {
		return cli.Usagef("--%s needs --%s or --%s: a CRL revokes client certificates, which only they ask for", clientCRLFlag, fleetClientCAFlag, driverClientCAFlag)
	}
	if m.enabled() && c.mode == modeInsecure {
		f := fleetClientCAFlag
		if m.fleetCA == "" {
			f = driverClientCAFlag
		}
		return cli.Usagef("--insecure and --%s conflict: client certificates need TLS; pass --certificates (or --acme-domain) instead of --insecure", f)
	}
	if c.mode == modeACME && !m.fs.Changed("driver-api-address") {
		c.driverAddr = acmeDriverAddress
	}
	return nil
}

// load checks the client CA and CRL files (the same start-up checks as the
// server certificate) and starts their reload (every poll until ctx ends,
// and on SIGHUP through hup). Nothing listens yet: a bad file stops the
// command here, with an error naming the flag.
func (m *mtlsFlags) load(ctx context.Context, log *slog.Logger, poll time.Duration, hup *cli.Hangup) error {
	if !m.enabled() {
		return nil
	}
	m.refusals = &refusalLog{log: log, seen: map[string]time.Time{}}
	open := func(flag, file string) (*certfile.ClientCAFile, error) {
		s, err := certfile.NewClientCAFile(certfile.ClientCAOptions{CAFile: file, CRLFile: m.crl, PollInterval: poll,
			Logger: log.With("client_ca_flag", "--"+flag), Remedies: certfix.Remedy})
		if err != nil {
			return nil, fmt.Errorf("--%s: %w", flag, err)
		}
		what := "client CA --" + flag
		if m.crl != "" {
			what += " and CRL --" + clientCRLFlag
		}
		hup.Add(what, func() error { return certfix.Reword(s.Reload()) })
		go s.Run(ctx) // returns nil when ctx ends; failures are logged
		return s, nil
	}
	var err error
	if m.fleetCA != "" {
		if m.fleetSrc, err = open(fleetClientCAFlag, m.fleetCA); err != nil {
			return err
		}
	}
	switch {
	case m.driverCA == "":
	case m.driverCA == m.fleetCA:
		m.driverSrc = m.fleetSrc // one file, one source
	default:
		if m.driverSrc, err = open(driverClientCAFlag, m.driverCA); err != nil {
			return err
		}
	}
	return nil
}

// credentials returns the credentials of each API: creds (the server
// certificate alone) where no client CA was given, and client certificates
// of the API's role required where one was.
func (m *mtlsFlags) credentials(src transport.CertSource, creds credentials.TransportCredentials) (fleet, driver credentials.TransportCredentials) {
	fleet, driver = creds, creds
	if m.fleetSrc != nil {
		fleet = transport.ClientAuthCredentials(src, transport.ClientAuth{CAs: m.fleetSrc, Role: transport.RoleNode, Refused: m.refusals.hook("fleet")})
	}
	if m.driverSrc != nil {
		driver = transport.ClientAuthCredentials(src, transport.ClientAuth{CAs: m.driverSrc, Role: transport.RoleServerApp, Refused: m.refusals.hook("driver")})
	}
	return fleet, driver
}

// attrs says who may connect, for the "serving" log line.
func (m *mtlsFlags) attrs() []any {
	who := func(ca, role string) string {
		if ca == "" {
			return "any client"
		}
		return transport.RoleName(role) + " certificates from " + ca
	}
	attrs := []any{"fleet_api_clients", who(m.fleetCA, transport.RoleNode), "driver_api_clients", who(m.driverCA, transport.RoleServerApp)}
	if m.crl != "" {
		attrs = append(attrs, "client_crl", m.crl)
	}
	return attrs
}

// warnOpenDriver logs one warning when the Driver API listens beyond
// loopback and asks for no client certificate: then anyone who reaches the
// port controls every run.
func (m *mtlsFlags) warnOpenDriver(log *slog.Logger, addr net.Addr) {
	if m.driverSrc != nil || isLoopback(addr) {
		return
	}
	log.Warn(fmt.Sprintf("the Driver API listens on %s, beyond loopback, without client certificates: anyone who can reach that port can start runs, read every node's results and send every node the task that stops it; "+
		"bind it to loopback (--driver-api-address 127.0.0.1:9091, and run the ServerApp on this machine or through an SSH tunnel) or require ServerApp certificates (--%s certificates/ca.crt, with flower-certs serverapp)",
		addr, driverClientCAFlag), "driver_api_address", addr.String())
}

// isLoopback reports whether a listener's address is a loopback address
// (not the unspecified 0.0.0.0 or ::, which is every interface).
func isLoopback(addr net.Addr) bool {
	ap, err := netip.ParseAddrPort(addr.String())
	return err == nil && ap.Addr().IsLoopback()
}

// refusalLog logs refused client certificates, one line per distinct
// refusal (API, cause, certificate, client host) a minute, so that a client
// retrying, or a flood of handshakes, cannot fill the log.
type refusalLog struct {
	log  *slog.Logger
	mu   sync.Mutex
	seen map[string]time.Time
}

// refusalEvery is how often one distinct refusal is logged again.
const refusalEvery = time.Minute

// maxRefusalKeys bounds the memory of refusals seen.
const maxRefusalKeys = 4096

func (r *refusalLog) hook(api string) func(*transport.ClientCertError) {
	return func(e *transport.ClientCertError) {
		host, _, err := net.SplitHostPort(e.Remote)
		if err != nil {
			host = e.Remote
		}
		key := api + "|" + string(e.Cause) + "|" + e.Serial + "|" + host
		now := time.Now()
		r.mu.Lock()
		last, ok := r.seen[key]
		if ok && now.Sub(last) < refusalEvery {
			r.mu.Unlock()
			return
		}
		if len(r.seen) >= maxRefusalKeys {
			clear(r.seen)
		}
		r.seen[key] = now
		r.mu.Unlock()
		attrs := []any{"api", api, "cause", string(e.Cause), "remote", e.Remote}
		if e.Identity.Name != "" {
			attrs = append(attrs, "identity", e.Identity.String())
		}
		if e.Serial != "" {
			attrs = append(attrs, "serial", e.Serial)
		}
		r.log.Warn(refusalMessage(e), attrs...)
	}
}

// refusalMessage is e's message for the SuperLink's operator: transport's
// words for the refusal, with the flower-certs command that issues the
// client certificate.
func refusalMessage(e *transport.ClientCertError) string {
	reissue := fmt.Sprintf("flower-certs %s --force NAME", e.Role)
	if e.Identity.Name != "" {
		reissue = fmt.Sprintf("flower-certs %s --force %s", e.Identity.Role, e.Identity.Name)
	}
	var fix string
	switch e.Cause {
	case transport.CauseNoCertificate:
		fix = fmt.Sprintf("give the client one (flower-certs %s NAME) with --client-certificate and --client-key", e.Role)
	case transport.CauseUnknownCA:
		fix = fmt.Sprintf("issue it from the SuperLink's CA (flower-certs %s NAME)", e.Role)
	case transport.CauseExpired:
		fix = fmt.Sprintf("issue a new one (%s), or check the clocks", reissue)
	case transport.CauseRevoked:
		fix = fmt.Sprintf("its holder needs a new certificate to connect again (%s)", reissue)
	case transport.CauseWrongRole, transport.CauseNoIdentity:
		fix = fmt.Sprintf("issue one with flower-certs %s NAME", e.Role)
	default:
		fix = fmt.Sprintf("give the client a %s certificate of the SuperLink's CA (flower-certs %s NAME)", transport.RoleName(e.Role), e.Role)
	}
	return e.Problem() + ": " + fix
}
