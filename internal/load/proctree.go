package load

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// TreeCPU returns the CPU time (user+sys, 10 ms resolution) spent so far
// by the process root and its descendants, those still running and those
// that ended and were waited for: the cutime and cstime of the process
// that waited for them. For a PostgreSQL server, root is the postmaster
// (the first line of postmaster.pid): its backends, one per connection,
// come and go, and each one's time moves to the postmaster's children
// time when it ends. The difference of two readings is what the tree
// spent between them.
func TreeCPU(root int) (time.Duration, error) {
	in, err := tree(root)
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for pid := range in {
		t, err := readStatTimes(pid)
		if err != nil {
			if pid == root {
				return 0, err
			}
			continue // ended since the table was read: its time is in its parent's
		}
		total += t
	}
	return total, nil
}

// tree returns root and its live descendants.
func tree(root int) (map[int]bool, error) {
	parents, err := parentsOf()
	if err != nil {
		return nil, err
	}
	in := map[int]bool{root: true}
	for changed := true; changed; {
		changed = false
		for pid, ppid := range parents {
			if !in[pid] && in[ppid] {
				in[pid], changed = true, true
			}
		}
	}
	return in, nil
}

// parentsOf reads every process's parent from /proc.
func parentsOf() (map[int]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fs, err := statFields(pid)
		if err != nil || len(fs) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(fs[1]); err == nil {
			out[pid] = ppid
		}
	}
	return out, nil
}

// readStatTimes returns utime+stime+cutime+cstime of pid.
func readStatTimes(pid int) (time.Duration, error) {
	fs, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(fs) < 15 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var sum int64
	for _, f := range fs[11:15] { // fields 14-17: utime, stime, cutime, cstime
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		sum += v
	}
	return time.Duration(sum) * clockTick, nil
}

// statFields returns the fields of /proc/PID/stat from field 3 (state) on.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// PostmasterPID reads the postmaster's pid from a PostgreSQL data folder
// (its postmaster.pid).
func PostmasterPID(dataDir string) (int, error) {
	b, err := os.ReadFile(dataDir + "/postmaster.pid")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0, errors.Join(fmt.Errorf("%s/postmaster.pid: no pid on its first line", dataDir), err)
	}
	return pid, nil
}

// TreePeakRSS returns the largest peak RSS (VmHWM) among the live
// processes of the tree of root, root included, and the pid that has it.
// For a PostgreSQL server it is the backend that needed the most memory
// (shared buffers it touched included).
func TreePeakRSS(root int) (peak int64, pid int, err error) {
	in, err := tree(root)
	if err != nil {
		return 0, 0, err
	}
	for p := range in {
		m, err := ReadMemory(p)
		if err != nil {
			continue
		}
		if m.HWM > peak {
			peak, pid = m.HWM, p
		}
	}
	if pid == 0 {
		return 0, 0, fmt.Errorf("no memory reading for the process tree of %d", root)
	}
	return peak, pid, nil
}
