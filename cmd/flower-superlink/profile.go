//go:build sepal_pprof

// Profiling for the load harness (internal/cmd/sepal-load --profile DIR),
// in binaries built with -tags sepal_pprof only: SEPAL_CPUPROFILE,
// SEPAL_MEMPROFILE and SEPAL_TRACE name files that get a CPU profile of the
// whole run, a heap profile at the end (with every allocation of the run in
// alloc_space) and an execution trace; SEPAL_MEMLOG (a duration such as
// 50ms) logs the runtime's memory classes that often, to stderr;
// SEPAL_HEAPDUMP names a file that gets a heap profile on each SIGUSR1.

package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"syscall"
	"time"
)

// heapOnSignal writes a heap profile (after a collection) to path each
// time the process gets SIGUSR1.
func heapOnSignal(path string) {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	for range c {
		runtime.GC()
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "SEPAL_HEAPDUMP:", err)
			continue
		}
		_ = pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
		fmt.Fprintln(os.Stderr, "SEPAL_HEAPDUMP: written", path)
	}
}

// memlog prints, every d, the memory classes in MiB: heap objects (live
// and garbage), heap free (mapped, reusable), released, stacks, other.
func memlog(d time.Duration) {
	names := []string{
		"/memory/classes/heap/objects:bytes",
		"/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes",
		"/memory/classes/heap/released:bytes",
		"/memory/classes/heap/stacks:bytes",
		"/memory/classes/total:bytes",
		"/gc/heap/live:bytes",
		"/gc/heap/goal:bytes",
	}
	s := make([]metrics.Sample, len(names))
	for i, n := range names {
		s[i].Name = n
	}
	start := time.Now()
	for range time.Tick(d) {
		metrics.Read(s)
		var b strings.Builder
		fmt.Fprintf(&b, "memlog t=%.2f", time.Since(start).Seconds())
		for i, n := range names {
			k := strings.TrimSuffix(strings.TrimPrefix(n, "/"), ":bytes")
			k = strings.NewReplacer("memory/classes/", "", "/", "_").Replace(k)
			fmt.Fprintf(&b, " %s=%.1f", k, float64(s[i].Value.Uint64())/(1<<20))
		}
		fmt.Fprintln(os.Stderr, b.String())
	}
}

var profileFiles []*os.File

func init() {
	if p := os.Getenv("SEPAL_CPUPROFILE"); p != "" {
		f := createProfile(p)
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "SEPAL_CPUPROFILE:", err)
			os.Exit(1)
		}
	}
	if p := os.Getenv("SEPAL_HEAPDUMP"); p != "" {
		go heapOnSignal(p)
	}
	if d, err := time.ParseDuration(os.Getenv("SEPAL_MEMLOG")); err == nil && d > 0 {
		go memlog(d)
	}
	if p := os.Getenv("SEPAL_TRACE"); p != "" {
		if err := trace.Start(createProfile(p)); err != nil {
			fmt.Fprintln(os.Stderr, "SEPAL_TRACE:", err)
			os.Exit(1)
		}
	}
}

func createProfile(path string) *os.File {
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	profileFiles = append(profileFiles, f)
	return f
}

// stopProfiles ends the profiles and writes the heap profile.
func stopProfiles() {
	pprof.StopCPUProfile()
	trace.Stop()
	if p := os.Getenv("SEPAL_MEMPROFILE"); p != "" {
		f := createProfile(p)
		runtime.GC()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			fmt.Fprintln(os.Stderr, "SEPAL_MEMPROFILE:", err)
		}
	}
	for _, f := range profileFiles {
		f.Close()
	}
}
