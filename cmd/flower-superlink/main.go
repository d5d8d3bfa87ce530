// Command flower-superlink serves the Flower 1.8.0 Fleet API (SuperNodes)
// and Driver API (ServerApps) over gRPC with TLS, with the command line of
// Flower 1.8.0:
//
//	flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key
//
// The certificate files are checked before anything listens and reloaded
// while it serves (every --certificates-poll-interval, and at once on
// SIGHUP). SIGHUP never ends it: in the modes without certificate files it
// logs that there is nothing to reload. SIGINT or SIGTERM stop it
// gracefully (within --shutdown-grace). Under systemd socket activation
// it serves the sockets passed by name (activation.go) instead of binding
// the addresses.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/internal/postgres"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

const name = "flower-superlink"

var command = cli.Command{
	Name:     name,
	Synopsis: "serve the Flower 1.8.0 Fleet API (SuperNodes) and Driver API (ServerApps) over TLS",
	Usage:    "[flags]",
	Examples: []string{
		"flower-certs   # writes certificates/ca.crt, server.pem, server.key",
		"flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key",
		"flower-superlink --ssl-ca-certfile certificates/ca.crt --ssl-certfile certificates/server.pem --ssl-keyfile certificates/server.key",
		"flower-superlink --acme-domain superlink.example.org --acme-email ops@example.org",
		"flower-superlink --insecure   # plaintext: for a quick local test only",
	},
}

func main() {
	cli.IgnoreHangup()
	err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)
	stopProfiles()
	cli.Exit(name, err)
}

// tlsMode is how the SuperLink gets its certificate.
type tlsMode int

const (
	modeNone tlsMode = iota
	modeFiles
	modeACME
	modeInsecure
)

// config is the parsed command line.
type config struct {
	mode             tlsMode
	caFile, certFile string
	keyFile          string
	driverAddr       string
	fleetAddr        string
	database         string
	objectDir        string
	pollInterval     time.Duration
	acme             *acmeFlags
	mtls             *mtlsFlags
	limits           *limitFlags
	nodes            *nodeLimitFlags
	link129          *link129Flags
	metrics          *metricsFlags
	logFormat        string
	memory           *memoryFlags
	f129             *flower129Flags
	shutdownGrace    time.Duration
	set              map[string]bool // the flags the command line set
}

