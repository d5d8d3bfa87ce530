package e2e

import (
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// clientCert are the flags that present the client certificate flower-certs
// wrote for a name of a role.
func clientCert(role, name string) []string {
	return []string{"--client-certificate", "certificates/" + role + "s/" + name + ".pem", "--client-key", "certificates/" + role + "s/" + name + ".key"}
}

// lastLine is the last non-empty line of out.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	return lines[len(lines)-1]
}

// TestMutualTLS runs a SuperLink that requires node certificates on the
// Fleet API and ServerApp certificates on the Driver API, all from
// flower-certs: Sepal nodes with node certificates and the server app with
// its ServerApp certificate finish a FedAvg run; a node without a
// certificate, with one from another CA, with a ServerApp certificate, a
// server app with a node certificate, and a revoked node are refused, each
// with one line naming the cause on its side and a line with the cause in
// the SuperLink's log; a node revoked while it runs is cut off within the
// poll interval, without a restart, while the others go on.
func TestMutualTLS(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	for _, args := range [][]string{
		nil,
		{"node", "alice", "bob", "mallory"},
		{"serverapp"},
		{"--dir", "other"},
		{"node", "--dir", "other", "eve"},
	} {
		if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", args...); code != 0 {
			t.Fatalf("flower-certs %q exited %d:\n%s", args, code, out)
		}
	}

	link := startSuperLink(t, linkOptions{dir: dir, certs: true, args: []string{
		"--fleet-api-client-ca", "certificates/ca.crt", "--driver-api-client-ca", "certificates/ca.crt",
		"--client-crl", "certificates/crl.pem", "--certificates-poll-interval", "200ms"}})
	driver, fleet := link.driver, link.fleet
	link.waitOutput(t, `fleet_api_clients="node certificates from certificates/ca.crt"`, 10*time.Second)

	node := func(args ...string) []string {
		return append([]string{"client:app", "--root-certificates", "certificates/ca.crt", "--server", fleet, "--poll-interval", "500ms"}, args...)
	}
	serverApp := func(args ...string) []string {
		return append([]string{"server:app", "--root-certificates", "certificates/ca.crt", "--server", driver}, args...)
	}
	nodes := map[string]*proc{}
	for _, n := range []string{"alice", "bob", "mallory"} {
		nodes[n] = start(t, dir, nil, "flower-client-app", node(clientCert("node", n)...)...)
	}
	waitCount(t, link.proc, "node joined", 3, 20*time.Second)
	for _, n := range []string{"alice", "bob", "mallory"} {
		if !strings.Contains(link.out.String(), "identity=sepal:node:"+n) {
			t.Errorf("the SuperLink's log does not name %s's certificate when it joins:\n%s", n, link.out.String())
		}
	}

	out, code := run(t, 90*time.Second, dir, nil, "flower-server-app", serverApp(append(clientCert("serverapp", "serverapp"), "--rounds", "2", "--min-nodes", "3")...)...)
	if code != 0 {
		t.Fatalf("flower-server-app with its ServerApp certificate exited %d:\n%s", code, out)
	}
	if rs := parseRounds(t, out); len(rs) != 2 || rs[0].nodes != 3 || rs[1].nodes != 3 {
		t.Fatalf("want 2 rounds of 3 nodes:\n%s", out)
	}

	// Refused at the handshake, each with its cause on both sides. Sepal's
	// apps refuse a certificate of the wrong role before they connect; a
	// client that presents one anyway (here openssl, to the API's address
	// in addr) is refused by the SuperLink.
	for _, c := range []struct {
		name       string
		cmd        string
		args       []string
		client     string // in the client's last line
		api, cause string // in the SuperLink's log
		addr       string // where openssl presents the certificate of args, when set
	}{
		{"no certificate", "flower-client-app", node(), "requires a client certificate (mutual TLS) and this client presented none", "fleet", "no_certificate", ""},
		{"another CA", "flower-client-app", node("--client-certificate", "other/nodes/eve.pem", "--client-key", "other/nodes/eve.key"),
			"does not trust the CA that issued the client certificate other/nodes/eve.pem (sepal:node:eve", "fleet", "unknown_ca", ""},
		{"ServerApp certificate on the Fleet API", "flower-client-app", node(clientCert("serverapp", "serverapp")...),
			"it is a ServerApp certificate and this API admits node certificates", "fleet", "wrong_role", fleet},
		{"node certificate on the Driver API", "flower-server-app", serverApp(clientCert("node", "alice")...),
			"it is a node certificate and this API admits ServerApp certificates", "driver", "wrong_role", driver},
	} {
		out, code := run(t, 30*time.Second, dir, nil, c.cmd, c.args...)
		line := lastLine(out)
		if code != 1 || !strings.HasPrefix(line, c.cmd+": ") || !strings.Contains(line, c.client) {
			t.Errorf("%s: %s exited %d, want 1 with a last line naming the cause (%q):\n%s", c.name, c.cmd, code, c.client, out)
		}
		if c.addr != "" {
			cert, key := c.args[len(c.args)-3], c.args[len(c.args)-1]
			slOpenSSL(t, dir, c.addr, "-CAfile", "certificates/ca.crt", "-cert", cert, "-key", key, "-alpn", "h2")
		}
		waitCount(t, link.proc, "api="+c.api+" cause="+c.cause, 1, 10*time.Second)
	}

	// Valid certificates at the other API's port: each app is told which
	// port it dialled and where to connect, not that its certificate was
	// revoked; the SuperLink logs the wrong role.
	for _, c := range []struct {
		cmd  string
		args []string
		want string
	}{
		{"flower-client-app", append([]string{"client:app", "--root-certificates", "certificates/ca.crt", "--server", driver}, clientCert("node", "bob")...),
			driver + " is the SuperLink's Driver API, where server apps connect, not its Fleet API"},
		{"flower-server-app", append([]string{"server:app", "--root-certificates", "certificates/ca.crt", "--server", fleet}, clientCert("serverapp", "serverapp")...),
			fleet + " is the SuperLink's Fleet API, where client apps (SuperNodes) connect, not its Driver API"},
	} {
		out, code := run(t, 30*time.Second, dir, nil, c.cmd, c.args...)
		if line := lastLine(out); code != 1 || !strings.Contains(line, c.want) || strings.Contains(line, "revoked") {
			t.Errorf("%s at the other API's port exited %d, want 1 with a last line saying %q:\n%s", c.cmd, code, c.want, out)
		}
	}
	waitCount(t, link.proc, "api=driver cause=wrong_role", 2, 10*time.Second)
	if !regexp.MustCompile(`api=driver cause=wrong_role remote=\S+ identity=sepal:node:bob`).MatchString(link.out.String()) {
		t.Errorf("the SuperLink's log does not name the node certificate at the Driver API:\n%s", link.out.String())
	}

	// Revoked while it runs: no SIGHUP, no restart; the next poll of the
	// CRL cuts mallory off, and it exits 1 saying so.
	if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", "revoke", "mallory"); code != 0 || !strings.Contains(out, "revoked sepal:node:mallory") {
		t.Fatalf("flower-certs revoke mallory exited %d:\n%s", code, out)
	}
	if code := nodes["mallory"].wait(t, 20*time.Second); code != 1 {
		t.Errorf("the revoked node exited %d, want 1", code)
	}
	if line := lastLine(nodes["mallory"].out.String()); !strings.Contains(line, "sepal:node:mallory") || !strings.Contains(line, "has been revoked") {
		t.Errorf("the revoked node's last line does not say it was revoked: %q", line)
	}
	waitCount(t, link.proc, "cause=revoked remote=", 1, 10*time.Second)
	if !strings.Contains(link.out.String(), "identity=sepal:node:mallory") {
		t.Errorf("the SuperLink's log does not name the revoked identity:\n%s", link.out.String())
	}
	// Its next start is refused at the handshake.
	out, code = run(t, 30*time.Second, dir, nil, "flower-client-app", node(clientCert("node", "mallory")...)...)
	if line := lastLine(out); code != 1 || !strings.Contains(line, "has been revoked") {
		t.Errorf("a revoked node starting: exit %d, want 1 with a line saying it was revoked:\n%s", code, out)
	}

	// The others go on.
	out, code = run(t, 90*time.Second, dir, nil, "flower-server-app", serverApp(append(clientCert("serverapp", "serverapp"), "--rounds", "1", "--min-nodes", "2")...)...)
	if rs := parseRounds(t, out); code != 0 || len(rs) != 1 || rs[0].nodes != 2 {
		t.Fatalf("after the revocation, flower-server-app exited %d, want a round of the 2 nodes left:\n%s", code, out)
	}
	if strings.Contains(link.out.String(), "listens on") {
		t.Errorf("the SuperLink warned of an open Driver API on loopback with client certificates:\n%s", link.out.String())
	}
	stopClients(t, []*proc{nodes["alice"], nodes["bob"]})
}

