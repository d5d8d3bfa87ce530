// Command flower-demo runs Sepal's main job in one command: it makes
// certificates, starts a SuperLink on free loopback ports, starts client
// apps that verify the SuperLink against the new CA, runs a few FedAvg
// rounds with the server app, prints what happened and stops everything.
//
// All pieces run in this process but talk to each other as separate
// programs would: real gRPC over real TLS on 127.0.0.1.
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
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/state/memstate"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

const name = "flower-demo"

// The demo polls faster than Flower 1.8.0 (nodes every 3 s, server app every
// 1-3 s) so that a run takes seconds, not half a minute.
const (
	nodePoll   = 200 * time.Millisecond
	serverPoll = 150 * time.Millisecond
)

// demoLR is the SGD learning rate the server app sends to the nodes in
// fitins.config: small enough that the loss falls over several rounds
// rather than all in the first one.
const demoLR = 0.005

// How long the shutdown steps may take before the demo gives up on them.
const (
	stopTimeout  = 15 * time.Second
	roundTimeout = 30 * time.Second
	probeTimeout = 5 * time.Second
)

// Limits that keep a mistyped flag from starting a thousand goroutines.
const (
	maxClients = 100
	maxRounds  = 100
)

func main() {
	ctx, cancel := cli.SignalContext(context.Background())
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	cli.Exit(name, err)
}

// options are the parsed flags.
type options struct {
	clients, rounds int
	dir             string
	keep, verbose   bool
	logFormat       string
}

// parse parses the flags; --help and --version print to stdout.
func parse(args []string, stdout io.Writer) (*options, error) {
	fs := cli.NewFlagSet(cli.Command{
		Name:     name,
		Synopsis: "a federated run over TLS on this machine, in one command (certificates, SuperLink, client apps, FedAvg)",
		Usage:    "[flags]",
		Examples: []string{
			"go run ./cmd/flower-demo",
			"flower-demo --clients 4 --rounds 5",
			"flower-demo --dir ./demo --verbose      # keep the certificates in ./demo/certificates, log every step",
			"flower-demo --keep                      # keep the temporary folder and print its path",
		},
	}, stdout)
	o := &options{}
	fs.IntVar(&o.clients, "clients", 2, fmt.Sprintf("number of client apps (SuperNodes) to start, 1 to %d", maxClients))
	fs.IntVar(&o.rounds, "rounds", 3, fmt.Sprintf("number of FedAvg rounds, 1 to %d", maxRounds))
	fs.StringVar(&o.dir, "dir", "", "folder to work in; certificates go to DIR/certificates and are kept (default: a temporary folder, removed at the end)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary folder and its certificates")
	fs.BoolVar(&o.verbose, "verbose", false, "log every piece at info level on stderr (default: warnings and errors only)")
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	if err := cli.NoArgs(fs, ""); err != nil {
		return nil, err
	}
	o.logFormat = cli.LogFormat(fs)
	if o.clients < 1 || o.clients > maxClients {
		return nil, cli.Usagef("--clients %d: give a number of client apps from 1 to %d", o.clients, maxClients)
	}
	if o.rounds < 1 || o.rounds > maxRounds {
		return nil, cli.Usagef("--rounds %d: give a number of rounds from 1 to %d", o.rounds, maxRounds)
	}
	return o, nil
}

// run parses the flags and runs the demo. It returns nil when the run
// finished and every piece stopped cleanly, cli.ErrHelp after --help,
// cli.ErrVersion after --version, and an error saying which piece failed
// otherwise.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stdout)
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	d := &demo{opts: o, out: stdout, log: cli.NewFormatLogger(stderr, level, o.logFormat)}
	// SIGHUP never ends the demo: it reloads the SuperLink's certificate
	// files once they are made.
	ctx, hup, stop := cli.Signals(ctx, d.log)
	defer stop()
	hup.Nothing("the certificates are not made yet")
	d.hup = hup
	return d.run(ctx)
}

