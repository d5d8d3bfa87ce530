package cli

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckAddress(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		listen bool
		want   string // "" for valid; else a part of the message
	}{
		{"127.0.0.1:9092", false, ""},
		{"localhost:9092", false, ""},
		{"superlink.example.org:443", false, ""},
		{"[::1]:9092", false, ""},
		{"[fe80::1%eth0]:9092", false, ""},
		{"0.0.0.0:9091", true, ""},
		{":9091", true, ""},
		{"127.0.0.1:0", true, ""},
		{"[::]:9092", true, ""},
		{"my_host:9092", false, ""}, // underscores resolve in /etc/hosts and many DNS servers

		{"127.0.0.1:99999", true, "port 99999 is out of range: ports go from 0 to 65535"},
		{"127.0.0.1:99999", false, "port 99999 is out of range: ports go from 1 to 65535"},
		{"127.0.0.1:123456789012345678901", false, "out of range"},
		{":abc", true, `port "abc" is not a number from 0 to 65535`},
		{"host:-1", false, "port -1 is out of range"},
		{"host:+1", false, `port "+1" is not a number`},
		{"localhost:", false, "the port is empty"},
		{"localhost:", true, "the port is empty"},
		{"localhost", false, "the port is missing"},
		{"", false, "the address is empty"},
		{"::1:9092", false, "in brackets"},
		{"127.0.0.1:0", false, "port 0 is out of range"},
		{":9092", false, "the host is empty"},
		{"exa mple.org:9092", false, `host "exa mple.org" has a space`},
		{"a..b:9092", false, "empty label"},
		{"a/b:9092", false, `the character '/'`},
		{"bücher.de:9092", false, "punycode"},
		{"127.0.0.1%eth0:9092", false, "only IPv6 addresses take a %zone"},
	} {
		f := CheckDialAddress
		if tc.listen {
			f = CheckListenAddress
		}
		err := f("--flag", tc.addr, "127.0.0.1:9092")
		if tc.want == "" {
			if err != nil {
				t.Errorf("%q (listen %v): %v, want valid", tc.addr, tc.listen, err)
			}
			continue
		}
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("%q (listen %v): %v, want a usage error", tc.addr, tc.listen, err)
			continue
		}
		for _, w := range []string{tc.want, "--flag", "127.0.0.1:9092"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q (listen %v): %q lacks %q", tc.addr, tc.listen, err, w)
			}
		}
	}
}

func TestSameListenAddress(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"127.0.0.1:9091", "127.0.0.1:9091", true},
		{"0.0.0.0:9091", "127.0.0.1:9091", true},
		{":9091", "[::1]:9091", true},
		{"[::]:9091", "0.0.0.0:9091", true},
		{"localhost:9091", "LOCALHOST:9091", true},
		{"[::1]:9091", "[0:0:0:0:0:0:0:1]:9091", true},
		{"127.0.0.1:9091", "127.0.0.1:9092", false},
		{"127.0.0.1:9091", "127.0.0.2:9091", false},
		{"127.0.0.1:0", "127.0.0.1:0", false}, // two free ports
	} {
		if got := SameListenAddress(tc.a, tc.b); got != tc.same {
			t.Errorf("SameListenAddress(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}