// TestMutualTLSOffFleet: without a Fleet API client CA nothing asks a node
// for a certificate, so a node without one (as a Flower 1.8.0 SuperNode,
// which cannot present one) joins and trains, here beside a Driver API that
// requires a ServerApp certificate. A Driver API on 0.0.0.0 without a client
// CA gets one warning; with one, none.
func TestMutualTLSOffFleet(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	for _, args := range [][]string{nil, {"serverapp"}} {
		if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", args...); code != 0 {
			t.Fatalf("flower-certs %q exited %d:\n%s", args, code, out)
		}
	}
	// A Driver API on every interface without a client CA: one warning.
	_, port, _ := net.SplitHostPort(freeAddr(t))
	open := startSuperLink(t, linkOptions{dir: dir, certs: true, driver: net.JoinHostPort("0.0.0.0", port)})
	open.waitOutput(t, "level=WARN", 10*time.Second)
	if log := open.out.String(); strings.Count(log, "beyond loopback, without client certificates") != 1 ||
		!strings.Contains(log, "anyone who can reach that port can start runs") || !strings.Contains(log, "--driver-api-client-ca") {
		t.Errorf("want one warning saying who can do what and how to close it:\n%s", log)
	}
	open.stop()

	// The same, with ServerApp certificates required: no warning; a node
	// without a certificate joins the Fleet API.
	_, port, _ = net.SplitHostPort(freeAddr(t))
	link := startSuperLink(t, linkOptions{dir: dir, certs: true, driver: net.JoinHostPort("0.0.0.0", port), args: []string{
		"--driver-api-client-ca", "certificates/ca.crt", "--client-crl", "certificates/crl.pem", "--certificates-poll-interval", "1h"}})
	driver, fleet := link.driver, link.fleet
	link.waitOutput(t, `fleet_api_clients="any client"`, 10*time.Second)
	n := start(t, dir, nil, "flower-client-app", "client:app", "--root-certificates", "certificates/ca.crt", "--server", fleet, "--poll-interval", "500ms")
	out, code := run(t, 90*time.Second, dir, nil, "flower-server-app", append([]string{"server:app", "--root-certificates", "certificates/ca.crt",
		"--server", driver, "--rounds", "1", "--min-nodes", "1"}, clientCert("serverapp", "serverapp")...)...)
	if rs := parseRounds(t, out); code != 0 || len(rs) != 1 || rs[0].nodes != 1 {
		t.Fatalf("a node without a client certificate under a Fleet API without one: exit %d:\n%s", code, out)
	}
	if strings.Contains(link.out.String(), "level=WARN") {
		t.Errorf("a warning with ServerApp certificates required:\n%s", link.out.String())
	}

	// The ServerApp's certificate revoked, and SIGHUP (polls are an hour
	// apart): its next run is refused, and the SuperLink runs on.
	if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", "revoke", "--serverapp", "serverapp"); code != 0 {
		t.Fatalf("flower-certs revoke --serverapp exited %d:\n%s", code, out)
	}
	if err := link.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	link.waitOutput(t, `msg="SIGHUP: reloaded" reload="client CA --driver-api-client-ca and CRL --client-crl"`, 10*time.Second)
	out, code = run(t, 30*time.Second, dir, nil, "flower-server-app", append([]string{"server:app", "--root-certificates", "certificates/ca.crt",
		"--server", driver, "--rounds", "1", "--min-nodes", "1"}, clientCert("serverapp", "serverapp")...)...)
	if line := lastLine(out); code != 1 || !strings.Contains(line, "sepal:serverapp:serverapp") || !strings.Contains(line, "has been revoked") {
		t.Errorf("a revoked ServerApp after SIGHUP: exit %d:\n%s", code, out)
	}
	waitCount(t, link.proc, "api=driver cause=revoked", 1, 10*time.Second)
	stopClients(t, []*proc{n})
}

