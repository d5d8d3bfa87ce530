package main

import (
	"errors"
	"fmt"
	"io"
	"math"
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
