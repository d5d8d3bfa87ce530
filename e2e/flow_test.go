package e2e

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSeedFlow types the seed's commands with free ports: flower-certs, a
// flower-superlink with the three certificate files, two client apps (one
// dialling localhost) and a server app running three FedAvg rounds. Then one
// client app leaves on SIGINT and the other on a reconnect task, both
// calling DeleteNode and exiting 0.
func TestSeedFlow(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()

	out, code := run(t, 30*time.Second, dir, nil, "flower-certs")
	if code != 0 {
		t.Fatalf("flower-certs exited %d:\n%s", code, out)
	}
	for _, f := range []string{"ca.crt", "ca.key", "server.pem", "server.key"} {
		if _, err := os.Stat(filepath.Join(dir, "certificates", f)); err != nil {
			t.Fatalf("flower-certs did not write certificates/%s: %v\n%s", f, err, out)
		}
	}

	link := startSuperLink(t, linkOptions{dir: dir, args: []string{"--certificates", "certificates/ca.crt", "certificates/server.pem", "certificates/server.key"}})
	driver, fleet := link.driver, link.fleet
	_, fleetPort, _ := net.SplitHostPort(fleet)

	clients := []*proc{
		start(t, dir, nil, "flower-client-app", "client:app", "--root-certificates", "certificates/ca.crt", "--server", fleet),
		start(t, dir, nil, "flower-client-app", "client:app", "--root-certificates", "certificates/ca.crt", "--server", net.JoinHostPort("localhost", fleetPort)),
	}

	out, code = run(t, 90*time.Second, dir, nil, "flower-server-app", "server:app",
		"--root-certificates", "certificates/ca.crt", "--server", driver, "--rounds", "3")
	if code != 0 {
		t.Fatalf("flower-server-app exited %d:\n%s", code, out)
	}
	rounds := parseRounds(t, out)
	if len(rounds) != 3 || rounds[2].of != 3 {
		t.Fatalf("flower-server-app printed %d round lines, want 3 of 3:\n%s", len(rounds), out)
	}
	// The first loss is the nodes' training loss from the initial model.
	if first, last := rounds[0].trainLoss, rounds[2].evalLoss; !(last < first) {
		t.Fatalf("the loss did not fall: round 1 train_loss %v, round 3 eval_loss %v:\n%s", first, last, out)
	}
	for _, r := range rounds {
		if r.nodes != 2 {
			t.Errorf("round %d averaged %d nodes, want 2:\n%s", r.n, r.nodes, out)
		}
	}

	// The first client app leaves on SIGINT (calling DeleteNode) and exits 0.
	stopClients(t, clients[:1])
	waitCount(t, link.proc, "reason=delete_node", 1, 10*time.Second)

	// The second leaves on a reconnect task, as 1.8.0's shutdown sends it:
	// a one-round run with --stop-nodes, then it exits 0 by itself.
	out, code = run(t, 60*time.Second, dir, nil, "flower-server-app", "server:app",
		"--root-certificates", "certificates/ca.crt", "--server", driver, "--rounds", "1", "--min-nodes", "1", "--stop-nodes")
	if code != 0 {
		t.Fatalf("flower-server-app --stop-nodes exited %d:\n%s", code, out)
	}
	if rs := parseRounds(t, out); len(rs) != 1 || rs[0].nodes != 1 {
		t.Fatalf("the one-round run after a client left: %+v, want 1 round of 1 node:\n%s", rs, out)
	}
	if code := clients[1].wait(t, 15*time.Second); code != 0 {
		t.Errorf("flower-client-app exited %d after the reconnect task, want 0:\n%s", code, clients[1].out.String())
	}
	waitCount(t, link.proc, "reason=delete_node", 2, 10*time.Second)
}