// TestMutualTLSWithACME: node certificates required on a Fleet API whose
// own certificate comes from an ACME CA over TLS-ALPN-01 on that same
// listener. The CA's validation (acme-tls/1, no client certificate) passes,
// a node with a certificate from flower-certs trains, and one without is
// refused.
func TestMutualTLSWithACME(t *testing.T) {
	needE2E(t)
	t.Parallel()
	dir := t.TempDir()
	// Client certificates beside an ACME SuperLink: a CA of their own.
	if out, code := run(t, 30*time.Second, dir, nil, "flower-certs", "node", "alice"); code != 0 {
		t.Fatalf("flower-certs node alice exited %d:\n%s", code, out)
	}
	fleet := freeAddr(t)
	pb := startPebble(t, pebbleOptions{TLSPort: port(t, fleet), AuthzReuse: -1})
	l := startACMELink(t, pb, acmeLinkOptions{client: "certmagic", fleet: fleet,
		extra: []string{"--fleet-api-client-ca", filepath.Join(dir, "certificates", "ca.crt"), "--client-crl", filepath.Join(dir, "certificates", "crl.pem")}})
	waitACMECert(t, l, pb.issuingRoots(t), 60*time.Second)
	l.waitOutput(t, "msg=serving", 10*time.Second)

	env := []string{"SSL_CERT_FILE=" + pb.RootFile, "SSL_CERT_DIR=" + t.TempDir()}
	n := start(t, dir, env, "flower-client-app", append([]string{"client:app", "--server", l.fleet, "--tls-server-name", acmeDomain, "--poll-interval", "500ms"},
		clientCert("node", "alice")...)...)
	out, code := run(t, 90*time.Second, dir, env, "flower-server-app", "server:app", "--server", l.driver, "--tls-server-name", acmeDomain, "--rounds", "1", "--min-nodes", "1")
	if rs := parseRounds(t, out); code != 0 || len(rs) != 1 || rs[0].nodes != 1 {
		t.Fatalf("a round with a node certificate under ACME: exit %d:\n%s", code, out)
	}
	if !strings.Contains(l.out.String(), "identity=sepal:node:alice") {
		t.Errorf("the join does not name the node's certificate:\n%s", l.out.String())
	}
	out, code = run(t, 30*time.Second, dir, env, "flower-client-app", "client:app", "--server", l.fleet, "--tls-server-name", acmeDomain)
	if line := lastLine(out); code != 1 || !strings.Contains(line, "requires a client certificate") {
		t.Errorf("a node without a certificate under ACME: exit %d:\n%s", code, out)
	}
	stopClients(t, []*proc{n})
}
