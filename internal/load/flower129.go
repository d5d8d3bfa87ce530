package load

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// Flower129Options say what RunFlower129 runs: a real Flower 1.29.0 run
// (stock flower-supernodes, flwr run, Flower's SuperExec and ServerApp)
// through one SuperLink, Sepal's or Flower's own.
type Flower129Options struct {
	// Bin is the folder of a prepared Flower 1.29.0's commands
	// (flowerenv.Flower.Bin): flower-supernode, flwr, flower-superexec and
	// flower-superlink. Required.
	Bin string
	// SuperLink is the flower-superlink binary to measure: Sepal's (Build
	// makes one) or Flower's (Bin/flower-superlink). Required.
	SuperLink string
	// Sepal says that SuperLink is Sepal's: it is also given
	// --driver-api-address on ServerAppIo's port (Sepal serves Flower
	// 1.8.0's Driver API there too; its default would be port 9091), and
	// its log says when a node joined in Sepal's words.
	Sepal bool
	// App is the Flower App to run (its folder is copied first): one of
	// App's. Required.
	App FlowerApp
	// Rounds is the run's num-server-rounds. Default 3.
	Rounds int
	// Nodes is how many SuperNodes run. Default 2.
	Nodes int
	// Dir holds the certificates, the copy of the app, Flower's home and
	// every process's log. Required; the caller removes it.
	Dir string
	// Timeout bounds the whole run. Default 10 minutes.
	Timeout time.Duration
}

// Flower129Result is what the SuperLink process spent, read from /proc
// just after the run ended, before it was stopped.
type Flower129Result struct {
	// CPU is the SuperLink's user+sys time over its whole life up to the
	// end of the run (its own, not its children's: flower-superexec and
	// the ServerApps it starts are not counted); RunCPU the part of it
	// spent between the start of flwr run and its end.
	CPU, RunCPU time.Duration
	// PeakRSS is its VmHWM.
	PeakRSS int64
	// Wall is how long flwr run took, from its start to its exit.
	Wall time.Duration
	// Log is the run's streamed output (flwr run --stream).
	Log string
}

// flowerJoined and sepalJoined match what Flower's and Sepal's
// SuperLinks log when a 1.29 SuperNode joins.
var (
	flowerJoined = regexp.MustCompile(`\[Fleet\.ActivateNode\] Activated node_id=`)
	sepalJoined  = regexp.MustCompile(`msg="node joined" .*generation=1\.29`)
)

