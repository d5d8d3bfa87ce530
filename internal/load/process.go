// Package load is Sepal's load harness: it starts a flower-superlink
// binary as a process of its own, over TLS with a P-256 certificate made by
// selfsigned, on free loopback ports, drives it with Go SuperNodes and a Go
// ServerApp that send the Flower 1.8.0 messages (app.RunNode and
// app.RunFedAvg, with the record keys of Flower 1.8.0), and measures what
// the SuperLink process spends: CPU seconds (user+sys, from its rusage once
// it has exited, and from /proc while it runs), peak RSS (VmHWM) and RSS.
//
// Three workloads: FedAvg (Flower 1.8.0's messages: one get_parameters, then
// per round a train TaskIns per node carrying the model, a same-size train
// TaskRes per node, an evaluate TaskIns per node and small evaluate
// replies), Idle (many connected SuperNodes polling, for the memory each
// costs) and RPCs (small calls, Ping and empty PullTaskIns, as fast as many
// nodes can make them).
//
// The command internal/cmd/sepal-load runs them and prints one line per
// figure. The harness is Linux only (it reads /proc).
package load

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sepal-fl/sepal/certfile"
	"github.com/sepal-fl/sepal/selfsigned"
	"github.com/sepal-fl/sepal/superlink"
	"github.com/sepal-fl/sepal/transport"
)

// Build compiles flower-superlink from the module that holds the current
// folder into dir and returns the binary's path. tags are Go build tags
// (none: the binary users run). It needs the go command on PATH.
func Build(ctx context.Context, dir string, tags ...string) (string, error) {
	out := filepath.Join(dir, "flower-superlink")
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "github.com/sepal-fl/sepal/cmd/flower-superlink")
	cmd := exec.CommandContext(ctx, "go", args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building flower-superlink (go %s): %v\n%s", strings.Join(args, " "), err, b)
	}
	return out, nil
}

// Options say how to start the SuperLink.
type Options struct {
	// Binary is the flower-superlink to run. Required (Build makes one).
	Binary string
	// Dir holds the certificates and the SuperLink's log. Required; the
	// caller removes it.
	Dir string
	// Args are passed to flower-superlink after the certificate and
	// address flags, such as "--database", "state.db".
	Args []string
	// Env is added to the SuperLink's environment (KEY=VALUE), such as
	// GOGC=50.
	Env []string
	// StartTimeout bounds the wait for the SuperLink to serve. Default 60s.
	StartTimeout time.Duration
	// Nodes is how many nodes the workload registers, all from the one
	// loopback address, at once: Start raises the SuperLink's registration
	// burst and --max-nodes to fit them where they pass the defaults (Args
	// given after may set them again). Default 0: the defaults.
	Nodes int
}

// NodeArgs are the flower-superlink flags that let n nodes register from
// one address at once: a --node-registration-burst and a --max-nodes of
// n where n passes their defaults, nothing otherwise.
func NodeArgs(n int) []string {
	var args []string
	if n > superlink.DefaultNodeRegistrationBurst {
		args = append(args, "--node-registration-burst", strconv.Itoa(n))
	}
	if n > superlink.DefaultMaxNodes {
		args = append(args, "--max-nodes", strconv.Itoa(n))
	}
	return args
}

// SuperLink is a running flower-superlink process.
type SuperLink struct {
	Fleet, Driver string                  // 127.0.0.1:port of each API
	TLS           transport.ClientOptions // trusts the SuperLink's CA
	LogFile       string                  // its stdout and stderr

	dir  string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{}
	err  error // of Wait, once done is closed
}

// Start writes a P-256 CA and server certificate into o.Dir, picks two free
// loopback ports and starts o.Binary serving the Fleet and Driver APIs
// there over TLS, with NodeArgs(o.Nodes) and o.Args. It returns once the SuperLink logs that it
// serves, or an error with the end of its log. Stop ends it.
func Start(ctx context.Context, o Options) (*SuperLink, error) {
	if o.Binary == "" || o.Dir == "" {
		return nil, errors.New("Options.Binary and Options.Dir are required")
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 60 * time.Second
	}
	ca, cert, key, err := writeCertificates(o.Dir)
	if err != nil {
		return nil, err
	}
	fleet, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	driver, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(o.Dir, "superlink.log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{
		"--certificates", ca, cert, key,
		"--grpc-rere-fleet-api-address", fleet,
		"--driver-api-address", driver,
	}, NodeArgs(o.Nodes)...)
	args = append(args, o.Args...)
	cmd := exec.Command(o.Binary, args...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", o.Binary, err)
	}
	s := &SuperLink{
		Fleet: fleet, Driver: driver,
		TLS:     transport.ClientOptions{RootCertificates: ca},
		LogFile: logPath,
		dir:     o.Dir, cmd: cmd, log: lf, done: make(chan struct{}),
	}
	go func() {
		s.err = cmd.Wait()
		close(s.done)
	}()
	deadline := time.NewTimer(o.StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("msg=serving")) {
			return s, nil
		}
		select {
		case <-s.done:
			lf.Close()
			return nil, fmt.Errorf("flower-superlink ended before it served (%v):\n%s", s.err, tail(logPath))
		case <-deadline.C:
			s.Stop()
			return nil, fmt.Errorf("flower-superlink did not serve within %v:\n%s", o.StartTimeout, tail(logPath))
		case <-ctx.Done():
			s.Stop()
			return nil, ctx.Err()
		case <-tick.C:
		}
	}
}

