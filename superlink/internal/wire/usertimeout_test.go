package wire

import (
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// wrappedConn hides a *net.TCPConn as the listeners under the wire layer
// may (the SuperLink's accept gate), keeping its SyscallConn.
type wrappedConn struct{ net.Conn }

func (c wrappedConn) SyscallConn() (syscall.RawConn, error) {
	return c.Conn.(syscall.Conn).SyscallConn()
}

// TCP_USER_TIMEOUT is set through a wrapper that reaches the socket too.
func TestUserTimeoutThroughWrapper(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("TCP_USER_TIMEOUT is Linux's")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	setUserTimeout(wrappedConn{c}, 7*time.Second)
	if d := userTimeout(t, c.(*net.TCPConn)); d != 7*time.Second {
		t.Fatalf("TCP_USER_TIMEOUT %v through a wrapper, want 7s", d)
	}
}