// parseArgs parses the command line (without the program name). Usage
// mistakes come back as *cli.UsageError; a command line without any way to
// serve TLS comes back as a plain error (exit 1, as Flower 1.8.0).
// cli.ErrHelp and cli.ErrVersion mean the usage or the version was printed
// to out (stdout in run).
func parseArgs(args []string, out io.Writer) (*config, error) {
	fs := cli.NewFlagSet(command, out)
	c := &config{}
	certs := &certificatesValue{}
	var sslCA, sslCert, sslKey string
	var insecureFlag bool

	fs.Var(certs, certificatesFlag, "the CA certificate, server certificate and server private key (PEM), three values after the one flag as in Flower 1.8.0; flower-certs writes them to certificates/")
	fs.StringVar(&sslCA, "ssl-ca-certfile", "", "the CA certificate (PEM); the Flower 1.9+ spelling, with --ssl-certfile and --ssl-keyfile")
	fs.StringVar(&sslCert, "ssl-certfile", "", "the server certificate (PEM), leaf first then any intermediates")
	fs.StringVar(&sslKey, "ssl-keyfile", "", "the server private key (PEM)")
	fs.BoolVar(&insecureFlag, "insecure", false, "serve plaintext gRPC without TLS: anyone on the network can read and change the traffic")
	fs.DurationVar(&c.pollInterval, "certificates-poll-interval", 5*time.Second, "how often the certificate files are checked for a change (SIGHUP reloads at once)")
	fs.DurationVar(&c.shutdownGrace, shutdownGraceFlag, defaultShutdownGrace, "on SIGTERM or SIGINT, how long the calls in flight may take to finish before they are cut (0: cut them at once)")
	c.acme = registerACMEFlags(fs)
	c.mtls = registerMTLSFlags(fs)
	c.metrics = registerMetricsFlags(fs)
	c.memory = registerMemoryFlags(fs)
	fs.StringVar(&c.driverAddr, "driver-api-address", "0.0.0.0:9091", "Driver API (ServerApps) address, HOST:PORT; with --acme-domain the default is "+acmeDriverAddress)
	fs.StringVar(&c.fleetAddr, "grpc-rere-fleet-api-address", "0.0.0.0:9092", "Fleet API (SuperNodes) address, HOST:PORT")
	fs.Bool("grpc-rere", false, "the Fleet API type, gRPC request-response: the only one served, accepted as in Flower 1.8.0")
	restAPI := fs.Bool("rest", false, "the REST Fleet API of Flower 1.8.0: not built")
	_ = fs.MarkHidden("rest")
	registerDatabaseFlag(fs, &c.database)
	registerObjectDirFlag(fs, &c.objectDir)
	c.limits = registerLimitFlags(fs)
	c.f129 = registerFlower129Flags(fs)
	c.nodes = registerNodeLimitFlags(fs)
	c.link129 = registerLink129Flags(fs)

	files, rest, err := splitCertificates(fs, args)
	if err != nil {
		return nil, err
	}
	if err := cli.Parse(fs, rest); err != nil {
		return nil, err
	}
	if err := cli.NoArgs(fs, ""); err != nil {
		return nil, err
	}
	c.logFormat = cli.LogFormat(fs)
	c.set = map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { c.set[f.Name] = true })
	if c.shutdownGrace < 0 || c.shutdownGrace > maxShutdownGrace {
		return nil, cli.Usagef("--%s %v: must be from 0 to %v (the default %v suits most; see --help)", shutdownGraceFlag, c.shutdownGrace, maxShutdownGrace, defaultShutdownGrace)
	}
	if err := c.metrics.check(); err != nil {
		return nil, err
	}
	if err := c.limits.check(); err != nil {
		return nil, err
	}
	if *restAPI {
		return nil, cli.Usagef("--rest: the REST Fleet API is not built; Sepal serves the gRPC Fleet API (--grpc-rere, the default) that SuperNodes use")
	}

	// How the certificate comes: exactly one way.
	var given []string
	if files != nil {
		certs.files = files
		c.caFile, c.certFile, c.keyFile = files[0], files[1], files[2]
		c.mode = modeFiles
		given = append(given, "--certificates")
	}
	ssl := []struct{ flag, value string }{{"--ssl-ca-certfile", sslCA}, {"--ssl-certfile", sslCert}, {"--ssl-keyfile", sslKey}}
	var sslGiven, sslMissing []string
	for _, s := range ssl {
		if fs.Changed(strings.TrimPrefix(s.flag, "--")) {
			sslGiven = append(sslGiven, s.flag)
		} else {
			sslMissing = append(sslMissing, s.flag)
		}
	}
	if len(sslGiven) > 0 {
		given = append(given, strings.Join(sslGiven, "/"))
	}
	if insecureFlag {
		given = append(given, "--insecure")
	}
	if c.acme.enabled() {
		given = append(given, "--acme-domain")
	}
	if len(given) > 1 {
		return nil, cli.Usagef("%s conflict: pass only one of --certificates, --ssl-*, --acme-domain or --insecure", strings.Join(given, " and "))
	}
	if err := c.acme.check(); err != nil { // --acme-* flags without --acme-domain, bad ACME values
		return nil, err
	}
	if err := c.memory.check(); err != nil {
		return nil, err
	}
	switch {
	case len(sslGiven) > 0:
		if len(sslMissing) > 0 {
			return nil, cli.Usagef("%s needs %s too: --ssl-ca-certfile CA_CERT --ssl-certfile SERVER_CERT --ssl-keyfile PRIVATE_KEY", strings.Join(sslGiven, " and "), strings.Join(sslMissing, " and "))
		}
		c.caFile, c.certFile, c.keyFile = sslCA, sslCert, sslKey
		c.mode = modeFiles
		for _, s := range ssl {
			if s.value == "" {
				return nil, cli.Usagef("%s is empty: give the path of a PEM file", s.flag)
			}
		}
	case insecureFlag:
		c.mode = modeInsecure
	case c.acme.enabled():
		c.mode = modeACME
	case c.mode == modeNone:
		return nil, errors.New("certificates are required unless running with --insecure: pass " + certificatesForm +
			" (flower-certs writes them to certificates/), the 1.9+ spelling --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile," +
			" --acme-domain NAME for a certificate from Let's Encrypt, or --insecure for plaintext")
	}

	if err := checkDatabase(c.database); err != nil {
		return nil, err
	}
	if err := checkObjectDir(c.objectDir, c.database, fs.Changed("object-dir")); err != nil {
		return nil, err
	}
	if err := c.f129.check(c); err != nil {
		return nil, err
	}
	if err := c.mtls.check(c); err != nil {
		return nil, err
	}
	if err := c.link129.check(); err != nil {
		return nil, err
	}
	if err := c.nodes.check(c.mtls); err != nil {
		return nil, err
	}
	if fs.Changed("certificates-poll-interval") && c.mode != modeFiles && !c.mtls.enabled() {
		return nil, cli.Usagef("--certificates-poll-interval needs --certificates, --ssl-certfile or a client CA: only certificate files are polled")
	}
	if c.pollInterval < minPollInterval {
		return nil, cli.Usagef("--certificates-poll-interval %v: must be at least %v (for example 5s); SIGHUP reloads at once", c.pollInterval, minPollInterval)
	}
	if err := checkAddresses(c); err != nil {
		return nil, err
	}
	return c, nil
}