type demo struct {
	opts *options
	out  io.Writer
	log  *slog.Logger
	hup  *cli.Hangup
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

func (d *demo) run(ctx context.Context) (err error) {
	start := time.Now()
	root, removeRoot, err := d.workDir()
	if err != nil {
		return err
	}
	defer func() {
		if rerr := removeRoot(); rerr != nil && err == nil {
			err = rerr
		}
	}()
	d.printf("Sepal demo: %d client apps, %d FedAvg rounds, over TLS on loopback.\n", d.opts.clients, d.opts.rounds)
	d.printf("(The demo uses short polling, nodes every %v and the server app every %v; Flower 1.8.0 polls every 3 s.\n", nodePoll, serverPoll)
	d.printf(" Each node trains a linear model by SGD on its own synthetic data; fitins.config sends lr %g.)\n\n", demoLR)

	// 1. Certificates, as flower-certs writes them.
	certDir := filepath.Join(root, "certificates")
	files, err := writeCertificates(certDir)
	if err != nil {
		return err
	}
	d.printf("certificates  %s  (ca.crt ca.key server.pem server.key)\n", certDir)

	// Everything below stops when ctx ends (SIGINT) or a piece fails.
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)

	// 2. The SuperLink, serving the files through a reloading FileSource.
	link, err := d.startSuperLink(ctx, fail, files)
	if err != nil {
		return err
	}
	defer link.stop() // on the error paths; a no-op after a clean stop
	d.printf("superlink     Fleet API %s, Driver API %s  (TLS, certificate from server.pem)\n", link.fleet, link.driver)

	// 3. The TLS handshake a client gets, shown as the user would check it.
	clientTLS := transport.ClientOptions{RootCertificates: files.ca}
	st, err := probeTLS(ctx, link.fleet, clientTLS)
	if err != nil {
		return err
	}
	d.printTLS(st)

	// 4. The client apps: one dials localhost, the others 127.0.0.1.
	nodes := d.startNodes(ctx, fail, link.fleetPort, clientTLS)
	defer nodes.stop() // on the error paths
	d.printf("client apps   %d started, verifying the SuperLink against %s: %s\n\n", d.opts.clients, filepath.Base(files.ca), strings.Join(nodes.addrs, ", "))

	// 5. The server app: FedAvg over the Driver API.
	srv := app.ServerOptions{
		Server:        link.driver,
		TLS:           clientTLS,
		Rounds:        d.opts.rounds,
		MinNodes:      d.opts.clients,
		Logger:        d.log.With("component", "server_app"),
		Out:           d.out,
		PollInterval:  serverPoll,
		NodesInterval: serverPoll,
		RoundTimeout:  roundTimeout,
		FitConfig:     app.Config{"lr": demoLR},
	}
	sum, err := d.runFedAvg(ctx, srv)
	if err != nil {
		return d.cause(ctx, fmt.Errorf("server app: %w", err))
	}

	// 6. Stop: a reconnect task to every node, then the SuperLink.
	stopCtx, cancel := context.WithTimeout(ctx, stopTimeout)
	defer cancel()
	if err := app.StopNodes(stopCtx, srv); err != nil {
		return d.cause(ctx, fmt.Errorf("stopping the client apps with a reconnect task: %w", err))
	}
	if err := nodes.wait(stopTimeout); err != nil {
		return d.cause(ctx, err)
	}
	if err := link.stop(); err != nil {
		return err
	}
	d.printf("\nstopped       %d client apps left after the reconnect task (DeleteNode), SuperLink stopped\n", d.opts.clients)

	d.summary(sum, st, certDir, time.Since(start))
	return nil
}

// cause prefers the reason the run was cancelled (a node or the SuperLink
// failing, or a signal) over the error it caused downstream.
func (d *demo) cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil {
		if errors.Is(c, context.Canceled) {
			return errors.New("interrupted: the client apps and the SuperLink were stopped")
		}
		return c
	}
	return err
}

// workDir returns the folder to work in and a function that removes it when
// it is a temporary folder not asked to be kept.
func (d *demo) workDir() (string, func() error, error) {
	keep := func() error { return nil }
	if d.opts.dir != "" {
		if err := os.MkdirAll(d.opts.dir, 0o700); err != nil {
			return "", nil, fmt.Errorf("--dir %s: %w: give a folder (it is made if missing)", d.opts.dir, err)
		}
		abs, err := filepath.Abs(d.opts.dir)
		if err != nil {
			return "", nil, fmt.Errorf("--dir %s: %w", d.opts.dir, err)
		}
		return abs, keep, nil
	}
	tmp, err := os.MkdirTemp("", "sepal-demo-")
	if err != nil {
		return "", nil, fmt.Errorf("making a temporary folder: %w (give one with --dir)", err)
	}
	if d.opts.keep {
		return tmp, keep, nil
	}
	return tmp, func() error {
		if err := os.RemoveAll(tmp); err != nil {
			return fmt.Errorf("removing the temporary folder %s: %w", tmp, err)
		}
		return nil
	}, nil
}

// certFiles are the paths flower-certs writes.
type certFiles struct{ ca, caKey, cert, key string }

