package main

// This file is the seam between flower-superlink and the acme package: the
// --acme-* flags and the CertSource they build.
//
// --acme-storage is a folder, or a PostgreSQL connection string: then the
// account, the certificates, the challenge tokens and certmagic's locks
// are in that database, shared by every SuperLink given the same one, so
// that one certificate is ordered once and served by all. When
// --acme-storage is not given and --database is a PostgreSQL connection
// string, the ACME storage is that same database (its own tables beside
// the state's): replicas that share their state share their certificate,
// with nothing more to set up.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/acme"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/postgres"
	"github.com/sepal-fl/sepal/transport"
)

// fleetAddressFlag is the flag whose address answers TLS-ALPN-01.
const fleetAddressFlag = "grpc-rere-fleet-api-address"

// acmeFlags are the --acme-* flags.
type acmeFlags struct {
	fs            *pflag.FlagSet
	domains       []string
	email         string
	ca            string
	caRoot        string
	storage       string
	challenge     string
	httpAddress   string
	client        string
	timeout       time.Duration
	renewInterval time.Duration
	renewWindow   float64
	storageCheck  time.Duration
	onEvent       func(acme.Event) // metrics, when --metrics-address is given
}

// acmeFlagNames lists every --acme-* flag but --acme-domain.
var acmeFlagNames = []string{"acme-email", "acme-ca", "acme-ca-root", "acme-storage", "acme-challenge",
	"acme-http-address", "acme-client", "acme-timeout", "acme-renew-interval", "acme-renew-window",
	"acme-storage-check-interval"}

// certFlagNames are the flags that supply a certificate some other way.
var certFlagNames = []string{"certificates", "ssl-ca-certfile", "ssl-certfile", "ssl-keyfile", "insecure"}

// registerACMEFlags adds the --acme-* flags to fs.
func registerACMEFlags(fs *pflag.FlagSet) *acmeFlags {
	a := &acmeFlags{fs: fs}
	fs.StringArrayVar(&a.domains, "acme-domain", nil, "obtain and renew the certificate for this domain from an ACME CA such as Let's Encrypt (repeatable; the first is served to clients without SNI)")
	fs.StringVar(&a.email, "acme-email", "", "contact address of the ACME account, for expiry and incident mail (optional; never prompted for)")
	fs.StringVar(&a.ca, "acme-ca", "", "ACME directory URL, or \"staging\" for Let's Encrypt staging (default Let's Encrypt production)")
	fs.StringVar(&a.caRoot, "acme-ca-root", "", "PEM file of roots that the ACME server's own HTTPS chains to (a private CA or pebble; default system roots)")
	fs.StringVar(&a.storage, "acme-storage", "", "folder for the ACME account and certificates, created 0700 (default "+acme.DefaultStorage()+"), "+
		"or a PostgreSQL connection string that several SuperLinks share (postgres://USER@HOST/DB or host=HOST dbname=DB; "+
		"password from PGPASSWORD or PGPASSFILE; the default when --database is PostgreSQL)")
	fs.StringVar(&a.challenge, "acme-challenge", acme.ChallengeTLSALPN01, "challenge type: tls-alpn-01 (answered on the Fleet API listener; the CA connects to port 443) or http-01 (answered on --acme-http-address; the CA connects to port 80)")
	fs.StringVar(&a.httpAddress, "acme-http-address", ":80", "where the HTTP-01 responder listens (with --acme-challenge http-01)")
	fs.StringVar(&a.client, "acme-client", acme.ClientCertmagic, "ACME client: certmagic or autocert")
	fs.DurationVar(&a.timeout, "acme-timeout", acme.DefaultStartupTimeout, "how long start-up may take to obtain the certificates before it fails")
	fs.DurationVar(&a.renewInterval, "acme-renew-interval", 0, "how often to check certificates for renewal (certmagic; default 10m)")
	fs.Float64Var(&a.renewWindow, "acme-renew-window", 0, "part of a certificate's lifetime, at its end, in which to renew it (certmagic; default 1/3)")
	fs.DurationVar(&a.storageCheck, "acme-storage-check-interval", 0, "how often to look in a shared storage for a certificate renewed by another SuperLink (certmagic; default 1m)")
	_ = fs.MarkHidden("acme-renew-interval")
	_ = fs.MarkHidden("acme-renew-window")
	_ = fs.MarkHidden("acme-storage-check-interval")
	return a
}

