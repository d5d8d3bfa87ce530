package main

import (
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
)

// socketFile returns a file of a new loopback socket named name, as
// systemd passes it: listening (the default), or a UDP one, or a
// connected TCP one (what Accept=yes passes). socketsFrom closes it.
func socketFile(t *testing.T, name, kind string) (*os.File, string) {
	t.Helper()
	var f *os.File
	var addr string
	var err error
	switch kind {
	case "udp":
		pc, lerr := net.ListenPacket("udp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		defer pc.Close()
		addr = pc.LocalAddr().String()
		f, err = pc.(*net.UDPConn).File()
	case "connected":
		l, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		defer l.Close()
		c, derr := net.Dial("tcp", l.Addr().String())
		if derr != nil {
			t.Fatal(derr)
		}
		defer c.Close()
		addr = c.LocalAddr().String()
		f, err = c.(*net.TCPConn).File()
	default:
		l, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			t.Fatal(lerr)
		}
		defer l.Close()
		addr = l.Addr().String()
		f, err = l.(*net.TCPListener).File()
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), name), addr // as activation.Files names them
}

func TestSocketsFromSystemd(t *testing.T) {
	fleet, fleetAddr := socketFile(t, socketFleet, "")
	driver, driverAddr := socketFile(t, socketDriver, "")
	s, err := socketsFrom([]*os.File{fleet, driver})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	if !s.has(socketFleet) || !s.has(socketDriver) || s.has(socketMetrics) {
		t.Fatalf("sockets: %v", s.byName)
	}
	// The flag agrees (given) or is a default (not given): the socket.
	l, err := s.open(socketFleet, "--grpc-rere-fleet-api-address", fleetAddr, true)
	if err != nil || l.Addr().String() != fleetAddr {
		t.Fatalf("fleet: %v %v", l, err)
	}
	l, err = s.open(socketDriver, "--driver-api-address", "0.0.0.0:9091", false)
	if err != nil || l.Addr().String() != driverAddr {
		t.Fatalf("driver with a default flag: %v %v", l, err)
	}
	if got := s.names(); got != "driver,fleet" {
		t.Fatalf("names %q", got)
	}
	// No socket: the address is bound.
	l, err = s.open(socketControl, "--control-api-address", "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	// A nil *sockets (none passed) binds too.
	var none *sockets
	if l, err = none.open(socketFleet, "--grpc-rere-fleet-api-address", "127.0.0.1:0", true); err != nil {
		t.Fatal(err)
	}
	l.Close()
}

func TestSocketsDisagree(t *testing.T) {
	fleet, fleetAddr := socketFile(t, socketFleet, "")
	s, err := socketsFrom([]*os.File{fleet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	_, err = s.open(socketFleet, "--fleet-api-address", "127.0.0.1:1", true)
	want := `--fleet-api-address 127.0.0.1:1 and the socket named "fleet" that systemd passed (` + fleetAddr + `) disagree`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("%v, want %q", err, want)
	}
}

func TestSocketsRefused(t *testing.T) {
	for _, tc := range []struct {
		name, kind string
		dup        bool
		want       string
	}{
		{"web", "", false, `a socket named "web" was passed (LISTEN_FDNAMES): name each socket of the .socket unit with FileDescriptorName=, one of fleet, driver, serverappio, control, metrics`},
		{"LISTEN_FD_3", "", false, `a socket named "LISTEN_FD_3" was passed`},
		{socketFleet, "", true, `two sockets named "fleet" were passed`},
		{socketDriver, "udp", false, `the socket named "driver" is not a listening stream socket`},
		{socketDriver, "connected", false, `the socket named "driver" is not a listening stream socket (it is not listening): use ListenStream= and Accept=no`},
	} {
		f, _ := socketFile(t, tc.name, tc.kind)
		files := []*os.File{f}
		if tc.dup {
			g, _ := socketFile(t, tc.name, tc.kind)
			files = append(files, g)
		}
		if _, err := socketsFrom(files); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: %v, want %q", tc.name, tc.kind, err, tc.want)
		}
	}
}

func TestSocketAddressAgrees(t *testing.T) {
	tcp := func(s string) *net.TCPAddr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, tc := range []struct {
		flag, socket string
		want         bool
	}{
		{"0.0.0.0:443", "0.0.0.0:443", true},
		{"0.0.0.0:443", "[::]:443", true}, // ListenStream=443 binds both families
		{":443", "[::]:443", true},
		{"[::]:443", "0.0.0.0:443", true},
		{"127.0.0.1:9091", "127.0.0.1:9091", true},
		{"localhost:9091", "127.0.0.1:9091", true},
		{"127.0.0.1:0", "127.0.0.1:40000", true},
		{"127.0.0.1:9092", "127.0.0.1:9091", false},
		{"127.0.0.2:9091", "127.0.0.1:9091", false},
		{"0.0.0.0:443", "127.0.0.1:443", false},
		{"127.0.0.1:443", "0.0.0.0:443", false},
	} {
		if got := agrees(tc.flag, tcp(tc.socket)); got != tc.want {
			t.Errorf("flag %s, socket %s: agrees %v, want %v", tc.flag, tc.socket, got, tc.want)
		}
	}
}
