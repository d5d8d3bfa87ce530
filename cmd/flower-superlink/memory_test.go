package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
)

func TestMemoryLimitFlag(t *testing.T) {
	for _, tt := range []struct {
		arg  string
		want int64 // 0: left to the runtime
	}{
		{"2GiB", 2 << 30},
		{"512mib", 512 << 20},
		{"1500MB", 1500e6},
		{"1073741824", 1 << 30},
		{"1.5GiB", 3 << 29},
		{"off", math.MaxInt64},
	} {
		c, err := parseArgs([]string{"--insecure", "--memory-limit", tt.arg}, io.Discard)
		if err != nil {
			t.Fatalf("--memory-limit %s: %v", tt.arg, err)
		}
		got, _, err := c.memory.resolve()
		if err != nil || got != tt.want {
			t.Errorf("--memory-limit %s: %d, %v; want %d", tt.arg, got, err, tt.want)
		}
	}
	for _, bad := range []string{"lots", "-1GiB", "GiB", ""} {
		_, err := parseArgs([]string{"--insecure", "--memory-limit", bad}, io.Discard)
		if ue, ok := errors.AsType[*cli.UsageError](err); !ok || !strings.Contains(ue.Msg, "--memory-limit") {
			t.Errorf("--memory-limit %q: %v, want a usage error naming the flag", bad, err)
		}
	}
}

// auto is 90% of the machine's memory without GOMEMLIMIT, and left to
// the runtime with it.
func TestMemoryLimitAuto(t *testing.T) {
	t.Setenv("GOMEMLIMIT", "")
	m := &memoryFlags{limit: "auto"}
	total, _ := machineMemory()
	got, from, err := m.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if total > 0 && (got != int64(float64(total)*autoLimitShare) || !strings.Contains(from, "90%")) {
		t.Errorf("auto: %d (%s), want 90%% of %d", got, from, total)
	}
	t.Setenv("GOMEMLIMIT", "1GiB")
	if got, from, _ := m.resolve(); got != 0 || from != "GOMEMLIMIT" {
		t.Errorf("auto with GOMEMLIMIT set: %d (%s), want it left to GOMEMLIMIT", got, from)
	}
}

// apply sets the runtime's limit and GC percentage, and says so.
func TestMemoryApply(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	attrs := (&memoryFlags{limit: "3GiB"}).apply()
	if got := debug.SetMemoryLimit(-1); got != 3<<30 {
		t.Errorf("memory limit %d, want 3 GiB", got)
	}
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GC percent %d, want %d", got, gcPercent)
	}
	got := map[string]string{}
	for i := 0; i+1 < len(attrs); i += 2 {
		got[fmt.Sprint(attrs[i])] = fmt.Sprint(attrs[i+1])
	}
	if got["memory_limit"] != "3GiB" || got["gc_percent"] != "50" || got["memory_limit_from"] != "--memory-limit" {
		t.Errorf("log attributes %v", got)
	}
	t.Setenv("GOGC", "200")
	debug.SetGCPercent(200)
	(&memoryFlags{limit: "off"}).apply()
	if got := debug.SetGCPercent(100); got != 200 {
		t.Errorf("GC percent %d with GOGC=200 set, want it kept", got)
	}
}

// TestMachineMemoryCgroup: auto takes the smallest memory.max from the
// process's control group, as /proc/self/cgroup names it, up to the root
// (a systemd service's MemoryMax= is in its own group, not at the root),
// skipping "max", and the machine's memory without a smaller limit.
func TestMachineMemoryCgroup(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	src := memorySources{
		meminfo:    write("meminfo", "MemTotal:       16777216 kB\nMemFree:         1024 kB\n"), // 16 GiB
		selfCgroup: write("self-cgroup", "0::/system.slice/sepal.service\n"),
		cgroupRoot: filepath.Join(dir, "cgroup"),
	}
	check := func(name string, want int64, wantFrom string) {
		t.Helper()
		got, from := src.memory()
		if got != want || !strings.Contains(from, wantFrom) {
			t.Errorf("%s: %d (%s), want %d (%s)", name, got, from, want, wantFrom)
		}
	}
	check("no memory.max anywhere", 16<<30, "the machine's memory 16GiB")

	write("cgroup/system.slice/sepal.service/memory.max", "max\n")
	write("cgroup/system.slice/memory.max", "max\n")
	check("max all the way up", 16<<30, "the machine's memory")

	write("cgroup/system.slice/sepal.service/memory.max", "2147483648\n")
	check("the service's MemoryMax=", 2<<30, "the control group's limit 2GiB")

	write("cgroup/system.slice/memory.max", "1073741824\n")
	check("a smaller limit on the slice", 1<<30, "the control group's limit 1GiB")

	write("cgroup/memory.max", "536870912\n")
	check("a smaller limit at the root (a container's)", 512<<20, "the control group's limit 512MiB")

	// A container with its own cgroup namespace: "0::/", the root's limit.
	os.Remove(filepath.Join(dir, "cgroup/memory.max"))
	write("self-cgroup", "0::/\n")
	check("0::/ without a limit at the root", 16<<30, "the machine's memory")
	write("cgroup/memory.max", "805306368\n")
	check("0::/ with the container's limit", 768<<20, "the control group's limit 768MiB")

	// A group that is not mounted here, or one outside the namespace
	// ("/../.."), falls back to the groups above it, never above the root.
	write("memory.max", "1024\n") // beside the root: must not be read
	for _, g := range []string{"/docker/abc", "/../../x"} {
		write("self-cgroup", "0::"+g+"\n")
		check("group "+g, 768<<20, "768MiB")
	}

	// cgroup v1: the memory controller's group and memory.limit_in_bytes;
	// its "unlimited" is a number above the machine's memory.
	os.Remove(filepath.Join(dir, "cgroup/memory.max"))
	write("self-cgroup", "4:memory:/system.slice/sepal.service\n1:cpu,cpuacct:/\n0::/\n")
	write("cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
	check("v1 unlimited", 16<<30, "the machine's memory")
	write("cgroup/memory/system.slice/sepal.service/memory.limit_in_bytes", "3221225472\n")
	check("v1 service limit", 3<<30, "the control group's limit 3GiB")

	// A limit above the machine's memory is the machine's.
	write("self-cgroup", "0::/big.service\n")
	os.Remove(filepath.Join(dir, "cgroup/memory/system.slice/sepal.service/memory.limit_in_bytes"))
	write("cgroup/big.service/memory.max", "34359738368\n")
	check("limit above MemTotal", 16<<30, "the machine's memory")

	// Nothing readable: 0.
	src = memorySources{meminfo: filepath.Join(dir, "none"), selfCgroup: filepath.Join(dir, "none"), cgroupRoot: filepath.Join(dir, "none")}
	if got, _ := src.memory(); got != 0 {
		t.Errorf("nothing readable: %d, want 0", got)
	}
}