// run is the whole command: parse, check the certificate, listen, serve
// until ctx ends or a signal arrives. It returns nil after a graceful stop.
// A certificate file's error names the flower-certs command that fixes it
// (certfix), as do the reload failures it logs.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	defer func() { err = certfix.Reword(err) }()
	c, err := parseArgs(args, stdout)
	if err != nil {
		return err
	}
	log := cli.NewFormatLogger(stderr, slog.LevelInfo, c.logFormat)
	// The sockets systemd passed, taken first, so that no process started
	// later (flower-superexec) inherits them.
	socks, err := inheritSockets()
	if err != nil {
		return err
	}
	defer socks.close()
	mon := c.metrics.monitor(log, socks.has(socketMetrics))

	ctx, hup, stop := cli.Signals(ctx, log)
	defer stop()
	hangupBefore(hup, c.mode)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	// The certificate first: bad input stops us before anything listens.
	var src transport.CertSource
	var creds credentials.TransportCredentials
	switch c.mode {
	case modeFiles:
		fsrc, err := certfile.NewFileSource(certfile.FileSourceOptions{
			CAFile:       c.caFile,
			CertFile:     c.certFile,
			KeyFile:      c.keyFile,
			PollInterval: c.pollInterval,
			Logger:       log,
			Remedies:     certfix.Remedy,
			OnReload:     mon.fileReload(),
		})
		if err != nil {
			return err
		}
		src = fsrc
		hangupSource(hup, fsrc)
	case modeACME:
		c.acme.onEvent = mon.acmeEvent()
		asrc, err := c.acme.source(ctx, log)
		if err != nil {
			return err
		}
		src = asrc
	case modeInsecure:
		creds = insecure.NewCredentials()
	}
	if src != nil {
		creds = transport.ServerCredentials(src)
		if r, ok := src.(transport.Runner); ok {
			ran := make(chan struct{})
			go func() {
				defer close(ran)
				if err := r.Run(ctx); err != nil {
					cancel(fmt.Errorf("certificate source stopped: %w", err))
				}
			}()
			// On the way out, after ctx is cancelled: the source's Run
			// ends before the process does (a shared ACME storage then
			// releases its locks, so other SuperLinks need not wait for
			// their leases).
			defer func() { <-ran }()
			defer cancel(nil)
		}
	}

	if err := c.mtls.load(ctx, log, c.pollInterval, hup); err != nil {
		return err
	}
	mon.watchCRL(c.mtls)
	fleetCreds, driverCreds := c.mtls.credentials(src, creds)

	// A SQLite file deleted or replaced while served ends the run, with
	// exit 1: health turns NOT_SERVING, the calls in flight end, and a
	// supervisor starts the SuperLink again on the file now at the path.
	st, err := openDatabase(ctx, c.database, c.objectDir, c.link129.linkLimits(c.nodes.maxNodes), log, func(err error) { cancel(err) })
	if err != nil {
		return err
	}
	defer st.Close()

	driverLis, err := socks.open(socketDriver, "--driver-api-address", c.driverAddr, c.set["driver-api-address"])
	if err != nil {
		return err
	}
	fleetFlag := "grpc-rere-fleet-api-address"
	if c.set["fleet-api-address"] {
		fleetFlag = "fleet-api-address"
	}
	fleetLis, err := socks.open(socketFleet, "--"+fleetFlag, c.fleetAddr, c.set[fleetFlag])
	if err != nil {
		driverLis.Close()
		return err
	}

	driverLis, appIoLis, controlLis, err := c.f129.listeners(c, driverLis, log, socks)
	if err != nil {
		fleetLis.Close()
		driverLis.Close()
		return err
	}
	if err := mon.start(ctx, src, fleetLis, driverLis, controlLis, socks, c.set[metricsAddressFlag]); err != nil {
		fleetLis.Close()
		driverLis.Close()
		appIoLis.Close()
		if controlLis != nil {
			controlLis.Close()
		}
		return err
	}
	fleetCreds, driverCreds = mon.credentials(fleetCreds), mon.credentials(driverCreds)
	memAttrs := c.memory.apply()
	grace := max(c.shutdownGrace, time.Nanosecond) // 0 cuts at once; the library's zero is its default
	sl := superlink.New(superlink.Options{Logger: log, Limits: c.limits.limits(), NodeLimits: c.nodes.limits(), Revocations: c.mtls.revocations(),
		State: st, ServerOptions: mon.serverOptions(), Flower129: c.link129.control(superlink.Flower129Options{KeysOnly: c.f129.keysOnly}), ShutdownGrace: grace})
	mon.watch(sl)
	served := make(chan error, 1)
	go func() {
		served <- sl.Serve(ctx, superlink.Listeners{
			Fleet: fleetLis, Driver: driverLis, ServerAppIo: appIoLis, Control: controlLis,
			FleetCreds: fleetCreds, DriverCreds: driverCreds, ControlCreds: mon.credentials(creds),
			ServerAppIoPeers: c.f129.appIoPeers(),
		})
	}()

	// An ACME source obtains its certificates only now, so that the Fleet
	// API listener itself answers the TLS-ALPN-01 validation; until they
	// are in, it refuses every other handshake, and we do not say we serve.
	// A stop (SIGINT, SIGTERM) while it waits ends Obtain too: that is a
	// graceful stop, not a failure to obtain.
	if o, ok := src.(obtainer); ok {
		if err := o.Obtain(ctx); err != nil && ctx.Err() == nil {
			err = obtainError(err, c.acme.caRoot)
			cancel(err)
			<-served
			return err
		}
	}
	if ctx.Err() != nil {
		return finish(ctx, log, <-served)
	}

	if c.mode == modeInsecure {
		log.Warn("serving WITHOUT TLS (--insecure): anyone on the network can read and change the traffic; use --certificates (flower-certs makes them) or --acme-domain")
	}
	attrs := []any{
		"fleet_api_address", fleetLis.Addr().String(),
		"driver_api_address", driverLis.Addr().String(),
		"database", postgres.Redact(c.database), // a connection string is logged without its password
		"version", cli.Version,
	}
	attrs = append(attrs, c.limits.attrs()...)
	attrs = append(attrs, c.nodes.attrs(c.mtls)...)
	attrs = append(attrs, c.link129.attrs()...)
	attrs = append(attrs, memAttrs...)
	if src != nil {
		attrs = append(attrs, "tls_min_version", tls.VersionName(transport.ServerConfig(src).MinVersion))
		attrs = append(attrs, certificateAttrs(src)...)
	} else {
		attrs = append(attrs, "tls", false)
	}
	attrs = append(attrs, mon.attrs()...)
	attrs = append(attrs, "serverappio_api_address", appIoLis.Addr().String(), "isolation", c.f129.isolation)
	if controlLis != nil {
		attrs = append(attrs, "control_api_address", controlLis.Addr().String())
	}
	if names := socks.names(); names != "" {
		attrs = append(attrs, "systemd_sockets", names)
	}
	attrs = append(attrs, "shutdown_grace", c.shutdownGrace.String())
	if c.f129.isolation == "subprocess" {
		superExecDone := make(chan struct{})
		go func() {
			defer close(superExecDone)
			runSuperExec(ctx, appIoDialAddress(appIoLis.Addr()), log)
		}()
		defer func() { <-superExecDone }()
	}
	mon.serving()
	log.Info("serving", append(attrs, c.mtls.attrs()...)...)
	c.mtls.warnOpenDriver(log, driverLis.Addr())
	if controlLis != nil {
		warnOpenControl(log, controlLis.Addr())
	}
	return finish(ctx, log, <-served)
}