// PID is the SuperLink's process id.
func (s *SuperLink) PID() int { return s.cmd.Process.Pid }

// Exit is what Stop learnt when the SuperLink ended.
type Exit struct {
	// CPU is user+sys time of the whole process life (its rusage).
	CPU, User, Sys time.Duration
	// Err is the process's exit error: nil after a graceful stop.
	Err error
}

// Stop sends SIGINT, waits up to 30 s for the SuperLink to end (then kills
// it) and returns its rusage. It may be called more than once.
func (s *SuperLink) Stop() Exit {
	select {
	case <-s.done:
	default:
		_ = s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(30 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	s.log.Close()
	e := Exit{Err: s.err}
	if st := s.cmd.ProcessState; st != nil {
		e.User, e.Sys = st.UserTime(), st.SystemTime()
		e.CPU = e.User + e.Sys
	}
	return e
}

// Memory is a reading of /proc/PID/status, in bytes.
type Memory struct {
	RSS, HWM int64 // VmRSS and VmHWM (peak)
}

// Memory reads the SuperLink's current and peak RSS.
func (s *SuperLink) Memory() (Memory, error) { return ReadMemory(s.PID()) }

// ReadMemory reads the current and peak RSS of process pid from
// /proc/PID/status.
func ReadMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	var m Memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch k {
		case "VmRSS":
			dst = &m.RSS
		case "VmHWM":
			dst = &m.HWM
		default:
			continue
		}
		fs := strings.Fields(v)
		if len(fs) != 2 || fs[1] != "kB" {
			return Memory{}, fmt.Errorf("/proc/%d/status: unexpected %s line %q", pid, k, sc.Text())
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return Memory{}, err
		}
		*dst = n << 10
	}
	if m.RSS == 0 || m.HWM == 0 {
		return Memory{}, fmt.Errorf("/proc/%d/status has no VmRSS or VmHWM", pid)
	}
	return m, sc.Err()
}

// ResetPeak sets the peak RSS (VmHWM) of process pid back to its current
// RSS, by writing 5 to /proc/PID/clear_refs (Linux 4.0 and later; the
// caller must own the process or be root), so that a later ReadMemory
// shows the peak of what happened in between.
func ResetPeak(pid int) error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// CPU reads the SuperLink's user+sys time so far from /proc/PID/stat (10 ms
// resolution).
func (s *SuperLink) CPU() (time.Duration, error) {
	st, err := readStat(s.PID())
	return st.CPU, err
}

// PageFaults reads the number of minor page faults of the SuperLink so
// far: each is a page of memory it touched for the first time (or again,
// after returning it to the kernel).
func (s *SuperLink) PageFaults() (int64, error) {
	st, err := readStat(s.PID())
	return st.MinorFaults, err
}

// stat is what the harness reads of /proc/PID/stat.
type stat struct {
	CPU         time.Duration // utime+stime
	MinorFaults int64
}

// ReadCPU reads the user+sys time so far of process pid from
// /proc/PID/stat (10 ms resolution).
func ReadCPU(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	return st.CPU, err
}

func readStat(pid int) (stat, error) {
	fs, err := statFields(pid)
	if err != nil {
		return stat{}, err
	}
	// fs[0] is field 3 (state); minflt is field 10, utime and stime are
	// fields 14 and 15.
	if len(fs) < 13 {
		return stat{}, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	mf, err1 := strconv.ParseInt(fs[7], 10, 64)
	ut, err2 := strconv.ParseInt(fs[11], 10, 64)
	st, err3 := strconv.ParseInt(fs[12], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return stat{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return stat{CPU: time.Duration(ut+st) * clockTick, MinorFaults: mf}, nil
}

// tail returns the last lines of a log file, for error messages.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// writeCertificates makes a P-256 CA and a server certificate for
// localhost, 127.0.0.1 and ::1 (flower-certs' defaults) and writes them
// into dir as flower-certs names them.
func writeCertificates(dir string) (ca, cert, key string, err error) {
	c, err := selfsigned.NewCA(selfsigned.CAOptions{KeyType: selfsigned.ECDSAP256})
	if err != nil {
		return "", "", "", err
	}
	p, err := c.IssueServer(selfsigned.ServerOptions{KeyType: selfsigned.ECDSAP256})
	if err != nil {
		return "", "", "", err
	}
	ca, cert, key = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	for _, w := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{{ca, c.CertPEM, 0o644}, {cert, p.CertPEM, 0o644}, {key, p.KeyPEM, 0o600}} {
		if err := certfile.WriteFileAtomic(w.path, w.data, w.perm); err != nil {
			return "", "", "", err
		}
	}
	return ca, cert, key, nil
}

// FreeAddr returns a loopback address whose port (TCP and UDP) was free a
// moment ago, for a process started next. The port is drawn at random
// below the kernel's ephemeral range: a ":0" port is an ephemeral one,
// which the many outgoing connections of a load run or a test suite can
// take between this check and the child's bind (seen as "address already
// in use"). No port is handed out twice by one process. Safe for
// concurrent use.
func FreeAddr() (string, error) {
	lo := ephemeralLow()
	for range 200 {
		port := 10000 + rand.IntN(lo-10000)
		portsMu.Lock()
		taken := portsGiven[port]
		portsGiven[port] = true
		portsMu.Unlock()
		if taken {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr, nil
	}
	return "", errors.New("no free loopback port found below the ephemeral range")
}

var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// ephemeralLow is the first port of the kernel's ephemeral range (32768 when
// it cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo <= 11000 {
		return 32768
	}
	return lo
}
