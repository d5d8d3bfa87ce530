package main

// This file is the seam between flower-superlink and the metrics package:
// --metrics-address, and the hooks that feed the metrics from the
// certificate sources, the TLS handshakes and the gRPC calls.

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sepal-fl/sepal/acme"
	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/internal/certfix"
	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/metrics"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

const metricsAddressFlag = "metrics-address"

// metricsFlags is --metrics-address.
type metricsFlags struct {
	address string
}

func registerMetricsFlags(fs *pflag.FlagSet) *metricsFlags {
	f := &metricsFlags{}
	fs.StringVar(&f.address, metricsAddressFlag, "", "serve Prometheus metrics at /metrics, a status page at /, and /healthz and /readyz on this HOST:PORT, such as 127.0.0.1:9100 (default: off)")
	return f
}

// check refuses an address that is not HOST:PORT.
func (f *metricsFlags) check() error {
	if f.address == "" {
		return nil
	}
	if _, _, err := net.SplitHostPort(f.address); err != nil {
		return cli.Usagef("--%s %q: want HOST:PORT, such as 127.0.0.1:9100", metricsAddressFlag, f.address)
	}
	return nil
}

// monitor is the metrics of one run of the command; a nil *monitor (no
// --metrics-address) does nothing and costs nothing.
type monitor struct {
	addr string
	log  *slog.Logger
	m    *metrics.Metrics
	lis  net.Listener
}

// monitor returns the metrics of this run, or nil without
// --metrics-address and without a metrics socket (socket).
func (f *metricsFlags) monitor(log *slog.Logger, socket bool) *monitor {
	if f.address == "" && !socket {
		return nil
	}
	return &monitor{addr: f.address, log: log, m: metrics.New(metrics.Options{Logger: log, Version: cli.Version})}
}

// fileReload is the OnReload hook of the certificate files. A failure
// names the flower-certs command that fixes the file on the status page,
// as in the log.
func (mo *monitor) fileReload() func(certfile.ReloadEvent) {
	if mo == nil {
		return nil
	}
	return func(e certfile.ReloadEvent) {
		kind := "reload"
		if e.Trigger == "start" {
			kind = "start"
		}
		mo.m.CertificateEvent(metrics.CertEvent{Source: metrics.SourceFile, Kind: kind, Trigger: e.Trigger, Err: certfix.Reword(e.Err), Time: e.Time})
	}
}

// acmeEvent is the OnEvent hook of the ACME source.
func (mo *monitor) acmeEvent() func(acme.Event) {
	if mo == nil {
		return nil
	}
	return func(e acme.Event) {
		mo.m.CertificateEvent(metrics.CertEvent{Source: metrics.SourceACME, Kind: e.Kind, Name: e.Domain, Err: e.Err, Time: e.Time})
	}
}

// credentials counts the handshakes of creds.
func (mo *monitor) credentials(creds credentials.TransportCredentials) credentials.TransportCredentials {
	if mo == nil {
		return creds
	}
	return mo.m.Credentials(creds)
}

// serverOptions count every gRPC call.
func (mo *monitor) serverOptions() []grpc.ServerOption {
	if mo == nil {
		return nil
	}
	return mo.m.GRPCServerOptions()
}

// start listens on --metrics-address (or takes the metrics socket of
// socks, which must agree with the flag when given) and serves the
// metrics until ctx ends. It is called once the Fleet, Driver and Control
// (nil when not served) listeners are open, before an ACME certificate is
// obtained, so that /healthz answers and /readyz says why it is not ready
// yet.
func (mo *monitor) start(ctx context.Context, src transport.CertSource, fleet, driver, control net.Listener, socks *sockets, given bool) error {
	if mo == nil {
		return nil
	}
	switch s := src.(type) {
	case nil:
	case interface{ Domains() []string }:
		mo.m.SetCertificateSource(metrics.SourceACME, src, s.Domains())
	default:
		mo.m.SetCertificateSource(metrics.SourceFile, src, nil)
	}
	mo.m.SetListeners(fleet.Addr(), driver.Addr())
	if control != nil {
		mo.m.SetControlListener(control.Addr())
	}
	lis, err := socks.open(socketMetrics, "--"+metricsAddressFlag, mo.addr, given)
	if err != nil {
		return err
	}
	mo.lis = lis
	if !isLoopback(lis.Addr()) {
		mo.log.Warn("the metrics address is reachable from other hosts: /metrics and the status page show the certificate, node ids and runs to anyone who connects; bind it to 127.0.0.1 or keep it behind a firewall",
			"metrics_address", lis.Addr().String())
	}
	srv := &http.Server{
		Handler:           mo.m.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(mo.log.Handler(), slog.LevelDebug),
	}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			mo.log.Error("the metrics server stopped", "metrics_address", lis.Addr().String(), "error", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return nil
}

// watch gives the metrics the SuperLink's state (both generations) and
// limits.
func (mo *monitor) watch(sl *superlink.SuperLink) {
	if mo != nil {
		mo.m.SetState(sl.State())
		mo.m.SetLinkState(sl.LinkState())
		mo.m.SetLimits(sl.LimitStats)
		mo.m.SetNodeLimits(sl.NodeLimitStats)
	}
}

// watchCRL exports the date of the client-certificate CRL, when mutual
// TLS has one (the same file serves both APIs).
func (mo *monitor) watchCRL(m *mtlsFlags) {
	if mo == nil || m.crl == "" {
		return
	}
	mo.m.SetCRL(func() *x509.RevocationList {
		for _, s := range []*certfile.ClientCAFile{m.fleetSrc, m.driverSrc} {
			if s != nil {
				if _, crl := s.ClientCAs(); crl != nil {
					return crl
				}
			}
		}
		return nil
	})
}

// serving marks the SuperLink ready.
func (mo *monitor) serving() {
	if mo != nil {
		mo.m.SetServing(true)
	}
}

// attrs are the log attributes of the "serving" line.
func (mo *monitor) attrs() []any {
	if mo == nil || mo.lis == nil {
		return nil
	}
	return []any{"metrics_address", mo.lis.Addr().String()}
}
