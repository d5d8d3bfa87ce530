// Package clientflags holds what flower-client-app and flower-server-app
// share on the command line: the flags of the SuperLink address, TLS and
// retries, with the spelling and defaults of Flower 1.8.0, and the
// messages that word the apps' failures in those flags.
package clientflags

import (
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/transport"
)

// Flags are the parsed values; read them after cli.Parse.
type Flags struct {
	Server           string
	Insecure         bool
	RootCertificates string
	TLSServerName    string
	MaxRetries       int
	MaxWaitTime      float64 // seconds, as Flower 1.8.0

	example string // an address for messages
	fs      *pflag.FlagSet
	clientCert
}

// Register adds the shared flags to fs. defaultServer is the command's
// default address (0.0.0.0:9092 for SuperNodes, 0.0.0.0:9091 for
// ServerApps, as Flower 1.8.0); api names the SuperLink API for the help.
func Register(fs *pflag.FlagSet, defaultServer, api string) *Flags {
	_, port, _ := net.SplitHostPort(defaultServer)
	f := &Flags{example: net.JoinHostPort("127.0.0.1", port)}
	fs.StringVar(&f.Server, "server", defaultServer, "the SuperLink's "+api+" address, HOST:PORT (with TLS, a name or IP its certificate holds, such as 127.0.0.1 or localhost, not 0.0.0.0)")
	fs.StringVar(&f.RootCertificates, "root-certificates", "", "PEM file of the CA certificates to trust, such as certificates/ca.crt (default: the system roots)")
	fs.BoolVar(&f.Insecure, "insecure", false, "plaintext gRPC without TLS, for a SuperLink started with --insecure")
	fs.StringVar(&f.TLSServerName, "tls-server-name", "", "the name the SuperLink's certificate must hold, when it differs from the host in --server")
	fs.IntVar(&f.MaxRetries, "max-retries", 0, "retries of a failing connection before giving up with exit 1 (default: no limit; 0: no retry, as Flower 1.8.0); TLS verification failures are never retried")
	fs.Float64Var(&f.MaxWaitTime, "max-wait-time", 0, "seconds to keep retrying a failing connection before giving up with exit 1 (default: no limit; 0: no retry, as Flower 1.8.0)")
	f.registerClientCert(fs, api)
	f.fs = fs
	return f
}

// TLS returns the transport options; --insecure with --root-certificates
// is a usage error naming both.
func (f *Flags) TLS() (transport.ClientOptions, error) {
	if f.Insecure && f.RootCertificates != "" {
		return transport.ClientOptions{}, cli.Usagef("--insecure and --root-certificates %s conflict: pass --root-certificates for TLS, or --insecure alone for plaintext", f.RootCertificates)
	}
	if f.Insecure && f.TLSServerName != "" {
		return transport.ClientOptions{}, cli.Usagef("--insecure and --tls-server-name conflict: a server name is only checked with TLS")
	}
	if err := cli.CheckDialAddress("--server", f.Server, f.example); err != nil {
		return transport.ClientOptions{}, err
	}
	o := transport.ClientOptions{RootCertificates: f.RootCertificates, ServerName: f.TLSServerName, Insecure: f.Insecure}
	return f.withClientCert(o)
}

// Retry returns the retry limits as app.NodeOptions takes them: 0 when a
// flag was not given (no limit), -1 for an explicit 0 (no retry, as Flower
// 1.8.0's --max-retries 0 and --max-wait-time 0). Negative flag values are
// usage errors.
func (f *Flags) Retry() (maxRetries int, maxWait time.Duration, err error) {
	defer func() {
		if err != nil || f.fs == nil {
			return
		}
		if f.fs.Changed("max-retries") && f.MaxRetries == 0 {
			maxRetries = -1
		}
		if f.fs.Changed("max-wait-time") && f.MaxWaitTime == 0 {
			maxWait = -1
		}
	}()
	if f.MaxRetries < 0 {
		return 0, 0, cli.Usagef("--max-retries %d is negative: give a number of retries, 0 for none (as Flower 1.8.0), or leave the flag out for no limit", f.MaxRetries)
	}
	if f.MaxWaitTime < 0 || math.IsNaN(f.MaxWaitTime) || math.IsInf(f.MaxWaitTime, 0) {
		return 0, 0, cli.Usagef("--max-wait-time %v: give a number of seconds, 0 for no retry (as Flower 1.8.0), or leave the flag out for no limit", f.MaxWaitTime)
	}
	return f.MaxRetries, time.Duration(f.MaxWaitTime * float64(time.Second)), nil
}

// LogStart logs the command's first line, msg at info level with the app,
// the server, how the command connects (Describe) and then attrs; with
// --insecure it warns that tasks and model parameters travel in plaintext.
func (f *Flags) LogStart(log *slog.Logger, msg, app string, attrs ...any) {
	log.Info(msg, append([]any{"app", app, "server", f.Server, "transport", f.Describe()}, attrs...)...)
	if f.Insecure {
		log.Warn("--insecure: tasks and model parameters travel in plaintext")
	}
}

// Describe says in words how the command will connect, for its first log line.
func (f *Flags) Describe() string {
	switch {
	case f.Insecure:
		return "plaintext (--insecure)"
	case f.RootCertificates != "":
		return fmt.Sprintf("TLS, trusting %s", f.RootCertificates) + f.describeClientCert()
	default:
		return "TLS, trusting the system roots" + f.describeClientCert()
	}
}
