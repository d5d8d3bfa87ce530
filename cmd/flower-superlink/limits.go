package main

// This file holds the flags of the limits on what peers may make the
// SuperLink hold (--max-inflight-bytes, --max-connections) and turns them
// into superlink.Limits.

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
	connections int
}

// registerLimitFlags adds the limit flags to fs.
func registerLimitFlags(fs *pflag.FlagSet) *limitFlags {
	l := &limitFlags{inflight: superlink.DefaultMaxInflightBytes}
	fs.Var(&l.inflight, "max-inflight-bytes", "the most request bytes held at once while they are received and handled, over all connections (such as 256MiB, 1GiB or plain bytes); "+
		"a request that does not fit is refused with RESOURCE_EXHAUSTED, which clients retry; the last sixteenth is kept for small requests")
	fs.IntVar(&l.connections, "max-connections", superlink.DefaultMaxConnections, "connections each API holds at once; more wait until one closes")
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
	return nil
}

// limits returns the superlink.Limits of the flags.
func (l *limitFlags) limits() superlink.Limits {
	return superlink.Limits{MaxInflightBytes: int64(l.inflight), MaxConnections: l.connections}
}

// attrs are the limits as log attributes.
func (l *limitFlags) attrs() []any {
	return []any{"max_inflight_bytes", int64(l.inflight), "max_connections", l.connections}
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
