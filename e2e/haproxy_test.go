package e2e

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/sepal-fl/sepal/internal/pgtest"
	"github.com/sepal-fl/sepal/state/sqlstate"
)

// TestSuperLinksBehindHAProxy runs a FedAvg of 4 Sepal nodes
// (flower-client-app) and the Sepal server app (flower-server-app) through
// HAProxy, which round-robins their TLS connections (passed through, not
// terminated) over three SuperLinks on one PostgreSQL database. One
// SuperLink is killed with SIGKILL during round 2 (the one the server app
// is connected to) and started again; another during round 4 (the one most
// nodes are connected to). The run must end with every round averaged over
// the 4 nodes and each result the server app waited for delivered exactly
// once.
func TestSuperLinksBehindHAProxy(t *testing.T) {
	needE2E(t)
	t.Parallel()
	haproxyBin := haproxyBinary(t)
	dsn := pgtest.NewDatabase(t)
	dir := t.TempDir()
	flowerCerts(t, dir)
	links := []*haLink{{name: "sl1"}, {name: "sl2"}, {name: "sl3"}}
	for _, l := range links { // all three at once, on an empty database
		l.superLink = startSuperLink(t, linkOptions{dir: dir, certs: true, args: []string{"--database", dsn}, early: true})
	}
	for _, l := range links {
		l.waitServing(t)
	}
	check := docCheck(t)
	lb := startHAProxy(t, dir, haproxyBin, haproxyConfig{
		Fleet: freeAddr(t), Driver: freeAddr(t), Links: links,
		CAFile: filepath.Join(dir, slCA), CheckName: "localhost",
		Socket: filepath.Join(dir, "haproxy.sock"), Check: check,
	})
	if worst := checkDownBound(t, check); worst > haChecksDownWithin {
		t.Fatalf("the check settings %q of %s mark a dead SuperLink DOWN up to %v after it dies, want %v at most", check, haproxyDoc, worst, haChecksDownWithin)
	}
	lb.waitAll(t, links, "UP", 15*time.Second)
	// The certificate holds localhost: the name the apps dial, HAProxy's.
	_, fleetPort, _ := net.SplitHostPort(lb.cfg.Fleet)
	_, driverPort, _ := net.SplitHostPort(lb.cfg.Driver)
	fleetLB, driverLB := net.JoinHostPort("localhost", fleetPort), net.JoinHostPort("localhost", driverPort)

	started := time.Now()
	nodes := make([]*proc, haNodes)
	for i := range nodes {
		nodes[i] = start(t, dir, nil, "flower-client-app", "client:app", "--root-certificates", slCA,
			"--server", fleetLB, "--poll-interval", "100ms")
	}
	for _, n := range nodes {
		n.waitOutput(t, `msg="node registered"`, 30*time.Second)
	}
	srv := start(t, dir, nil, "flower-server-app", "server:app", "--root-certificates", slCA,
		"--server", driverLB, "--rounds", strconv.Itoa(haRounds), "--min-nodes", strconv.Itoa(haNodes))

	// Round 2: kill the SuperLink that holds the server app's connection,
	// once a node has pushed its round-2 result.
	first := lb.killDuring(t, srv, nodes, 2, haDownWithin, func(st haStats) *haLink {
		return st.most(links, "driver", nil)
	})
	first.restart(t, lb)
	// Round 4: kill another, the one most nodes are connected to.
	lb.killDuring(t, srv, nodes, 4, haDownWithin, func(st haStats) *haLink {
		return st.most(links, "fleet", first)
	}).restart(t, lb)

	if code := srv.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("flower-server-app exited %d:\n%s", code, srv.out.String())
	}
	took := time.Since(started)
	out := srv.out.String()
	rounds := parseRounds(t, out)
	if len(rounds) != haRounds {
		t.Fatalf("flower-server-app printed %d round lines, want %d:\n%s", len(rounds), haRounds, out)
	}
	for _, r := range rounds {
		if r.nodes != haNodes {
			t.Errorf("round %d averaged %d nodes, want %d (a result lost):\n%s", r.n, r.nodes, haNodes, out)
		}
	}
	for _, bad := range []string{"node dropped", "result dropped"} {
		if strings.Contains(out, bad) {
			t.Errorf("flower-server-app logged %q:\n%s", bad, out)
		}
	}
	m := regexp.MustCompile(`(?m)^run (-?\d+) finished`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("flower-server-app printed no run summary:\n%s", out)
	}
	runID, _ := strconv.ParseInt(m[1], 10, 64)
	for _, n := range nodes {
		for _, bad := range []string{"result refused", "task failed"} {
			if strings.Contains(n.out.String(), bad) {
				t.Errorf("a node logged %q:\n%s", bad, n.out.String())
			}
		}
	}
	// The server app's connection was on the SuperLink killed in round 2,
	// so it went on through another (HAProxy logs each connection as it
	// ends: frontend, backend/server).
	for api, want := range map[string]int{"driver": 2, "fleet": len(links)} {
		used := lb.serversUsed(api)
		if len(used) < want {
			t.Errorf("HAProxy sent the %s connections to %v, want %d SuperLinks or more", api, used, want)
		}
	}
	stopClients(t, nodes)
	t.Logf("%d-round FedAvg of %d nodes through HAProxy over %d SuperLinks, two of them killed: %v\n%s",
		haRounds, haNodes, len(links), took.Round(time.Millisecond), strings.Join(roundLine.FindAllString(out, -1), "\n"))

	// The database: each TaskIns the server app waited for (get_parameters,
	// then train and evaluate per node per round) gave one result.
	for _, l := range links {
		l.stop()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := sqlstate.OpenPostgres(ctx, dsn, sqlstate.PostgresOptions{Options: sqlstate.Options{Logger: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatalf("the state after the run: %v", err)
	}
	defer s.Close()
	runs, err := s.Runs(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.ID != runID {
			continue
		}
		want := 1 + 2*haNodes*haRounds
		if r.TaskResPulled != want {
			t.Errorf("run %d: %d results delivered to the server app, want %d (lost or duplicated)", r.ID, r.TaskResPulled, want)
		}
		t.Logf("run %d: %d TaskIns pushed (%d beyond those waited for: pushes retried after a kill), %d results delivered",
			r.ID, r.TaskInsPushed, r.TaskInsPushed-want, r.TaskResPulled)
		return
	}
	t.Errorf("run %d is not in the database (%d runs)", runID, len(runs))
}

const haRounds, haNodes = 5, 4

// How soon HAProxy must take a dead SuperLink out of the rotation. A client
// whose connection died reconnects at once (gRPC), then again after about
// 1 s and 2.6 s (grpcio's reconnect backoff, 1 s times 1.6, jitter 20%); a
// Flower 1.8.0 SuperNode retries a failed call within 1 s, then 2 s, and
// Sepal's apps within 0.5 s, then 1 s. What comes at once HAProxy sends on
// to another SuperLink when the dead one refuses it (option redispatch 1);
// the health checks must take it out before the next wave: in the worst
// case, by their settings, within haChecksDownWithin, and as measured, with
// the scheduling of a busy 2-core machine, within haDownWithin. A SuperLink
// restarted in 3 s is thus taken out while it is gone.
const (
	haChecksDownWithin = 1500 * time.Millisecond
	haDownWithin       = 2 * time.Second
)

// haLink is one flower-superlink behind HAProxy, started again on the same
// ports and database after it is killed.
type haLink struct {
	*superLink
	name    string // its name in HAProxy's configuration
	control string // its Control API's address; "" without Flower 1.29's Control API
}

// restart starts the killed SuperLink again and waits until it serves and
// HAProxy's health checks pass for it on every API.
func (l *haLink) restart(t *testing.T, lb *haproxy) {
	t.Helper()
	begin := time.Now()
	l.superLink = l.again(t)
	l.waitServing(t)
	serving := time.Since(begin)
	lb.waitAll(t, []*haLink{l}, "UP", 15*time.Second)
	t.Logf("%s started again: serving after %v, UP in HAProxy after %v", l.name,
		serving.Round(time.Millisecond), time.Since(begin).Round(time.Millisecond))
}

// killDuring waits for round r of the server app's run to be under way
// (round r-1 printed, and a node's round-r train result pushed), then kills
// with SIGKILL the SuperLink pick chooses from HAProxy's sessions, and
// waits until HAProxy's stats socket shows it DOWN on every API. It fails
// the test when round r ended before the kill, or when HAProxy took longer
// than downWithin to mark it DOWN.
func (lb *haproxy) killDuring(t *testing.T, srv *proc, nodes []*proc, r int, downWithin time.Duration, pick func(haStats) *haLink) *haLink {
	t.Helper()
	srv.waitOutput(t, fmt.Sprintf("round %d/%d:", r-1, haRounds), 60*time.Second)
	answered := regexp.MustCompile(fmt.Sprintf(`msg="task answered".* task_type=train group_id=%d `, r))
	deadline := time.Now().Add(30 * time.Second)
	for !anyOutput(nodes, answered) {
		if time.Now().After(deadline) {
			t.Fatalf("no node answered a round-%d train task within 30s", r)
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := lb.stats(t)
	l := pick(st)
	if err := l.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-l.done
	if strings.Contains(srv.out.String(), fmt.Sprintf("round %d/%d:", r, haRounds)) {
		t.Fatalf("round %d ended before %s was killed", r, l.name)
	}
	lb.waitAll(t, []*haLink{l}, "DOWN", 15*time.Second)
	down := time.Since(killed)
	t.Logf("round %d: killed %s (SIGKILL) with %d Driver and %d Fleet connections open through HAProxy; DOWN on both APIs in HAProxy %v later (%s)",
		r, l.name, st[haKey("driver", l.name)].sessions, st[haKey("fleet", l.name)].sessions, down.Round(time.Millisecond),
		strings.Join(lb.downReasons(l), "; "))
	if down > downWithin {
		t.Errorf("HAProxy marked the killed %s DOWN %v after the kill, want within %v (the check settings of %s)", l.name, down.Round(time.Millisecond), downWithin, haproxyDoc)
	}
	return l
}

// downReasons are the reasons HAProxy's log gives for marking l DOWN, the
// last one per API, such as "Layer4 connection problem" (a check refused).
func (lb *haproxy) downReasons(l *haLink) []string {
	var out []string
	for _, api := range lb.cfg.apis() {
		re := regexp.MustCompile(`Server ` + regexp.QuoteMeta(haKey(api, l.name)) + ` is DOWN, reason: ([^,]+)`)
		if m := re.FindAllStringSubmatch(lb.out.String(), -1); len(m) > 0 {
			out = append(out, api+": "+m[len(m)-1][1])
		}
	}
	return out
}

// haproxyDoc is the page that shows the HAProxy configuration for
// production, in its section haproxySection.
const (
	haproxyDoc     = "docs/several-superlinks.md"
	haproxySection = "## HAProxy\n"
)

// docHAProxy returns the HAProxy configuration block of haproxyDoc's
// HAProxy section.
func docHAProxy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot(), haproxyDoc))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n"+haproxySection)
	if !ok {
		t.Fatalf("%s has no %q section", haproxyDoc, strings.TrimSpace(haproxySection))
	}
	_, after, ok = strings.Cut(after, "```\n")
	cfg, _, ok2 := strings.Cut(after, "```\n")
	if !ok || !ok2 || !strings.HasPrefix(cfg, "global\n") {
		t.Fatalf("the HAProxy section of %s does not open with the configuration block", haproxyDoc)
	}
	return cfg
}

// docCheck returns the health check's settings of haproxyDoc's
// default-server line: its words from "check" up to "check-ssl".
func docCheck(t *testing.T) string {
	t.Helper()
	for _, line := range strings.Split(docHAProxy(t), "\n") {
		line, _, _ = strings.Cut(line, "#")
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "default-server" {
			continue
		}
		if i := slices.Index(f, "check-ssl"); i > 1 {
			return strings.Join(f[1:i], " ")
		}
	}
	t.Fatalf("the HAProxy configuration of %s has no default-server line with check-ssl", haproxyDoc)
	return ""
}

// checkDownBound is how long after a SuperLink dies HAProxy's health
// checks may take at most to mark it DOWN with the check settings check
// (HAProxy's words: inter, fastinter, fall): the wait for the next check,
// then fall-1 more at fastinter (a refused connection fails a check at
// once).
func checkDownBound(t *testing.T, check string) time.Duration {
	t.Helper()
	f := strings.Fields(check)
	value := func(key, def string) string {
		if i := slices.Index(f, key); i >= 0 && i+1 < len(f) {
			return f[i+1]
		}
		return def
	}
	dur := func(key, def string) time.Duration {
		v := value(key, def)
		if _, err := strconv.Atoi(v); err == nil {
			v += "ms" // HAProxy's unit for a bare number
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("the check setting %s %q: %v", key, v, err)
		}
		return d
	}
	inter := dur("inter", "2s")
	fast := dur("fastinter", value("inter", "2s"))
	fall, err := strconv.Atoi(value("fall", "3"))
	if err != nil {
		t.Fatalf("the check setting fall: %v", err)
	}
	return inter + time.Duration(fall-1)*fast
}

// anyOutput reports whether the output of one of ps matches re.
func anyOutput(ps []*proc, re *regexp.Regexp) bool {
	for _, p := range ps {
		if re.MatchString(p.out.String()) {
			return true
		}
	}
	return false
}

// haproxyBinary returns the path of Debian's haproxy. Without it the test
// fails in CI (CI set) and is skipped elsewhere.
func haproxyBinary(t *testing.T) string {
	t.Helper()
	return needTool(t, "haproxy", "haproxy", "/usr/sbin/haproxy")
}

// haproxyConfig is what the test's HAProxy configuration is made of.
type haproxyConfig struct {
	Fleet, Driver string // the addresses HAProxy listens on
	// Control is where HAProxy listens for Flower 1.29's Control API
	// (flwr); "" for none.
	Control   string
	Links     []*haLink
	CAFile    string // the CA the health checks verify the SuperLinks against
	CheckName string // the name the health checks expect in the SuperLinks' certificate
	Socket    string // the stats socket
	// Check is the health check's settings of haproxyDoc's default-server
	// line ("check inter ... on-marked-down shutdown-sessions"), so that
	// the test runs the timing the page recommends.
	Check string
}

// HealthCheck is the gRPC health check request in hexadecimal, in pieces.
func (haproxyConfig) HealthCheck() []string {
	var out []string
	for _, b := range grpcHealthCheck() {
		out = append(out, hex.EncodeToString(b))
	}
	return out
}

// Serving is the hexadecimal of the answer the health check expects.
func (haproxyConfig) Serving() string { return grpcServingHex }

// Servers are the links' names and addresses.
func (c haproxyConfig) Servers() []struct{ Name, Fleet, Driver, Control string } {
	var out []struct{ Name, Fleet, Driver, Control string }
	for _, l := range c.Links {
		out = append(out, struct{ Name, Fleet, Driver, Control string }{l.name, l.fleet, l.driver, l.control})
	}
	return out
}

// apis are the APIs HAProxy balances: "fleet", "driver" (which carries
// ServerAppIo too) and, with Control, "control".
func (c haproxyConfig) apis() []string {
	if c.Control != "" {
		return []string{"fleet", "driver", "control"}
	}
	return []string{"fleet", "driver"}
}

// haproxyTemplate is the test's HAProxy configuration; haproxyDoc shows
// the same for production.
var haproxyTemplate = template.Must(template.New("haproxy.cfg").Parse(`# Written by TestSuperLinksBehindHAProxy.
global
    log stdout format raw local0 info
    stats socket {{.Socket}} mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 5m
    timeout server 5m
    timeout client-fin 30s
    timeout server-fin 30s
    timeout check 2s
    retries 3
    option redispatch 1
    option tcp-check
    tcp-check connect ssl alpn h2
{{- range .HealthCheck}}
    tcp-check send-binary {{.}}
{{- end}}
    tcp-check expect binary {{.Serving}}
    default-server {{.Check}} check-ssl check-sni {{.CheckName}} verify required ca-file {{.CAFile}}

frontend fleet
    bind {{.Fleet}}
    default_backend superlinks_fleet

frontend driver
    bind {{.Driver}}
    default_backend superlinks_driver
{{- if .Control}}

frontend control
    bind {{.Control}}
    default_backend superlinks_control
{{- end}}

backend superlinks_fleet
    balance roundrobin
{{- range .Servers}}
    server {{.Name}} {{.Fleet}}
{{- end}}

backend superlinks_driver
    balance roundrobin
{{- range .Servers}}
    server {{.Name}} {{.Driver}}
{{- end}}
{{- if .Control}}

backend superlinks_control
    balance roundrobin
{{- range .Servers}}
    server {{.Name}} {{.Control}}
{{- end}}
{{- end}}
`))

// haproxy is a running HAProxy and the configuration it was given.
type haproxy struct {
	*proc
	cfg haproxyConfig
}

// startHAProxy writes the configuration into dir, has HAProxy check it,
// and starts HAProxy in the foreground (its log on stdout, kept with the
// process's output and printed when the test fails).
func startHAProxy(t *testing.T, dir, bin string, c haproxyConfig) *haproxy {
	t.Helper()
	var b bytes.Buffer
	if err := haproxyTemplate.Execute(&b, c); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, 30*time.Second, dir, nil, bin, "-c", "-f", path); code != 0 {
		t.Fatalf("haproxy -c refused the configuration (exit %d):\n%s\n%s", code, out, b.String())
	}
	p := start(t, dir, nil, bin, "-db", "-f", path)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- %s ----\n%s", path, b.String())
		}
	})
	lb := &haproxy{proc: p, cfg: c}
	waitListening(t, p, 15*time.Second, c.Fleet, c.Driver)
	if c.Control != "" {
		waitListening(t, p, 15*time.Second, c.Control)
	}
	return lb
}