// waitCount waits up to d for p's output to hold s n times.
func waitCount(t *testing.T, p *proc, s string, n int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for strings.Count(p.out.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s printed %q %d times within %v, want %d:\n%s", p.name, s, strings.Count(p.out.String(), s), d, n, p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitListening waits until every address accepts TCP connections, failing
// the test early if p ends first.
func waitListening(t *testing.T, p *proc, d time.Duration, addrs ...string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-p.done:
				t.Fatalf("%s ended (%v) before listening on %s:\n%s", p.name, p.err, a, p.out.String())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s is not listening on %s after %v:\n%s", p.name, a, d, p.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// roundLine matches the line the server app (and flower-demo, through it)
// prints per round: "round 1/3: train_loss 0.533063 eval_loss 0.011177 nodes 2 time 0.49s".
var roundLine = regexp.MustCompile(`(?m)^round (\d+)/(\d+): train_loss (\S+) eval_loss (\S+) nodes (\d+) time ([0-9.]+)s$`)

// round is one parsed round line.
type round struct {
	n, of, nodes        int
	trainLoss, evalLoss float64
	took                time.Duration // the round's time, as printed
}

// parseRounds returns the round lines of out, checking their numbering.
func parseRounds(t testing.TB, out string) []round {
	t.Helper()
	var rs []round
	for i, m := range roundLine.FindAllStringSubmatch(out, -1) {
		var r round
		var err error
		nums := []*int{&r.n, &r.of, &r.nodes}
		for j, s := range []string{m[1], m[2], m[5]} {
			if *nums[j], err = strconv.Atoi(s); err != nil {
				t.Fatalf("round line %q: %v", m[0], err)
			}
		}
		if r.trainLoss, err = strconv.ParseFloat(m[3], 64); err != nil {
			t.Fatalf("round line %q: %v", m[0], err)
		}
		if r.evalLoss, err = strconv.ParseFloat(m[4], 64); err != nil {
			t.Fatalf("round line %q: %v", m[0], err)
		}
		secs, err := strconv.ParseFloat(m[6], 64)
		if err != nil {
			t.Fatalf("round line %q: %v", m[0], err)
		}
		r.took = time.Duration(secs * float64(time.Second))
		if r.n != i+1 {
			t.Fatalf("round line %d is numbered %d:\n%s", i+1, r.n, out)
		}
		rs = append(rs, r)
	}
	return rs
}

// stopClients ends the client apps with SIGINT and checks that they exit 0.
func stopClients(t *testing.T, clients []*proc) {
	t.Helper()
	for _, c := range clients {
		c.stop()
		if code := c.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("%s exited %d after SIGINT, want 0:\n%s", c.name, code, c.out.String())
		}
	}
}

// TestDemo runs flower-demo as a newcomer would and checks its story: three
// rounds, TLS 1.3, a falling loss, exit 0.
func TestDemo(t *testing.T) {
	needE2E(t)
	t.Parallel()
	out, code := run(t, 60*time.Second, t.TempDir(), nil, "flower-demo")
	if code != 0 {
		t.Fatalf("flower-demo exited %d:\n%s", code, out)
	}
	rounds := parseRounds(t, out)
	if len(rounds) != 3 || rounds[2].of != 3 {
		t.Fatalf("flower-demo printed %d round lines, want 3 of 3:\n%s", len(rounds), out)
	}
	if !(rounds[2].evalLoss < rounds[0].evalLoss) {
		t.Errorf("eval_loss did not fall from round 1 to round 3:\n%s", out)
	}
	if rounds[0].nodes != 2 {
		t.Errorf("round 1 averaged %d nodes, want 2 (the default --clients):\n%s", rounds[0].nodes, out)
	}
	m := regexp.MustCompile(`(?m)^certificates +(\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flower-demo did not print where the certificates went:\n%s", out)
	}
	if _, err := os.Stat(filepath.Dir(m[1])); !os.IsNotExist(err) {
		t.Errorf("the temporary folder %s is still there after the run (%v)", filepath.Dir(m[1]), err)
	}
	for _, want := range []string{"tls           TLS 1.3, ", "over TLS 1.3 with certificates from ", "ALPN h2", "short polling", "localhost, 127.0.0.1, ::1", "in 3 rounds", "flower-superlink --certificates"} {
		if !strings.Contains(out, want) {
			t.Errorf("flower-demo output lacks %q:\n%s", want, out)
		}
	}
}

// TestDemoDirAndFlags checks that --dir keeps the certificates and that bad
// flags are refused with exit 2 and a line naming the flag.
func TestDemoDirAndFlags(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "demo")
	out, code := run(t, 60*time.Second, t.TempDir(), nil, "flower-demo", "--dir", dir, "--clients", "1", "--rounds", "1")
	if code != 0 {
		t.Fatalf("flower-demo --dir exited %d:\n%s", code, out)
	}
	if n := len(parseRounds(t, out)); n != 1 {
		t.Fatalf("--rounds 1 printed %d round lines:\n%s", n, out)
	}
	for _, f := range []string{"ca.crt", "ca.key", "server.pem", "server.key"} {
		if _, err := os.Stat(filepath.Join(dir, "certificates", f)); err != nil {
			t.Errorf("--dir did not keep certificates/%s: %v", f, err)
		}
	}
	// A second run does not overwrite them.
	out, code = run(t, 30*time.Second, t.TempDir(), nil, "flower-demo", "--dir", dir)
	if code != 1 || !strings.Contains(out, "already exists") {
		t.Errorf("a second run into the same --dir: exit %d, want 1 and a refusal:\n%s", code, out)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--clients", "0"}, "--clients 0"},
		{[]string{"--rounds", "0"}, "--rounds 0"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--bogus"}, "unknown flag: --bogus"},
	} {
		out, code := run(t, 10*time.Second, t.TempDir(), nil, "flower-demo", c.args...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Errorf("flower-demo %v: exit %d, want 2 and %q:\n%s", c.args, code, c.want, out)
		}
	}
	out, code = run(t, 10*time.Second, t.TempDir(), nil, "flower-demo", "--version")
	if code != 0 || !strings.HasPrefix(out, "flower-demo v") {
		t.Errorf("--version: exit %d: %q", code, out)
	}
}
