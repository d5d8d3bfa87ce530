package main

// This file holds the flags of the limits on what peers may make the
// SuperLink hold (--max-inflight-bytes, --min-request-rate,
// --max-connections, --max-connections-per-peer) and turns them into
// superlink.Limits.

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/superlink"
)

// limitFlags are the limit flags.
type limitFlags struct {
	inflight    sizeValue
	minRate     rateValue
	connections int
	perPeer     int
}

// registerLimitFlags adds the limit flags to fs.
func registerLimitFlags(fs *pflag.FlagSet) *limitFlags {
	l := &limitFlags{inflight: superlink.DefaultMaxInflightBytes}
	fs.Var(&l.inflight, "max-inflight-bytes", "the most request bytes held at once while they are received and handled, over all connections (such as 256MiB, 1GiB or plain bytes); "+
		"a request that does not fit is refused with RESOURCE_EXHAUSTED, which clients retry; the last sixteenth is kept for small requests")
	l.minRate = superlink.DefaultMinRequestRate
	fs.Var(&l.minRate, "min-request-rate", fmt.Sprintf("the slowest an admitted request may arrive (such as 64KiB/s), averaged once it is %v old: "+
		"one that falls behind is reset and its part of the budget freed; at the default a 512 MiB push may take 2h16m", superlink.RequestGrace))
	fs.IntVar(&l.connections, "max-connections", superlink.DefaultMaxConnections, "connections each API holds at once; more wait until one closes, and idle ones are closed sooner once three quarters are taken")
	fs.IntVar(&l.perPeer, "max-connections-per-peer", 0, "connections one peer (a source address, or a client certificate's identity under mutual TLS) may hold on each API; "+
		"more are closed at once (default: --max-connections/16, at least 16)")
	return l
}

// check refuses values out of range, naming the flag.
func (l *limitFlags) check() error {
	if int64(l.inflight) < superlink.MinInflightBytes {
		return cli.Usagef("--max-inflight-bytes %s: give at least 4MiB (the default is 1GiB)", l.inflight.String())
	}
	if l.connections < 1 {
		return cli.Usagef("--max-connections %d: give 1 or more (default %d)", l.connections, superlink.DefaultMaxConnections)
	}
	if l.perPeer < 0 {
		return cli.Usagef("--max-connections-per-peer %d: give 1 or more, or leave it out for --max-connections/16", l.perPeer)
	}
	if l.minRate < 1 {
		return cli.Usagef("--min-request-rate %s: give a rate such as 64KiB/s (the default)", l.minRate.String())
	}
	return nil
}

// limits returns the superlink.Limits of the flags.
func (l *limitFlags) limits() superlink.Limits {
	return superlink.Limits{MaxInflightBytes: int64(l.inflight), MinRequestRate: int64(l.minRate), MaxConnections: l.connections, MaxConnectionsPerPeer: l.perPeer}
}

// attrs are the limits as log attributes.
func (l *limitFlags) attrs() []any {
	lim := l.limits()
	if lim.MaxConnectionsPerPeer == 0 {
		lim.MaxConnectionsPerPeer = max(16, lim.MaxConnections/16)
	}
	return []any{"max_inflight_bytes", int64(l.inflight), "min_request_rate", int64(l.minRate), "max_connections", l.connections, "max_connections_per_peer", lim.MaxConnectionsPerPeer}
}

// rateValue is a byte rate: a size (see sizeValue) with an optional /s.
type rateValue int64

func (v *rateValue) Set(s string) error {
	n, err := parseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if err != nil {
		return fmt.Errorf("%q is not a rate: give bytes per second, such as 64KiB/s or 1MB/s", s)
	}
	*v = rateValue(n)
	return nil
}

func (v *rateValue) Type() string { return "RATE" }

func (v *rateValue) String() string {
	s := sizeValue(*v)
	return s.String() + "/s"
}

// sizeValue is a byte count given as plain bytes or with a unit: B, KiB,
// MiB, GiB, TiB (powers of 1024) or kB, MB, GB, TB (powers of 1000); the
// unit's case does not matter.
type sizeValue int64

var sizeUnits = []struct {
	name string
	mult int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"b", 1},
}

func (v *sizeValue) Set(s string) error {
	n, err := parseSize(s)
	if err != nil {
		return err
	}
	*v = sizeValue(n)
	return nil
}

func (v *sizeValue) Type() string { return "SIZE" }

// String prints the size with the largest binary unit that divides it.
func (v *sizeValue) String() string {
	n := int64(*v)
	for _, u := range []struct {
		name string
		mult int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.name
		}
	}
	return strconv.FormatInt(n, 10)
}

// parseSize parses a size such as "256MiB", "1GiB", "1.5GB" or "1048576".
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	num, mult := t, int64(1)
	lower := strings.ToLower(t)
	for _, u := range sizeUnits {
		if strings.HasSuffix(lower, u.name) {
			num, mult = strings.TrimSpace(t[:len(t)-len(u.name)]), u.mult
			break
		}
	}
	bad := fmt.Errorf("%q is not a size: give bytes, or a number and a unit, such as 256MiB or 1GiB", s)
	if num == "" {
		return 0, bad
	}
	if n, err := strconv.ParseInt(num, 10, 64); err == nil {
		if n < 0 || n > math.MaxInt64/mult {
			return 0, bad
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*float64(mult) >= math.MaxInt64 || strings.ContainsAny(num, "eExXpP_") {
		return 0, bad
	}
	return int64(f * float64(mult)), nil
}
