package main

// This file holds --memory-limit and the garbage collector's settings of
// the SuperLink process.

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"github.com/sepal-fl/sepal/internal/cli"
)

// gcPercent is the SuperLink's GOGC unless the environment sets one: a
// collection once the heap grew by half since the last one, rather than
// Go's default of doubling. Most of a SuperLink's heap is parameter
// arrays, which hold no pointers and cost the collector next to nothing
// to mark, so collecting more often costs little CPU; a fleet of idle
// SuperNodes costs a third less memory each.
const gcPercent = 50

// autoLimitShare is the share of the machine's memory (or of the
// control group's limit) that --memory-limit auto gives the SuperLink.
const autoLimitShare = 0.9

// memoryFlags are the flags of the process's memory.
type memoryFlags struct {
	limit string
}

func registerMemoryFlags(fs *pflag.FlagSet) *memoryFlags {
	m := &memoryFlags{}
	fs.StringVar(&m.limit, "memory-limit", "auto", "soft limit of the SuperLink's memory (SIZE such as 2GiB, or off): near it, Go's garbage collector works harder rather than let the process grow; "+
		"auto is 90% of the machine's memory or of its control group's limit, or GOMEMLIMIT when that is set. "+
		"The collector runs once the heap grew by half (GOGC=50 unless GOGC is set)")
	return m
}

// check refuses a --memory-limit that is not auto, off or a size.
func (m *memoryFlags) check() error {
	if _, _, err := m.resolve(); err != nil {
		return err
	}
	return nil
}

// resolve returns the limit to set (0: none, leave the runtime's), and
// what it came from.
func (m *memoryFlags) resolve() (int64, string, error) {
	switch strings.ToLower(m.limit) {
	case "auto":
		if os.Getenv("GOMEMLIMIT") != "" {
			return 0, "GOMEMLIMIT", nil
		}
		total, from := machineMemory()
		if total <= 0 {
			return 0, "none (the machine's memory is unknown)", nil
		}
		return int64(float64(total) * autoLimitShare), fmt.Sprintf("90%% of %s", from), nil
	case "off", "0":
		return math.MaxInt64, "off", nil
	}
	n, err := parseSize(m.limit)
	if err != nil || n <= 0 {
		return 0, "", cli.Usagef("--memory-limit %q: give a size such as 2GiB or 512MiB, auto (the default) or off", m.limit)
	}
	return n, "--memory-limit", nil
}

// apply sets the runtime's memory limit and, unless GOGC is set, its GC
// percentage, and returns them as log attributes.
func (m *memoryFlags) apply() []any {
	limit, from, _ := m.resolve()
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	gc := "GOGC=" + os.Getenv("GOGC")
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
		gc = strconv.Itoa(gcPercent)
	}
	attrs := []any{"gc_percent", gc}
	if cur := debug.SetMemoryLimit(-1); cur != math.MaxInt64 {
		attrs = append(attrs, "memory_limit", formatSize(cur), "memory_limit_from", from)
	} else {
		attrs = append(attrs, "memory_limit", "off")
	}
	return attrs
}

// memorySources are the files machineMemory reads; tests point them at a
// fake tree.
type memorySources struct {
	meminfo    string // /proc/meminfo: MemTotal
	selfCgroup string // /proc/self/cgroup: the process's control group
	cgroupRoot string // /sys/fs/cgroup: where the control groups are mounted
}

// systemMemory are the files of the running system.
var systemMemory = memorySources{
	meminfo:    "/proc/meminfo",
	selfCgroup: "/proc/self/cgroup",
	cgroupRoot: "/sys/fs/cgroup",
}

// machineMemory returns the memory the process may use: its control
// group's limit when it has one below the machine's memory, else the
// machine's memory (MemTotal); 0 when neither can be read.
func machineMemory() (int64, string) { return systemMemory.memory() }

func (s memorySources) memory() (int64, string) {
	total := memTotal(s.meminfo)
	if n := s.cgroupLimit(); n > 0 && (total == 0 || n < total) {
		return n, "the control group's limit " + formatSize(n)
	}
	return total, "the machine's memory " + formatSize(total)
}

// cgroupLimit returns the smallest memory limit of the process's control
// group and of the groups above it (0: none). The group is the one
// /proc/self/cgroup names, such as /system.slice/sepal.service for a
// systemd service with MemoryMax=, whose limit is in that group's
// memory.max, not in the one at the root; in a container with its own
// cgroup namespace the group is "/" and the root holds the container's
// limit. With cgroup v1 it is the memory controller's group and its
// memory.limit_in_bytes. A group that is not mounted (a container that
// sees a path of the host's) is skipped, and its parents still read.
func (s memorySources) cgroupLimit() int64 {
	v2, v1 := "/", "/" // the root when /proc/self/cgroup cannot be read
	if b, err := os.ReadFile(s.selfCgroup); err == nil {
		for line := range strings.Lines(string(b)) {
			f := strings.SplitN(strings.TrimSpace(line), ":", 3)
			switch {
			case len(f) != 3:
			case f[0] == "0" && f[1] == "":
				v2 = f[2]
			case slices.Contains(strings.Split(f[1], ","), "memory"):
				v1 = f[2]
			}
		}
	}
	limit := smallestLimit(s.cgroupRoot, v2, "memory.max")
	if n := smallestLimit(filepath.Join(s.cgroupRoot, "memory"), v1, "memory.limit_in_bytes"); n > 0 && (limit == 0 || n < limit) {
		limit = n
	}
	return limit
}

// smallestLimit returns the smallest number in the file named file of
// the group group under root and of each group above it up to root (0:
// none; "max", no limit, is skipped).
func smallestLimit(root, group, file string) int64 {
	root = filepath.Clean(root)
	// Rooted, so that a group of "/../x" (outside a cgroup namespace)
	// stays under root.
	dir := filepath.Join(root, path.Clean("/"+group))
	var limit int64
	for {
		if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
			n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err == nil && n > 0 && (limit == 0 || n < limit) {
				limit = n
			}
		}
		if dir == root || len(dir) <= len(root) {
			return limit
		}
		dir = filepath.Dir(dir)
	}
}

// memTotal reads MemTotal from meminfo, /proc/meminfo (0 when it cannot).
func memTotal(meminfo string) int64 {
	f, err := os.Open(meminfo)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 3 && fs[0] == "MemTotal:" && fs[2] == "kB" {
			n, err := strconv.ParseInt(fs[1], 10, 64)
			if err == nil {
				return n << 10
			}
		}
	}
	return 0
}

// formatSize prints n as sizeValue does when it is a whole number of
// MiB, else in MiB rounded.
func formatSize(n int64) string {
	if n%(1<<20) == 0 {
		v := sizeValue(n)
		return v.String()
	}
	return fmt.Sprintf("%.0fMiB", float64(n)/(1<<20))
}
