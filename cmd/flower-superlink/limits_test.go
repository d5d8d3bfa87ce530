package main

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/superlink"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"256MiB", 256 << 20}, {"1GiB", 1 << 30}, {"1gib", 1 << 30}, {"4194304", 4 << 20},
		{"512 MiB", 512 << 20}, {"1.5GiB", 3 << 29}, {"2GB", 2e9}, {"64kB", 64000}, {"100B", 100},
	} {
		if got, err := parseSize(c.in); err != nil || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "1e9", "0x10", "1XB", "9999999999999TiB", "NaN", "1_000"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestLimitFlags(t *testing.T) {
	c, err := parseArgs([]string{"--insecure", "--max-inflight-bytes", "256MiB", "--max-connections", "10", "--max-connections-per-peer", "3", "--min-request-rate", "1MiB/s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.limits.limits(); l.MaxInflightBytes != 256<<20 || l.MaxConnections != 10 || l.MaxConnectionsPerPeer != 3 || l.MinRequestRate != 1<<20 {
		t.Fatalf("limits %+v", l)
	}
	c, err = parseArgs([]string{"--insecure", "--min-request-rate", "100kB"}, io.Discard)
	if err != nil || c.limits.limits().MinRequestRate != 100e3 {
		t.Fatalf("--min-request-rate 100kB: %v %+v", err, c)
	}
	c, err = parseArgs([]string{"--insecure"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if l := c.limits.limits(); l.MaxInflightBytes != superlink.DefaultMaxInflightBytes || l.MaxConnections != superlink.DefaultMaxConnections || l.MinRequestRate != superlink.DefaultMinRequestRate || l.MaxConnectionsPerPeer != 0 {
		t.Fatalf("default limits %+v", l)
	}
	for _, bad := range []struct{ args, want string }{
		{"--max-inflight-bytes 3MiB", "--max-inflight-bytes 3MiB: give at least 4MiB"},
		{"--max-inflight-bytes lots", `"lots" is not a size: give bytes, or a number and a unit, such as 256MiB or 1GiB`},
		{"--max-connections 0", "--max-connections 0: give 1 or more"},
		{"--max-connections-per-peer -1", "--max-connections-per-peer -1: give 1 or more"},
		{"--min-request-rate 0", "--min-request-rate 0/s: give a rate such as 64KiB/s"},
		{"--min-request-rate fast", `"fast" is not a rate: give bytes per second, such as 64KiB/s`},
	} {
		_, err := parseArgs(append([]string{"--insecure"}, strings.Fields(bad.args)...), io.Discard)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want a usage error with %q", bad.args, err, bad.want)
		}
	}
}