// enabled reports whether any --acme-* flag asks for ACME.
func (a *acmeFlags) enabled() bool { return len(a.domains) > 0 }

// check refuses --acme-* flags without --acme-domain, ACME mixed with
// another certificate source, and bad values, each in one line naming the
// flag (a *cli.UsageError). The command calls it after parsing, whether or
// not ACME is enabled; source calls it too.
func (a *acmeFlags) check() error {
	if !a.enabled() {
		for _, n := range acmeFlagNames {
			if a.fs.Changed(n) {
				return cli.Usagef("--%s needs --acme-domain", n)
			}
		}
		return nil
	}
	for _, n := range certFlagNames {
		if a.fs.Changed(n) {
			return cli.Usagef("--acme-domain and --%s conflict: ACME supplies the certificate; use one of them", n)
		}
	}
	for _, d := range a.domains {
		if err := acme.ValidateDomain(d); err != nil {
			return cli.Usagef("--acme-domain: %v", err)
		}
	}
	if err := acme.ValidateEmail(a.email); err != nil {
		return cli.Usagef("--acme-email: %v", err)
	}
	if _, err := acme.ResolveCA(a.ca); err != nil {
		return cli.Usagef("--acme-ca %q: give an https:// ACME directory URL, or \"staging\"", a.ca)
	}
	switch a.challenge {
	case acme.ChallengeTLSALPN01, acme.ChallengeHTTP01:
	default:
		return cli.Usagef("--acme-challenge %q: use tls-alpn-01 or http-01", a.challenge)
	}
	if a.fs.Changed("acme-http-address") && a.challenge != acme.ChallengeHTTP01 {
		return cli.Usagef("--acme-http-address needs --acme-challenge http-01")
	}
	if a.challenge == acme.ChallengeHTTP01 {
		if _, _, err := net.SplitHostPort(a.httpAddress); err != nil {
			return cli.Usagef("--acme-http-address %q: want host:port, such as :80", a.httpAddress)
		}
	}
	switch a.client {
	case acme.ClientCertmagic, acme.ClientAutocert:
	default:
		return cli.Usagef("--acme-client %q: use certmagic or autocert", a.client)
	}
	if a.timeout <= 0 {
		return cli.Usagef("--acme-timeout %v: must be positive, such as 3m", a.timeout)
	}
	if a.renewInterval < 0 {
		return cli.Usagef("--acme-renew-interval %v: must not be negative", a.renewInterval)
	}
	if a.renewWindow < 0 || a.renewWindow >= 1 {
		return cli.Usagef("--acme-renew-window %v: must be in [0, 1)", a.renewWindow)
	}
	if a.storageCheck < 0 {
		return cli.Usagef("--acme-storage-check-interval %v: must not be negative", a.storageCheck)
	}
	if dsn, flag := a.postgresStorage(); dsn != "" && a.client == acme.ClientAutocert {
		return cli.Usagef("--acme-client autocert cannot keep its certificates in PostgreSQL (%s): use --acme-client certmagic (the default), or give --acme-storage a folder", flag)
	}
	return nil
}

// postgresStorage returns the PostgreSQL connection string that the ACME
// storage is in, and the flag that gave it: --acme-storage when it is one,
// else --database when it is one and --acme-storage is not given; "" when
// the storage is a folder.
func (a *acmeFlags) postgresStorage() (dsn, flag string) {
	if a.storage != "" {
		if postgres.IsDSN(a.storage) {
			return a.storage, "--acme-storage"
		}
		return "", ""
	}
	if f := a.fs.Lookup("database"); f != nil && postgres.IsDSN(f.Value.String()) {
		return f.Value.String(), "--database"
	}
	return "", ""
}

