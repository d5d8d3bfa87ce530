package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
)

// Defaults of the Flower 1.29.0 APIs. ServerAppIo takes Flower's port
// but binds loopback: it is plaintext (Flower's processes speak nothing
// else there) and runs every run's ServerApp.
const (
	defaultControl = "0.0.0.0:9093"
	// acmeControl is the Control API's default with --acme-domain: the
	// public set-up keeps it on loopback, as the Driver API.
	acmeControl      = "127.0.0.1:9093"
	superExecCommand = "flower-superexec"
)

// flower129Flags are Flower 1.29.0's flags beyond those 1.8.0 shares.
type flower129Flags struct {
	fleetAddr       string // --fleet-api-address, the 1.29.0 spelling
	serverAppIoAddr string
	controlAddr     string
	isolation       string
	keysOnly        bool

	fs *pflag.FlagSet
}

func registerFlower129Flags(fs *pflag.FlagSet) *flower129Flags {
	f := &flower129Flags{fs: fs}
	fs.StringVar(&f.fleetAddr, "fleet-api-address", "", "Fleet API address, HOST:PORT (Flower 1.29's spelling of --grpc-rere-fleet-api-address; default 0.0.0.0:9092)")
	fs.StringVar(&f.serverAppIoAddr, "serverappio-api-address", "", "ServerAppIo API address (Flower 1.29's ServerApp processes), HOST:PORT; plaintext, so loopback peers only; by default it shares the Driver API's port (9091, as in Flower): TLS there is the Driver API, plaintext from loopback ServerAppIo")
	fs.StringVar(&f.controlAddr, "control-api-address", defaultControl, "Control API address (the flwr command of Flower 1.29), HOST:PORT; served with the Fleet API's certificate; with --acme-domain the default is "+acmeControl)
	fs.StringVar(&f.isolation, "isolation", "subprocess", "how Flower 1.29 ServerApps run: subprocess (start flower-superexec from PATH, stopped with the SuperLink) or process (start nothing: run flower-superexec --insecure --appio-api-address ADDR --plugin-type serverapp beside it)")
	fs.BoolVar(&f.keysOnly, "enable-supernode-auth", false, "only Flower 1.29 SuperNodes whose public keys were registered with flwr supernode register may join (needs TLS)")
	return f
}

// check validates the flags once the TLS mode is known.
func (f *flower129Flags) check(c *config) error {
	if f.fs.Changed("fleet-api-address") {
		if f.fs.Changed("grpc-rere-fleet-api-address") {
			return cli.Usagef("--fleet-api-address and --grpc-rere-fleet-api-address conflict: they name the same Fleet API; pass one")
		}
		c.fleetAddr = f.fleetAddr
	}
	switch f.isolation {
	case "subprocess", "process":
	default:
		return cli.Usagef("--isolation %q: must be subprocess or process", f.isolation)
	}
	if c.mode == modeACME && !f.fs.Changed("control-api-address") {
		f.controlAddr = acmeControl
	}
	if f.keysOnly && c.mode == modeInsecure {
		return cli.Usagef("--enable-supernode-auth needs TLS: pass --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile (or --certificates, --acme-domain) instead of --insecure")
	}
	if f.isolation == "subprocess" && f.fs.Changed("isolation") {
		if _, err := exec.LookPath(superExecCommand); err != nil {
			return fmt.Errorf("--isolation subprocess starts %s for each Flower 1.29 run, and it is not on PATH: install Flower 1.29 (pip install flwr), or pass --isolation process and run `%s --insecure --appio-api-address 127.0.0.1:9091 --plugin-type serverapp` yourself", superExecCommand, superExecCommand)
		}
	}
	return nil
}

// sharesDriverPort reports whether ServerAppIo is to be served on the
// Driver API's listener: by default, or when given its port.
func (f *flower129Flags) sharesDriverPort(c *config) bool {
	if f.serverAppIoAddr == "" {
		return true
	}
	_, p1, err1 := net.SplitHostPort(f.serverAppIoAddr)
	_, p2, err2 := net.SplitHostPort(c.driverAddr)
	return err1 == nil && err2 == nil && p1 == p2 && p1 != "0"
}

// warnOpenControl logs one warning when the Control API listens beyond
// loopback: anyone who can reach it can start runs, whose ServerApp code
// flower-superexec then runs on this machine, and stop them (Flower's
// open-source Control API has no accounts).
func warnOpenControl(log *slog.Logger, addr net.Addr) {
	if addr == nil || isLoopback(addr) {
		return
	}
	log.Warn(fmt.Sprintf("the Control API (flwr) listens on %s, beyond loopback: anyone who can reach that port can start runs, whose ServerApp code then runs on this machine, and stop them; "+
		"bind it to loopback (--control-api-address %s, and use flwr through an SSH tunnel) or let only your own addresses reach it", addr, acmeControl), "control_api_address", addr.String())
}