// finish is the end of run once Serve returned err: the error of Serve, or
// why ctx was cancelled (other than a stop signal), or nil after logging
// the graceful stop.
func finish(ctx context.Context, log *slog.Logger, err error) error {
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// The bound of a graceful stop (--shutdown-grace). A Flower 1.8.0
// ServerApp's calls (polls every second, its pushes and pulls of a model
// on loopback or a LAN) finish in well under a second; a SuperNode's
// push of a large model over a slow link may take minutes, but a
// SuperNode retries a call that was cut, while a 1.8.0 ServerApp retries
// nothing. Connections made during the stop wait in the socket's queue
// under socket activation, and gRPC clients (Flower's grpcio, grpc-go)
// give up a connection attempt after 20 s: the grace plus the next
// start must stay well under that. 8 s leaves 12 s for the start (under
// a second here) and fits, with the state's close, in the 10 s that
// Docker and Podman give a container to stop before they kill it.
const (
	shutdownGraceFlag    = "shutdown-grace"
	defaultShutdownGrace = 8 * time.Second
	maxShutdownGrace     = time.Hour
)

// minPollInterval keeps --certificates-poll-interval from turning the
// reload into a busy loop that reads three files without pause.
const minPollInterval = 100 * time.Millisecond

// obtainer is a certificate source that obtains its certificates once the
// listeners are open (ACME, whose validation the Fleet listener answers).
type obtainer interface {
	Obtain(ctx context.Context) error
}

// listen binds addr, turning the usual failures into a message that names
// the flag and says what to do.
func listen(addr, flag string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	switch {
	case err == nil:
		return l, nil
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("%s %s: the address is already in use (another SuperLink?); stop it or pass a free HOST:PORT: %w", flag, addr, err)
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("%s %s: permission denied (ports below 1024 need privileges); pass a port above 1024: %w", flag, addr, err)
	default:
		return nil, fmt.Errorf("%s %s: cannot listen: %w", flag, addr, err)
	}
}

// certificateAttrs returns what the certificate behind src says about
// itself (never the key) as log attributes, or nil when the source cannot
// answer without a server name (ACME sources log their own certificates).
// The sources warn about a certificate close to its expiry themselves (the
// file source within 30 days; ACME renews on its own).
func certificateAttrs(src transport.CertSource) []any {
	cert, err := src.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		return nil
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil
		}
	}
	sans := append([]string(nil), leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		sans = append(sans, ip.String())
	}
	return []any{
		"subject", leaf.Subject.String(),
		"sans", strings.Join(sans, ","),
		"issuer", leaf.Issuer.String(),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339),
	}
}
