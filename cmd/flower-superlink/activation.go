package main

// This file is systemd socket activation: the listening sockets systemd
// (or any supervisor that speaks its protocol: LISTEN_PID, LISTEN_FDS,
// LISTEN_FDNAMES) passes, taken by name instead of binding the address
// flags. The sockets stay open in systemd while the SuperLink restarts,
// so that connections made meanwhile wait in their backlog for the next
// process instead of being refused.

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// The names a socket takes with FileDescriptorName= in a .socket unit,
// one per API.
const (
	socketFleet       = "fleet"
	socketDriver      = "driver"
	socketServerAppIo = "serverappio"
	socketControl     = "control"
	socketMetrics     = "metrics"
)

var socketNames = []string{socketFleet, socketDriver, socketServerAppIo, socketControl, socketMetrics}

// sockets are the listening sockets passed to this process, by name. A
// nil *sockets (none passed) binds every address itself.
type sockets struct {
	byName map[string]net.Listener
	taken  map[string]bool
}

// inheritSockets takes the sockets systemd passed (LISTEN_FDS for this
// process's LISTEN_PID) and removes the variables from the environment,
// so that no child process takes them too. It returns nil when none were
// passed, and an error naming the socket and the fix for one it cannot
// serve: a name that is none of socketNames, a name given twice, a socket
// that is not a listening TCP socket.
func inheritSockets() (*sockets, error) {
	return socketsFrom(activation.Files(true))
}

// socketsFrom is inheritSockets on files, each named by its socket's
// name. It closes every file; on error it closes the listeners too.
func socketsFrom(files []*os.File) (*sockets, error) {
	if len(files) == 0 {
		return nil, nil
	}
	s := &sockets{byName: map[string]net.Listener{}, taken: map[string]bool{}}
	var err error
	for _, f := range files {
		if err == nil {
			err = s.add(f)
		}
		f.Close()
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *sockets) add(f *os.File) error {
	name := f.Name()
	if !slices.Contains(socketNames, name) {
		return fmt.Errorf("socket activation: a socket named %q was passed (LISTEN_FDNAMES): name each socket of the .socket unit with FileDescriptorName=, one of %s", name, strings.Join(socketNames, ", "))
	}
	if _, dup := s.byName[name]; dup {
		return fmt.Errorf("socket activation: two sockets named %q were passed: give each API one socket (one ListenStream= under each FileDescriptorName=)", name)
	}
	if on, err := syscall.GetsockoptInt(int(f.Fd()), syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err != nil || on != 1 {
		why := "it is not listening"
		if err != nil {
			why = err.Error()
		}
		return fmt.Errorf("socket activation: the socket named %q is not a listening stream socket (%s): use ListenStream= and Accept=no in the .socket unit", name, why)
	}
	l, err := net.FileListener(f)
	if err != nil {
		return fmt.Errorf("socket activation: the socket named %q: %w", name, err)
	}
	if _, ok := l.Addr().(*net.TCPAddr); !ok {
		l.Close()
		return fmt.Errorf("socket activation: the socket named %q is not a TCP socket (%s %s): use ListenStream=HOST:PORT", name, l.Addr().Network(), l.Addr())
	}
	s.byName[name] = l
	return nil
}

// has reports whether a socket named name was passed.
func (s *sockets) has(name string) bool {
	if s == nil {
		return false
	}
	_, ok := s.byName[name]
	return ok
}

// open returns the socket named name when one was passed, else it binds
// addr. flag is the address flag of that API and given whether the
// command line set it: a socket whose address disagrees with a given
// flag is refused, naming both, since one of them is a mistake.
func (s *sockets) open(name, flag, addr string, given bool) (net.Listener, error) {
	if !s.has(name) {
		return listen(addr, flag)
	}
	l := s.byName[name]
	if given && !agrees(addr, l.Addr().(*net.TCPAddr)) {
		return nil, fmt.Errorf("%s %s and the socket named %q that systemd passed (%s) disagree: make the .socket unit's ListenStream= and the flag name the same address, or drop the flag", flag, addr, name, l.Addr())
	}
	s.taken[name] = true
	return l, nil
}

// names returns the names of the sockets taken, sorted, for the log.
func (s *sockets) names() string {
	if s == nil {
		return ""
	}
	var ns []string
	for n := range s.taken {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return strings.Join(ns, ",")
}

// close closes the sockets no API took (after an error at start).
func (s *sockets) close() {
	if s == nil {
		return
	}
	for n, l := range s.byName {
		if !s.taken[n] {
			l.Close()
		}
	}
}

// agrees reports whether a listener bound to got is what the address
// flag value addr (checked by cli.CheckListenAddress) asks for: the same
// port (any for port 0), and the same host, where every wildcard (empty,
// 0.0.0.0, ::) stands for every other and a host name for the addresses
// it resolves to.
func agrees(addr string, got *net.TCPAddr) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if port != "0" && port != fmt.Sprint(got.Port) {
		return false
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return got.IP.IsUnspecified()
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.Equal(got.IP)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(ips, got.IP.Equal)
}
