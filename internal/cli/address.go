package cli

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// CheckListenAddress checks addr, the HOST:PORT a command listens on, given
// with flag (such as "--driver-api-address"), before anything listens, so
// that an impossible address is a usage error at once rather than a failed
// listen (or, for "HOST:", a listen on a random port). HOST may be empty
// (every interface), an IP address (IPv6 in brackets) or a host name; PORT
// must be a number from 0 to 65535, 0 meaning any free port. example is a
// good address to show, such as "0.0.0.0:9092". It returns a *UsageError
// naming the flag, the value and what is wrong, or nil. It does no I/O.
func CheckListenAddress(flag, addr, example string) error {
	return checkAddress(flag, addr, example, true)
}

// CheckDialAddress checks addr, the HOST:PORT of a server a command
// connects to, given with flag (such as "--server"), so that an impossible
// address is a usage error at once rather than a retry loop: HOST must be
// given (an IP address or a host name) and PORT must be a number from 1 to
// 65535. example is a good address to show, such as "127.0.0.1:9092". It
// returns a *UsageError naming the flag, the value and what is wrong, or
// nil. It does no I/O (a name that does not resolve is a network failure,
// left to the caller's retries).
func CheckDialAddress(flag, addr, example string) error {
	return checkAddress(flag, addr, example, false)
}

func checkAddress(flag, addr, example string, listen bool) error {
	bad := func(why string) error {
		return Usagef("%s %q: %s; give HOST:PORT, such as %s", flag, addr, why, example)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		switch {
		case addr == "":
			return bad("the address is empty")
		case errors.As(err, &ae) && strings.Contains(ae.Err, "missing port"):
			return bad("the port is missing")
		case strings.Count(addr, ":") > 1 && !strings.HasPrefix(addr, "["):
			return bad("an IPv6 address goes in brackets, as [::1]:PORT")
		}
		return bad("it is not HOST:PORT")
	}
	lo := 1
	if listen {
		lo = 0
	}
	switch n, err := strconv.Atoi(port); {
	case port == "":
		return bad("the port is empty")
	case err != nil && strings.TrimLeft(port, "+-0123456789") == "":
		return bad(fmt.Sprintf("port %s is out of range: ports go from %d to 65535", port, lo))
	case err != nil || strings.HasPrefix(port, "+"):
		return bad(fmt.Sprintf("port %q is not a number from %d to 65535", port, lo))
	case n < lo || n > 65535:
		return bad(fmt.Sprintf("port %d is out of range: ports go from %d to 65535", n, lo))
	}
	if host == "" {
		if listen {
			return nil
		}
		return bad("the host is empty")
	}
	if why := badHost(host); why != "" {
		return bad(why)
	}
	return nil
}

// badHost says why host can be neither an IP address nor a host name, or "".
func badHost(host string) string {
	ip, zone, _ := strings.Cut(host, "%")
	if net.ParseIP(ip) != nil {
		if zone != "" && !strings.Contains(ip, ":") {
			return fmt.Sprintf("host %q: only IPv6 addresses take a %%zone", host)
		}
		return ""
	}
	if len(host) > 253 {
		return fmt.Sprintf("host %q is longer than 253 characters", host)
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if label == "" {
			return fmt.Sprintf("host %q has an empty label (two dots in a row, or a leading dot)", host)
		}
		for _, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			case r == ' ':
				return fmt.Sprintf("host %q has a space", host)
			case r > 0x7f:
				return fmt.Sprintf("host %q is not ASCII: give its punycode (xn--) form", host)
			default:
				return fmt.Sprintf("host %q has the character %q, which no host name or IP address has", host, r)
			}
		}
	}
	return ""
}

// SameListenAddress reports whether two listen addresses, both passed by
// CheckListenAddress, would take the same port: the same port other than
// 0, and the same host or one that listens on every interface ("", 0.0.0.0
// or ::). Host names are compared as written ("localhost" is not resolved).
func SameListenAddress(a, b string) bool {
	ha, pa, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	hb, pb, err := net.SplitHostPort(b)
	if err != nil {
		return false
	}
	na, _ := strconv.Atoi(pa)
	nb, _ := strconv.Atoi(pb)
	if na != nb || na == 0 {
		return false
	}
	if wildcard(ha) || wildcard(hb) {
		return true
	}
	ia, ib := net.ParseIP(ha), net.ParseIP(hb)
	if ia != nil && ib != nil {
		return ia.Equal(ib)
	}
	return strings.EqualFold(ha, hb)
}

func wildcard(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}