// RunFlower129 starts o.SuperLink over TLS (a P-256 CA and certificate
// made here) with Flower 1.29.0's command line, its Fleet, ServerAppIo and
// Control APIs on free loopback ports and its default state (in memory)
// and isolation (subprocess: it starts Flower's flower-superexec), then
// o.Nodes stock flower-supernodes, waits until they joined, runs
// `flwr run APP --stream --run-config num-server-rounds=N` through the
// Control API, checks that every round ran and the strategy finished,
// reads the SuperLink's CPU time and peak RSS, and stops everything it
// started.
func RunFlower129(ctx context.Context, o Flower129Options) (res Flower129Result, err error) {
	if o.Bin == "" || o.SuperLink == "" || o.App.Dir == "" || o.Dir == "" {
		return res, errors.New("Flower129Options.Bin, SuperLink, App and Dir are required")
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Nodes <= 0 {
		o.Nodes = 2
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	ca, cert, key, err := writeCertificates(o.Dir)
	if err != nil {
		return res, err
	}
	var addrs [3]string // Fleet, ServerAppIo, Control
	for i := range addrs {
		if addrs[i], err = FreeAddr(); err != nil {
			return res, err
		}
	}
	fleet, appIo, control := addrs[0], addrs[1], addrs[2]
	env := append(os.Environ(), "PATH="+o.Bin+string(os.PathListSeparator)+os.Getenv("PATH"),
		"FLWR_HOME="+filepath.Join(o.Dir, "flwr"), "PYTHONDONTWRITEBYTECODE=1")

	var procs []*child
	defer func() {
		// The SuperNodes first, then the SuperLink; each with its process
		// group (the SuperExec and apps they started).
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	startProc := func(name, logName string, args ...string) (*child, error) {
		c := &child{log: filepath.Join(o.Dir, logName), done: make(chan struct{})}
		lf, err := os.Create(c.log)
		if err != nil {
			return nil, err
		}
		defer lf.Close()
		c.cmd = exec.Command(name, args...)
		c.cmd.Dir, c.cmd.Env, c.cmd.Stdout, c.cmd.Stderr = o.Dir, env, lf, lf
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := c.cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", name, err)
		}
		go func() { c.cmd.Wait(); close(c.done) }()
		procs = append(procs, c)
		return c, nil
	}
	// ended returns an error naming the first process that ended, with
	// the end of its log.
	ended := func() error {
		for _, c := range procs {
			select {
			case <-c.done:
				return fmt.Errorf("%s ended (%v):\n%s", filepath.Base(c.cmd.Path), c.cmd.ProcessState, tail(c.log))
			default:
			}
		}
		return nil
	}

	args := []string{"--ssl-ca-certfile", ca, "--ssl-certfile", cert, "--ssl-keyfile", key,
		"--fleet-api-address", fleet, "--serverappio-api-address", appIo, "--control-api-address", control}
	joined := flowerJoined
	if o.Sepal {
		args = append(args, "--driver-api-address", appIo)
		joined = sepalJoined
	}
	link, err := startProc(o.SuperLink, "superlink.log", args...)
	if err != nil {
		return res, err
	}
	for _, a := range addrs {
		if err := waitDial(ctx, a, link.done); err != nil {
			return res, fmt.Errorf("%s does not listen on %s: %w\n%s", o.SuperLink, a, err, tail(link.log))
		}
	}
	for i := range o.Nodes {
		nodeAddr, err := FreeAddr()
		if err != nil {
			return res, err
		}
		if _, err := startProc(filepath.Join(o.Bin, "flower-supernode"), fmt.Sprintf("supernode%d.log", i+1),
			"--root-certificates", ca, "--superlink", fleet, "--clientappio-api-address", nodeAddr,
			"--node-config", fmt.Sprintf("partition-id=%d num-partitions=%d", i, o.Nodes)); err != nil {
			return res, err
		}
	}

	// flwr's configuration of this SuperLink, and a copy of the app.
	app := filepath.Join(o.Dir, "app")
	if out, err := exec.CommandContext(ctx, "cp", "-r", o.App.Dir, app).CombinedOutput(); err != nil {
		return res, fmt.Errorf("copying %s: %v\n%s", o.App.Dir, err, out)
	}
	if out, err := exec.CommandContext(ctx, "chmod", "-R", "u+w", app).CombinedOutput(); err != nil {
		return res, fmt.Errorf("chmod %s: %v\n%s", app, err, out)
	}
	flwr := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, filepath.Join(o.Bin, "flwr"), args...)
		cmd.Dir, cmd.Env = app, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("flwr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	if _, err := flwr("config", "list"); err != nil {
		return res, err
	}
	cfg, err := os.OpenFile(filepath.Join(o.Dir, "flwr", "config.toml"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return res, err
	}
	fmt.Fprintf(cfg, "\n[superlink.bench]\naddress = %q\nroot-certificates = %q\n", control, ca)
	if err := cfg.Close(); err != nil {
		return res, err
	}

	// Every SuperNode joined: the run starts at once.
	joinBy := time.Now().Add(3 * time.Minute)
	for {
		b, _ := os.ReadFile(link.log)
		if len(joined.FindAllIndex(b, -1)) >= o.Nodes {
			break
		}
		if err := ended(); err != nil {
			return res, fmt.Errorf("before the SuperNodes joined, %w", err)
		}
		if time.Now().After(joinBy) {
			return res, fmt.Errorf("the SuperNodes did not join within 3 minutes:\n%s", tail(link.log))
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("the SuperNodes did not join: %w\n%s", ctx.Err(), tail(link.log))
		case <-time.After(100 * time.Millisecond):
		}
	}

	cpu0, err := ReadCPU(link.cmd.Process.Pid)
	if err != nil {
		return res, err
	}
	began := time.Now()
	out, err := flwr("run", ".", "bench", "--stream", "--run-config", fmt.Sprintf("num-server-rounds=%d", o.Rounds))
	res.Wall = time.Since(began)
	res.Log = out
	if err != nil {
		if e := ended(); e != nil {
			err = fmt.Errorf("%w\nmeanwhile %w", err, e)
		}
		return res, err
	}
	cpu1, err1 := ReadCPU(link.cmd.Process.Pid)
	mem, err2 := ReadMemory(link.cmd.Process.Pid)
	if err := errors.Join(err1, err2); err != nil {
		return res, fmt.Errorf("reading the SuperLink's /proc: %w", err)
	}
	res.CPU, res.RunCPU, res.PeakRSS = cpu1, cpu1-cpu0, mem.HWM
	for k := 1; k <= o.Rounds; k++ {
		if want := fmt.Sprintf("[ROUND %d/%d]", k, o.Rounds); !strings.Contains(out, want) {
			return res, fmt.Errorf("the run's log has no %s:\n%s", want, out)
		}
	}
	if !strings.Contains(out, "Strategy execution finished") {
		return res, fmt.Errorf("the run did not finish:\n%s", out)
	}
	if n := strings.Count(out, fmt.Sprintf("aggregate_train: Received %d results and 0 failures", o.Nodes)); n != o.Rounds {
		return res, fmt.Errorf("%d rounds trained on %d nodes without failures, want %d:\n%s", n, o.Nodes, o.Rounds, out)
	}
	for k := 1; k <= o.Rounds && o.App.RoundLine != ""; k++ {
		if want := fmt.Sprintf(o.App.RoundLine, k, k); !strings.Contains(out, want) {
			return res, fmt.Errorf("the run's log has no %q: the arrays did not all make the trip whole:\n%s", want, out)
		}
	}
	return res, nil
}

// waitDial waits until addr accepts TCP connections, failing when done
// (a process's end) is closed first.
func waitDial(ctx context.Context, addr string, done <-chan struct{}) error {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-done:
			return errors.New("the process ended")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// child is a process RunFlower129 started, the leader of its own process
// group.
type child struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once it ended and was waited for
}

// stop ends the process: SIGINT, then after 20 s SIGKILL to its group,
// and a SIGKILL to what is left of the group once it ended.
func (c *child) stop() {
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.done:
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
}

// FlowerApp is a Flower App RunFlower129 runs.
type FlowerApp struct {
	// Dir is its folder.
	Dir string
	// RoundLine, when not "", is a format of the line its ServerApp prints
	// after round k (given k twice) when every array came back whole.
	RoundLine string
}

// App returns a Flower App for RunFlower129, by name: "quickstart" is
// quickstart-numpy from Flower's examples under flowerSource
// (flowerenv.Flower.Source), "arrays32" this package's testdata/arrays32
// (one float32 array of 32 MiB each way per SuperNode and round, training
// only), found from the working directory.
func App(name, flowerSource string) (FlowerApp, error) {
	switch name {
	case "quickstart":
		return FlowerApp{Dir: filepath.Join(flowerSource, "examples", "quickstart-numpy")}, nil
	case "arrays32":
		root, err := moduleRoot()
		if err != nil {
			return FlowerApp{}, err
		}
		return FlowerApp{Dir: filepath.Join(root, "internal", "load", "testdata", "arrays32"),
			RoundLine: "arrays32 round %d: float32 33554432 bytes, mean %d.0"}, nil
	}
	return FlowerApp{}, fmt.Errorf("no Flower App %q: want quickstart or arrays32", name)
}

// moduleRoot is the folder of Sepal's go.mod above the working directory.
func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/sepal-fl/sepal\n")) {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no Sepal go.mod above %s: run from the checkout", wd)
		}
	}
}
