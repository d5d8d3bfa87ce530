package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/sepal-fl/sepal/internal/pgtest"
)

// TestFlower129Replicas runs real Flower 1.29.0 through HAProxy over
// three Sepal SuperLinks on one PostgreSQL database, all with
// --enable-supernode-auth: two stock SuperNodes with their own keys
// (--auth-supernode-private-key) on HAProxy's Fleet port, flwr on its
// Control port, and one flower-superexec (the ServerApps' side, as a
// deployment runs it beside replicas: --isolation process on each
// SuperLink) on its ServerAppIo port, where each replica tells
// ServerAppIo's plaintext from the Driver API's TLS.
//
//   - SupernodeAuth: a SuperNode whose key is not registered is refused,
//     as Flower refuses it, and joins once flwr supernode register
//     registered its key through one replica's Control API (the keys of
//     the two through two replicas, listed through the third).
//   - KilledMidRun: a quickstart-numpy run of 3 rounds, whose log every
//     replica streams (StreamLogs reads what the ServerApp pushed
//     through another); once round 2 began, the replica holding the
//     ServerApp's ServerAppIo connection is killed with SIGKILL and stays
//     dead; the run completes with every round's results.
//   - Unregistered: flwr supernode unregister cuts a running SuperNode
//     off at its next call, and refuses it when it starts again.
func TestFlower129Replicas(t *testing.T) {
	needE2E(t)
	t.Parallel()
	haproxyBin := haproxyBinary(t)
	began := time.Now()
	d := newFlower129(t)
	dsn := pgtest.NewDatabase(t)
	links := []*haLink{{name: "sl1"}, {name: "sl2"}, {name: "sl3"}}
	for _, l := range links { // all three at once, on an empty database
		driver := freeAddr(t)
		l.control = freeAddr(t)
		l.superLink = startSuperLink(t, linkOptions{dir: d.dir, driver: driver, fleetFlag: "--fleet-api-address", early: true,
			args: []string{"--ssl-ca-certfile", slCA, "--ssl-certfile", slCert, "--ssl-keyfile", slKey, "--database", dsn,
				"--serverappio-api-address", driver, "--control-api-address", l.control, "--isolation", "process", "--enable-supernode-auth"}})
	}
	for _, l := range links {
		l.waitServing(t)
	}
	lb := startHAProxy(t, d.dir, haproxyBin, haproxyConfig{
		Fleet: freeAddr(t), Driver: freeAddr(t), Control: freeAddr(t), Links: links,
		CAFile: filepath.Join(d.dir, slCA), CheckName: "localhost",
		Socket: filepath.Join(d.dir, "haproxy.sock"), Check: docCheck(t),
	})
	lb.waitAll(t, links, "UP", 15*time.Second)
	d.useFlwr(t, lb.cfg.Control)
	for _, l := range links { // flwr's connections to each replica, beside local-tls (HAProxy)
		d.connection(t, l.name, l.control)
	}
	keys := []string{nodeKey(t, d.dir, "node0"), nodeKey(t, d.dir, "node1")}
	t.Logf("three SuperLinks UP in HAProxy, flwr set up: %v", time.Since(began).Round(100*time.Millisecond))

	parent := t
	nodes := make([]*proc, len(keys))
	ids := make([]string, len(keys))
	if !t.Run("SupernodeAuth", func(t *testing.T) {
		refused := d.superNode(t, lb.cfg.Fleet, 0, "--auth-supernode-private-key", keys[0])
		refusedAsFlower(t, refused)
		registered := regexp.MustCompile(`SuperNode (\d+) registered successfully`)
		for i, key := range keys {
			out, code := d.flwr(t, time.Minute, "supernode", "register", key+".pub", links[i].name)
			m := registered.FindStringSubmatch(out)
			if code != 0 || m == nil {
				t.Fatalf("flwr supernode register exited %d:\n%s", code, out)
			}
			ids[i] = m[1]
		}
		if got := d.nodeStatus(t, links[2].name); got[ids[0]] != "registered" || got[ids[1]] != "registered" {
			t.Fatalf("flwr supernode list after register: %v, want nodes %s and %s registered", got, ids[0], ids[1])
		}
		for i, key := range keys { // they outlive this subtest
			nodes[i] = d.superNode(parent, lb.cfg.Fleet, i, "--auth-supernode-private-key", key)
		}
		for i, n := range nodes {
			n.waitOutput(t, "SuperNode ID: "+ids[i], time.Minute)
		}
		if got := d.nodeStatus(t, "local-tls"); got[ids[0]] != "online" || got[ids[1]] != "online" {
			t.Fatalf("flwr supernode list once they started: %v, want both online", got)
		}
	}) {
		return
	}

	superExec := start(t, d.dir, d.env, filepath.Join(d.f.Bin, "flower-superexec"), "--insecure", "--appio-api-address", lb.cfg.Driver, "--plugin-type", "serverapp")
	if !t.Run("KilledMidRun", func(t *testing.T) {
		// Once the SuperExec's connection is open, the ServerAppIo
		// connection made next is the ServerApp's.
		var before haStats
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
			before = lb.stats(t)
			open := 0
			for _, l := range links {
				open += before[haKey("driver", l.name)].sessions
			}
			if open > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("flower-superexec has no connection through HAProxy after a minute:\n%s", superExec.out.String())
			}
		}
		d.runKilledMidway(t, 3, func(t *testing.T, runID string) {
			// Every replica streams the log the ServerApp pushes through
			// one of them.
			for _, l := range links {
				direct := *d
				direct.control = l.control
				direct.waitLog(t, runID, "[ROUND 2/3]", time.Minute)
			}
			// The victim: the replica that holds the ServerApp's
			// ServerAppIo connection, the one made since the run began.
			st := lb.stats(t)
			var victim *haLink
			for _, l := range links {
				if now := st[haKey("driver", l.name)]; now.sessions > 0 && now.total > before[haKey("driver", l.name)].total {
					victim = l
				}
			}
			if victim == nil {
				t.Fatalf("HAProxy shows no ServerAppIo connection made since the run began: %v", st)
			}
			if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			<-victim.done
			lb.waitAll(t, []*haLink{victim}, "DOWN", 15*time.Second)
			t.Logf("killed %s (SIGKILL), the ServerApp's replica, with %d ServerAppIo, %d Fleet and %d Control connections open through HAProxy; DOWN in HAProxy %v later",
				victim.name, st[haKey("driver", victim.name)].sessions, st[haKey("fleet", victim.name)].sessions,
				st[haKey("control", victim.name)].sessions, time.Since(killed).Round(time.Millisecond))
		})
	}) {
		return
	}

	t.Run("Unregistered", func(t *testing.T) {
		out, code := d.flwr(t, time.Minute, "supernode", "unregister", ids[0], "local-tls")
		if code != 0 {
			t.Fatalf("flwr supernode unregister exited %d:\n%s", code, out)
		}
		unregistered := time.Now()
		// Its next call is refused as Flower refuses it (Unauthenticated,
		// "Invalid node ID"), and Flower 1.29.0's SuperNode takes that as
		// its end: its retry policy sends the process SIGINT, which is
		// the only way it prints "terminated gracefully" here, as nothing
		// else signals it. Whether the refusal's traceback is printed
		// before the process is gone is a race inside the SuperNode, so
		// it is not waited for.
		nodes[0].waitOutput(t, "SuperNode terminated gracefully", time.Minute)
		t.Logf("SuperNode %s cut off %v after flwr supernode unregister", ids[0], time.Since(unregistered).Round(100*time.Millisecond))
		nodes[0].cmd.Process.Kill()
		if got := d.nodeStatus(t, "local-tls"); got[ids[0]] != "unregistered" || got[ids[1]] != "online" {
			t.Fatalf("flwr supernode list after unregister: %v, want %s unregistered and %s online", got, ids[0], ids[1])
		}
		refusedAsFlower(t, d.superNode(t, lb.cfg.Fleet, 0, "--auth-supernode-private-key", keys[0]))
	})

	// Which replica served what: connections HAProxy made to each.
	st := lb.stats(t)
	var served []string
	for _, api := range lb.cfg.apis() {
		var per []string
		for _, l := range links {
			per = append(per, fmt.Sprintf("%s %d", l.name, st[haKey(api, l.name)].total))
		}
		served = append(served, api+": "+strings.Join(per, ", "))
	}
	t.Logf("connections through HAProxy by replica (driver carries ServerAppIo): %s; whole test %v",
		strings.Join(served, "; "), time.Since(began).Round(100*time.Millisecond))
}