// writeCertificates makes a CA and a server certificate for localhost,
// 127.0.0.1 and ::1 and writes them atomically into dir, refusing to
// overwrite certificates already there.
func writeCertificates(dir string) (certFiles, error) {
	f := certFiles{
		ca:    filepath.Join(dir, "ca.crt"),
		caKey: filepath.Join(dir, "ca.key"),
		cert:  filepath.Join(dir, "server.pem"),
		key:   filepath.Join(dir, "server.key"),
	}
	for _, p := range []string{f.ca, f.caKey, f.cert, f.key} {
		if _, err := os.Lstat(p); err == nil {
			return f, fmt.Errorf("--dir: %s already exists; the demo does not overwrite certificates: give an empty folder with --dir, or leave --dir out for a temporary one", p)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, fmt.Errorf("making the certificates folder: %w", err)
	}
	ca, err := selfsigned.NewCA(selfsigned.CAOptions{CommonName: "Sepal demo CA"})
	if err != nil {
		return f, fmt.Errorf("making the demo CA: %w", err)
	}
	pair, err := ca.IssueServer(selfsigned.ServerOptions{CommonName: "Sepal demo SuperLink"})
	if err != nil {
		return f, fmt.Errorf("issuing the server certificate: %w", err)
	}
	for _, w := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{
		{f.ca, ca.CertPEM, 0o644},
		{f.caKey, ca.KeyPEM, 0o600},
		{f.cert, pair.CertPEM, 0o644},
		{f.key, pair.KeyPEM, 0o600},
	} {
		if err := certfile.WriteFileAtomic(w.path, w.data, w.perm); err != nil {
			return f, err // "writing PATH: ..."
		}
	}
	return f, nil
}

// superLink is the SuperLink running in the background.
type superLink struct {
	fleet, driver string // 127.0.0.1:port
	fleetPort     string
	stop          func() error // stops it and waits; safe to call twice
}

func (d *demo) startSuperLink(ctx context.Context, fail context.CancelCauseFunc, f certFiles) (*superLink, error) {
	log := d.log.With("component", "superlink")
	src, err := certfile.NewFileSource(certfile.FileSourceOptions{
		CAFile: f.ca, CertFile: f.cert, KeyFile: f.key, Logger: log, Remedies: certfix.Remedy,
	})
	if err != nil {
		return nil, fmt.Errorf("loading the certificates: %w", certfix.Reword(err))
	}
	d.hup.Add("certificate files", src.Reload)
	fleetLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the Fleet API on 127.0.0.1: %w", err)
	}
	driverLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fleetLis.Close()
		return nil, fmt.Errorf("listening for the Driver API on 127.0.0.1: %w", err)
	}
	linkCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := src.Run(linkCtx); err != nil {
			fail(fmt.Errorf("certificate reloader: %w", err))
		}
	}()
	go func() {
		defer wg.Done()
		creds := transport.ServerCredentials(src)
		sl := superlink.New(superlink.Options{Logger: log, State: memstate.New(memstate.Options{Logger: log})})
		serveErr = sl.Serve(linkCtx, superlink.Listeners{Fleet: fleetLis, Driver: driverLis, FleetCreds: creds, DriverCreds: creds})
		if serveErr != nil && linkCtx.Err() == nil {
			fail(fmt.Errorf("the SuperLink failed: %w", serveErr))
		}
	}()
	_, port, _ := net.SplitHostPort(fleetLis.Addr().String())
	var once sync.Once
	var stopErr error
	return &superLink{
		fleet:     fleetLis.Addr().String(),
		driver:    driverLis.Addr().String(),
		fleetPort: port,
		stop: func() error {
			once.Do(func() {
				cancel()
				done := make(chan struct{})
				go func() { wg.Wait(); close(done) }()
				select {
				case <-done:
					if serveErr != nil {
						stopErr = fmt.Errorf("the SuperLink failed: %w", serveErr)
					}
				case <-time.After(stopTimeout):
					stopErr = fmt.Errorf("the SuperLink did not stop within %v", stopTimeout)
				}
			})
			return stopErr
		},
	}, nil
}