// haLogLine matches the frontend and server of a line of HAProxy's tcplog.
var haLogLine = regexp.MustCompile(`(?m)\] (\w+) superlinks_\w+/(\w+) `)

// serversUsed returns the servers that HAProxy's log shows connections of
// the api's frontend went to, in order of first use.
func (lb *haproxy) serversUsed(api string) []string {
	var out []string
	for _, m := range haLogLine.FindAllStringSubmatch(lb.out.String(), -1) {
		if m[1] == api && m[2] != "<NOSRV>" && !slices.Contains(out, m[2]) {
			out = append(out, m[2])
		}
	}
	return out
}

// haServer is one server's line of HAProxy's "show stat".
type haServer struct {
	status   string // UP, DOWN, or a transition such as "DOWN 1/2"
	check    string // the last check's result, such as L7OK or L4CON
	sessions int    // connections open through it
	total    int    // connections made through it
}

// haStats are the servers by haKey.
type haStats map[string]haServer

// haKey names a server of the backend of an API ("fleet" or "driver").
func haKey(api, name string) string { return "superlinks_" + api + "/" + name }

// most returns the link with the most sessions on the api's backend,
// never not.
func (st haStats) most(links []*haLink, api string, not *haLink) *haLink {
	var best *haLink
	for _, l := range links {
		if l == not && len(links) > 1 {
			continue
		}
		if best == nil || st[haKey(api, l.name)].sessions > st[haKey(api, best.name)].sessions {
			best = l
		}
	}
	return best
}