// refusedAsFlower waits for a SuperNode whose key is not registered to
// end, and checks that it ended as Flower 1.29.0's own SuperLink makes it
// end: ActivateNode refused with FAILED_PRECONDITION "No SuperNode found
// with the given public key.", exit 1.
func refusedAsFlower(t *testing.T, p *proc) {
	t.Helper()
	if code := p.wait(t, time.Minute); code != 1 {
		t.Fatalf("the SuperNode of a key not registered exited %d, want 1:\n%s", code, p.out.String())
	}
	for _, want := range []string{"status = StatusCode.FAILED_PRECONDITION", `details = "No SuperNode found with the given public key."`} {
		if !strings.Contains(p.out.String(), want) {
			t.Fatalf("the SuperNode of a key not registered did not report %q:\n%s", want, p.out.String())
		}
	}
}

// nodeStatus returns the status of each node by id, as flwr supernode
// list shows it through the connection named superlink.
func (d *flower129) nodeStatus(t *testing.T, superlink string) map[string]string {
	t.Helper()
	out, code := d.flwr(t, time.Minute, "supernode", "list", superlink, "--format", "json")
	var list struct {
		Nodes []struct {
			ID     string `json:"node-id"`
			Status string `json:"status"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(out), &list); code != 0 || err != nil {
		t.Fatalf("flwr supernode list exited %d (%v):\n%s", code, err, out)
	}
	got := map[string]string{}
	for _, n := range list.Nodes {
		got[n.ID] = n.Status
	}
	return got
}

// nodeKey writes a SuperNode's key pair into dir as ssh-keygen -t ecdsa
// -b 384 does (Flower's documented way): the private key in OpenSSH's
// format in name, the public key in name.pub, and returns the private
// key's path.
func nodeKey(t *testing.T, dir, name string) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := ssh.MarshalPrivateKey(k, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