// probeTLS does one TLS handshake with the Fleet API as a client app would
// (same roots, ALPN h2) and returns what was negotiated.
func probeTLS(ctx context.Context, addr string, o transport.ClientOptions) (tls.ConnectionState, error) {
	cfg, err := transport.ClientConfig(o)
	if err != nil {
		return tls.ConnectionState{}, fmt.Errorf("client TLS configuration: %w", err)
	}
	cfg = cfg.Clone()
	if len(cfg.NextProtos) == 0 {
		cfg.NextProtos = []string{"h2"} // what gRPC offers
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	conn, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return tls.ConnectionState{}, fmt.Errorf("TLS handshake with the Fleet API at %s: %w", addr, transport.Explain(err, addr, o))
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState(), nil
}

func (d *demo) printTLS(st tls.ConnectionState) {
	alpn := st.NegotiatedProtocol
	if alpn == "" {
		alpn = "none"
	}
	d.printf("tls           %s, %s, ALPN %s  (a handshake with the Fleet API, as a client app does it)\n",
		tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), alpn)
	if len(st.PeerCertificates) == 0 {
		return
	}
	leaf := st.PeerCertificates[0]
	d.printf("certificate   subject %q, issuer %q\n", leaf.Subject.String(), leaf.Issuer.String())
	d.printf("              SANs %s; valid until %s (%d days)\n", strings.Join(sans(leaf), ", "),
		leaf.NotAfter.UTC().Format("2006-01-02 15:04 MST"), int(time.Until(leaf.NotAfter).Hours()/24))
}

// sans lists the certificate's DNS names and IP addresses.
func sans(c *x509.Certificate) []string {
	var s []string
	s = append(s, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		s = append(s, ip.String())
	}
	if len(s) == 0 {
		s = append(s, "none")
	}
	return s
}

// nodeSet is the client apps running in the background.
type nodeSet struct {
	addrs  []string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

func (d *demo) startNodes(ctx context.Context, fail context.CancelCauseFunc, port string, tlsOpts transport.ClientOptions) *nodeSet {
	nctx, cancel := context.WithCancel(ctx)
	n := &nodeSet{cancel: cancel, errs: make([]error, d.opts.clients)}
	for i := range d.opts.clients {
		host := "127.0.0.1"
		if i == 0 {
			host = "localhost" // the name the seed's certificate is for, resolved like a user's
		}
		addr := net.JoinHostPort(host, port)
		n.addrs = append(n.addrs, addr)
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			err := app.RunNode(nctx, app.NodeOptions{
				Server:       addr,
				TLS:          tlsOpts,
				PollInterval: nodePoll,
				Logger:       d.log.With("component", "client_app", "client", i+1),
				NewClient:    app.NewDemoClient,
			})
			if err != nil {
				err = fmt.Errorf("client app %d (%s): %w", i+1, addr, err)
				fail(err)
			}
			n.mu.Lock()
			n.errs[i] = err
			n.mu.Unlock()
		}()
	}
	return n
}

// wait waits up to d for every client app to end and returns their errors.
func (n *nodeSet) wait(d time.Duration) error {
	done := make(chan struct{})
	go func() { n.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		return fmt.Errorf("client apps: still running %v after the reconnect task", d)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return errors.Join(n.errs...)
}

// stop cancels the client apps (they call DeleteNode) and waits for them.
func (n *nodeSet) stop() {
	n.cancel()
	_ = n.wait(stopTimeout)
}

// runFedAvg runs the server app, which prints its line per round to stdout
// as each round ends, exactly as flower-server-app does.
func (d *demo) runFedAvg(ctx context.Context, o app.ServerOptions) (*app.Summary, error) {
	sum, err := app.RunFedAvg(ctx, o)
	if err != nil {
		return nil, err
	}
	if len(sum.Rounds) == 0 {
		return nil, errors.New("the run finished without a round")
	}
	return sum, nil
}

func (d *demo) summary(sum *app.Summary, st tls.ConnectionState, certDir string, took time.Duration) {
	first, last := sum.Rounds[0], sum.Rounds[len(sum.Rounds)-1]
	where := certDir
	if d.opts.dir == "" && !d.opts.keep {
		where += " (now removed; --keep or --dir keeps them)"
	}
	d.printf("\nDone in %.1fs: the evaluation loss went from %.4f to %.4f in %d rounds with %d client apps,\n",
		took.Seconds(), first.EvalLoss, last.EvalLoss, len(sum.Rounds), d.opts.clients)
	d.printf("over %s with certificates from %s.\n", tls.VersionName(st.Version), where)
	d.printf(`
Next, run the pieces yourself, each in its own terminal (go install ./cmd/... puts them on your PATH):
  flower-certs                                  # writes certificates/: ca.crt ca.key server.pem server.key
  flower-superlink --certificates certificates/ca.crt certificates/server.pem certificates/server.key
  flower-client-app client:app --root-certificates certificates/ca.crt --server 127.0.0.1:9092
  flower-client-app client:app --root-certificates certificates/ca.crt --server localhost:9092
  flower-server-app server:app --root-certificates certificates/ca.crt --server 127.0.0.1:9091 --rounds 3
`)
}