// fleetAddress is the Fleet API address, where TLS-ALPN-01 is answered.
func (a *acmeFlags) fleetAddress() string {
	if f := a.fs.Lookup(fleetAddressFlag); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	return "0.0.0.0:9092"
}

// source builds the ACME CertSource without obtaining anything yet (the
// HTTP-01 responder, if used, already listens). The caller opens the
// listeners with it, then calls its Obtain(ctx), which obtains (or loads
// from storage) a certificate for every domain within --acme-timeout, the
// Fleet API listener answering TLS-ALPN-01. The result is also a
// transport.Runner (renewal, the HTTP-01 responder) and a
// transport.ALPNSource (acme-tls/1 with tls-alpn-01); the caller runs it
// in the background.
func (a *acmeFlags) source(ctx context.Context, log *slog.Logger) (transport.CertSource, error) {
	if err := a.check(); err != nil {
		return nil, err
	}
	// Files first, so their errors name the flag.
	if a.caRoot != "" {
		data, err := os.ReadFile(a.caRoot)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-root: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("--acme-ca-root %s holds no PEM certificate: give the roots that the ACME server's own HTTPS chains to (for pebble, test/certs/pebble.minica.pem)", a.caRoot)
		}
	}
	var pg *acme.PostgresStorage
	storage := a.storage
	if dsn, flag := a.postgresStorage(); dsn != "" {
		// The start-up check of the database: reachable, credentials,
		// schema version, before anything listens; one message if not.
		what := flag
		if flag == "--database" {
			what = "--database (the ACME storage too, as --acme-storage is not given)"
		}
		octx, cancel := context.WithTimeout(ctx, postgresCheckTimeout)
		var err error
		pg, err = acme.OpenPostgresStorage(octx, dsn, acme.PostgresOptions{What: what, Logger: log})
		cancel()
		if err != nil {
			return nil, err
		}
		log.Info("ACME account, certificates and locks in PostgreSQL, shared with every SuperLink on the same database",
			"storage", pg.String(), "from", flag)
		storage = ""
	} else {
		if storage == "" {
			storage = acme.DefaultStorage()
		}
		if err := os.MkdirAll(storage, 0o700); err != nil {
			return nil, fmt.Errorf("--acme-storage: cannot create the folder: %w", err)
		}
		if err := acme.CheckStorage(storage); err != nil {
			return nil, fmt.Errorf("--acme-storage: %w", err)
		}
	}
	o := acme.Options{
		Domains:              a.domains,
		Email:                a.email,
		CA:                   a.ca,
		CARootFile:           a.caRoot,
		Storage:              storage,
		Challenge:            a.challenge,
		TLSALPNAddress:       a.fleetAddress(),
		HTTPAddress:          a.httpAddress,
		Client:               a.client,
		StartupTimeout:       a.timeout,
		RenewCheckInterval:   a.renewInterval,
		RenewalWindowRatio:   a.renewWindow,
		StorageCheckInterval: a.storageCheck,
		Logger:               log,
		OnEvent:              a.onEvent,
	}
	if pg != nil {
		o.CertmagicStorage = pg
	}
	src, err := acme.Prepare(o)
	if err != nil && pg != nil {
		pg.Close()
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "listen" && a.challenge == acme.ChallengeHTTP01 {
		// The one listener Prepare opens: the HTTP-01 responder's.
		return nil, fmt.Errorf("--acme-http-address %s: %w", a.httpAddress, err)
	}
	if err != nil {
		return nil, err
	}
	if pg != nil {
		return &sharedSource{Source: src, storage: pg}, nil
	}
	return src, nil
}

// postgresCheckTimeout bounds the start-up check of a PostgreSQL storage.
const postgresCheckTimeout = 30 * time.Second

// sharedSource is an ACME source on a PostgreSQL storage, which it closes
// (releasing the locks it holds, so other SuperLinks need not wait for
// their leases) when it stops. Every other ability is the Source's.
type sharedSource struct {
	*acme.Source
	storage *acme.PostgresStorage
}

// Run runs the source until ctx ends, then closes the storage.
func (s *sharedSource) Run(ctx context.Context) error {
	err := s.Source.Run(ctx)
	s.storage.Close()
	return err
}