// appIoPeers are the peers that may speak ServerAppIo on the Driver API's
// port: loopback ones (nil) unless --serverappio-api-address names
// another host.
func (f *flower129Flags) appIoPeers() func(net.Addr) bool {
	host, _, _ := net.SplitHostPort(f.serverAppIoAddr)
	if f.serverAppIoAddr == "" || isLoopbackHost(host) {
		return nil
	}
	return func(net.Addr) bool { return true }
}

// listeners opens the ServerAppIo and Control listeners, or takes their
// sockets from socks; ServerAppIo shares driverLis (split by the first
// byte) when it names its port, or is not given and has no socket.
func (f *flower129Flags) listeners(c *config, driverLis net.Listener, log *slog.Logger, socks *sockets) (tlsDriver, serverAppIo, control net.Listener, err error) {
	tlsDriver = driverLis
	host, _, _ := net.SplitHostPort(f.serverAppIoAddr)
	loopbackOnly := f.serverAppIoAddr == "" || isLoopbackHost(host)
	if socks.has(socketServerAppIo) {
		if serverAppIo, err = socks.open(socketServerAppIo, "--serverappio-api-address", f.serverAppIoAddr, f.fs.Changed("serverappio-api-address")); err != nil {
			return nil, nil, nil, err
		}
		loopbackOnly = isLoopback(serverAppIo.Addr())
	}
	if !loopbackOnly {
		addr := f.serverAppIoAddr
		if serverAppIo != nil {
			addr = serverAppIo.Addr().String()
		}
		log.Warn("ServerAppIo listens beyond loopback: it is plaintext and runs every run's ServerApp; anyone who reaches it can read and change runs", "serverappio_api_address", addr)
	}
	switch {
	case serverAppIo != nil:
	case f.sharesDriverPort(c):
		serverAppIo = driverLis // superlink splits it by the first byte
	default:
		if serverAppIo, err = listen(f.serverAppIoAddr, "--serverappio-api-address"); err != nil {
			return nil, nil, nil, err
		}
	}
	if control, err = socks.open(socketControl, "--control-api-address", f.controlAddr, f.fs.Changed("control-api-address")); err != nil {
		if f.fs.Changed("control-api-address") || socks.has(socketControl) {
			serverAppIo.Close()
			return nil, nil, nil, err
		}
		// A 1.8.0 command line names no Control API: it starts as before
		// when Flower's default port is taken.
		log.Warn("the Control API (flwr) is not served: its default address is taken; pass --control-api-address to serve it", "error", err)
		control = nil
	}
	return tlsDriver, serverAppIo, control, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// appIoDialAddress is the address a local process dials to reach
// ServerAppIo listening on addr (a wildcard host becomes loopback).
func appIoDialAddress(addr net.Addr) string {
	ta, ok := addr.(*net.TCPAddr)
	if !ok {
		return addr.String()
	}
	ip := ta.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(ta.Port))
}

// runSuperExec starts flower-superexec for ServerApps (subprocess
// isolation) and keeps it running until ctx ends, starting it again when
// it exits; then it stops it (SIGTERM, SIGKILL after 5 s). A missing
// command is logged once, with what to do.
func runSuperExec(ctx context.Context, appIoAddr string, log *slog.Logger) {
	path, err := exec.LookPath(superExecCommand)
	if err != nil {
		// Not a warning: a Flower 1.8.0 set-up needs no Flower 1.29 (with
		// --isolation subprocess given, the command refused to start).
		log.Info(superExecCommand+" is not on PATH: Flower 1.29 runs will wait for a ServerApp; install Flower 1.29, or pass --isolation process and run it yourself",
			"command", fmt.Sprintf("%s --insecure --appio-api-address %s --plugin-type serverapp", superExecCommand, appIoAddr))
		return
	}
	for ctx.Err() == nil {
		cmd := exec.Command(path, "--insecure", "--appio-api-address", appIoAddr, "--plugin-type", "serverapp", "--parent-pid", strconv.Itoa(os.Getpid()))
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			log.Error("starting "+superExecCommand+" failed", "error", err)
			return
		}
		log.Info("started "+superExecCommand+" for Flower 1.29 ServerApps", "pid", cmd.Process.Pid, "appio_api_address", appIoAddr)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if ctx.Err() == nil {
				log.Warn(superExecCommand+" exited; starting it again in 1 s", "error", errString(err))
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		case <-ctx.Done():
			// Its process group: flower-superexec and the ServerApps it
			// started.
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-done
			}
			return
		}
	}
}

func errString(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.String()
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