// stats asks HAProxy's stats socket for "show stat".
func (lb *haproxy) stats(t *testing.T) haStats {
	t.Helper()
	c, err := net.DialTimeout("unix", lb.cfg.Socket, 5*time.Second)
	if err != nil {
		t.Fatalf("HAProxy's stats socket: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		t.Fatalf("HAProxy's stats socket: %v", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("HAProxy's stats socket: %v", err)
	}
	recs, err := csv.NewReader(bytes.NewReader(bytes.TrimPrefix(b, []byte("# ")))).ReadAll()
	if err != nil || len(recs) < 1 {
		t.Fatalf("HAProxy's show stat: %v:\n%s", err, b)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	st := haStats{}
	for _, r := range recs[1:] {
		if len(r) != len(recs[0]) {
			continue
		}
		n, _ := strconv.Atoi(r[col["scur"]])
		total, _ := strconv.Atoi(r[col["stot"]])
		st[r[col["pxname"]]+"/"+r[col["svname"]]] = haServer{status: r[col["status"]], check: r[col["check_status"]], sessions: n, total: total}
	}
	return st
}

// waitAll waits up to d until HAProxy reports every link with status on
// every API ("UP" with a passed gRPC health check, L7OK).
func (lb *haproxy) waitAll(t *testing.T, links []*haLink, status string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st := lb.stats(t)
		var off []string
		for _, l := range links {
			for _, api := range lb.cfg.apis() {
				// UP after the gRPC health check passed: L7OK, not a mere connection.
				if s := st[haKey(api, l.name)]; s.status != status || status == "UP" && s.check != "L7OK" {
					off = append(off, fmt.Sprintf("%s %s (check %s)", haKey(api, l.name), s.status, s.check))
				}
			}
		}
		if len(off) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("HAProxy does not report %s after %v: %s", status, d, strings.Join(off, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// grpcHealthCheck is what HAProxy's tcp-check sends, over TLS with ALPN
// h2, to ask a SuperLink for its health: a whole gRPC call of
// grpc.health.v1.Health/Check on a new HTTP/2 connection. It comes in the
// pieces the configuration sends one line each, so that a reader can tell
// them apart (TCP joins them):
//
//   - the client connection preface;
//   - an empty SETTINGS frame (the defaults);
//   - a HEADERS frame, stream 1, END_HEADERS: its frame header, then each
//     field of its block, all HPACK literals without indexing and without
//     Huffman coding, so that the names and values read as ASCII:
//     :method POST and :scheme https (static table entries), :path
//     /grpc.health.v1.Health/Check, :authority haproxy, content-type
//     application/grpc, te trailers;
//   - a DATA frame, stream 1, END_STREAM: its frame header, then one gRPC
//     message, not compressed, of length 0: an empty HealthCheckRequest
//     (service "", the server as a whole).
func grpcHealthCheck() [][]byte {
	literal := func(index byte, value string) []byte { // the name from the static table
		return append([]byte{index, byte(len(value))}, value...)
	}
	fields := [][]byte{
		{0x80 | 3, 0x80 | 7}, // indexed: :method POST, :scheme https
		literal(4, "/grpc.health.v1.Health/Check"),
		literal(1, "haproxy"),
		append([]byte{0x0f, 31 - 15, byte(len("application/grpc"))}, "application/grpc"...), // index 31 past the 4-bit prefix
		append([]byte{0, 2, 't', 'e', 8}, "trailers"...),                                    // a new name
	}
	frameHeader := func(length int, typ, flags byte) []byte {
		return []byte{byte(length >> 16), byte(length >> 8), byte(length), typ, flags, 0, 0, 0, 1} // stream 1
	}
	block := 0
	for _, f := range fields {
		block += len(f)
	}
	out := [][]byte{
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
		{0, 0, 0, 0x4, 0, 0, 0, 0, 0}, // SETTINGS, stream 0, empty
		frameHeader(block, 0x1, 0x4),  // HEADERS, END_HEADERS
	}
	out = append(out, fields...)
	// DATA, END_STREAM, then the message: not compressed, length 0.
	return append(out, frameHeader(5, 0x0, 0x1), make([]byte, 5))
}

// grpcServingHex is the gRPC message HealthCheckResponse{status: SERVING}
// (not compressed, length 2, field 1 varint 1) that a SuperLink's answer
// must hold. A SuperLink shutting down answers NOT_SERVING (08 02).
const grpcServingHex = "00000000020801"

// TestHAProxyDocConfig checks the HAProxy configuration haproxyDoc shows:
// HAProxy accepts it, its check timing takes a dead SuperLink out within
// haChecksDownWithin, and its health check sends and expects what the
// test's configuration does (whose check timing TestSuperLinksBehindHAProxy
// reads from the page).
func TestHAProxyDocConfig(t *testing.T) {
	bin := haproxyBinary(t)
	cfg := docHAProxy(t)
	if check := docCheck(t); checkDownBound(t, check) > haChecksDownWithin {
		t.Errorf("the check settings %q of %s mark a dead SuperLink DOWN up to %v after it dies, want %v at most",
			check, haproxyDoc, checkDownBound(t, check), haChecksDownWithin)
	}
	checks := func(cfg string) []string {
		var out []string
		for _, line := range strings.Split(cfg, "\n") {
			line, _, _ = strings.Cut(line, "#")
			if f := strings.Fields(line); len(f) > 0 && f[0] == "tcp-check" {
				out = append(out, strings.Join(f, " "))
			}
		}
		return out
	}
	var test bytes.Buffer
	if err := haproxyTemplate.Execute(&test, haproxyConfig{Control: "127.0.0.1:9093"}); err != nil {
		t.Fatal(err)
	}
	if got, want := checks(cfg), checks(test.String()); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("the health check of %s:\n%s\nthe test's:\n%s", haproxyDoc, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The same frontends and backends: Fleet, Driver (with ServerAppIo)
	// and Control.
	proxies := func(cfg string) []string {
		var out []string
		for _, line := range strings.Split(cfg, "\n") {
			if f := strings.Fields(line); len(f) >= 2 && (f[0] == "frontend" || f[0] == "backend") {
				out = append(out, f[0]+" "+f[1])
			}
		}
		return out
	}
	if got, want := proxies(cfg), proxies(test.String()); !slices.Equal(got, want) {
		t.Errorf("%s has %v, the test's configuration %v", haproxyDoc, got, want)
	}
	dir := t.TempDir()
	flowerCerts(t, dir)
	ca := filepath.Join(dir, slCA)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(cfg, "/etc/sepal/ca.crt", ca)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, 30*time.Second, dir, nil, bin, "-c", "-f", path); code != 0 {
		t.Errorf("haproxy -c refused the configuration of %s (exit %d):\n%s", haproxyDoc, code, out)
	}
}
