package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The image test builds deploy/Containerfile with Podman and runs the
// SuperLink in it for a FedAvg of Sepal's apps. What runs containers on
// these machines: Podman with runc (crun refuses the hybrid cgroup
// hierarchy here), the host's network, and the host's limits (Podman's
// default RLIMIT_NOFILE is above the host's, which root may not raise
// without CAP_SYS_RESOURCE). Nothing comes from a container registry:
// the build stage's base (Debian bookworm, with curl and unzip) is made
// with debootstrap from Debian's packages once per machine and imported,
// and the build reads the Go toolchain and the modules from this
// machine's module cache as a file:// module proxy.

const (
	imageBase     = "localhost/sepal-test/debian-build:bookworm"
	containerfile = "deploy/Containerfile"
)

// podmanCmd runs podman with runc and returns its combined output.
func podmanCmd(t *testing.T, podman string, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(podman, append([]string{"--runtime", "runc"}, args...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return string(out), fmt.Errorf("podman %s did not end within %v", strings.Join(args, " "), timeout)
	}
	return string(out), err
}

// hostLimits are podman run's --ulimit flags for this process's limits,
// RLIMIT_NPROC at most 32768: Podman starts conmon, the container's
// parent, under that hard limit, which the container may not exceed.
func hostLimits(t *testing.T) []string {
	t.Helper()
	var flags []string
	for _, l := range []struct {
		name string
		res  int
	}{{"nofile", syscall.RLIMIT_NOFILE}, {"nproc", 6 /* RLIMIT_NPROC */}} {
		var r syscall.Rlimit
		if err := syscall.Getrlimit(l.res, &r); err != nil {
			t.Fatal(err)
		}
		if l.name == "nproc" {
			r.Cur, r.Max = min(r.Cur, 32768), min(r.Max, 32768)
		}
		v := func(n uint64) string {
			if n == ^uint64(0) {
				return "-1" // unlimited
			}
			return fmt.Sprint(n)
		}
		flags = append(flags, "--ulimit", l.name+"="+v(r.Cur)+":"+v(r.Max))
	}
	return flags
}

// baseMu makes the tests that need the base wait for one debootstrap.
var baseMu sync.Mutex

// buildBase makes the build stage's base image, unless this machine has
// it: Debian bookworm from debootstrap, with the CA certificates, curl
// and unzip.
func buildBase(t *testing.T, podman string) {
	t.Helper()
	baseMu.Lock()
	defer baseMu.Unlock()
	if exec.Command(podman, "image", "exists", imageBase).Run() == nil {
		return
	}
	debootstrap := needTool(t, "debootstrap", "debootstrap", "/usr/sbin/debootstrap")
	root := filepath.Join(t.TempDir(), "rootfs")
	began := time.Now()
	if out, code := run(t, 10*time.Minute, t.TempDir(), nil, debootstrap, "--variant=minbase", "--include=ca-certificates,curl,unzip",
		"bookworm", root, "http://deb.debian.org/debian"); code != 0 {
		t.Fatalf("debootstrap exited %d:\n%s", code, out)
	}
	tar := exec.Command("tar", "-C", root, "-c", ".")
	imp := exec.Command(podman, "import", "-", imageBase)
	pipe, err := tar.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	imp.Stdin = pipe
	if err := tar.Start(); err != nil {
		t.Fatal(err)
	}
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("podman import: %v\n%s", err, out)
	}
	if err := tar.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("made the build base %s with debootstrap in %v", imageBase, time.Since(began).Round(time.Second))
}

// goToolchainZip makes sure the module cache holds the Go toolchain the
// Containerfile builds with, and returns the cache's download folder (a
// file:// module proxy).
func goToolchainZip(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(moduleRoot(), containerfile))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ARG GO_VERSION=(\S+)$`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("%s has no ARG GO_VERSION=", containerfile)
	}
	mod := "golang.org/toolchain@v0.0.1-go" + string(m[1]) + ".linux-amd64"
	cmd := exec.Command("go", "mod", "download", mod)
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod download %s: %v\n%s", mod, err, out)
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "cache", "download")
}

// TestContainerImage builds the image and runs it: flower-certs writes
// certificates into the volume, the SuperLink serves a 2-round FedAvg of
// two client apps and the server app from that volume, as the image's
// user (uid 65532), keeps its state there, and stops on SIGTERM (podman
// stop) with exit 0 well within Podman's 10 s.
func TestContainerImage(t *testing.T) {
	needE2E(t)
	t.Parallel()
	podman := needTool(t, "podman", "podman")
	needTool(t, "runc", "runc", "/usr/sbin/runc")
	buildBase(t, podman)
	proxy := goToolchainZip(t)
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	goCache := filepath.Join(cache, "sepal-test", "image-go-build")
	if err := os.MkdirAll(goCache, 0o700); err != nil {
		t.Fatal(err)
	}
	var id [6]byte
	rand.Read(id[:])
	tag := "localhost/sepal-test/superlink:" + hex.EncodeToString(id[:])
	name := "sepal-test-" + hex.EncodeToString(id[:])

	began := time.Now()
	out, err := podmanCmd(t, podman, 15*time.Minute, "build", "--network", "host", "--layers=false", "-f", containerfile, "-t", tag,
		"--build-arg", "BUILD_IMAGE="+imageBase, "--build-arg", "GOPROXY=file:///goproxy",
		"-v", proxy+":/goproxy:ro", "-v", goCache+":/root/.cache/go-build", moduleRoot())
	if err != nil {
		t.Fatalf("podman build: %v\n%s", err, out)
	}
	t.Cleanup(func() { podmanCmd(t, podman, time.Minute, "rmi", "-f", tag) })
	t.Logf("podman build of %s: %v", containerfile, time.Since(began).Round(time.Second))
	if out, err := podmanCmd(t, podman, time.Minute, "image", "inspect", "--format", "{{.Config.User}} {{.Config.ExposedPorts}} {{.Config.Volumes}} {{.Size}}", tag); err != nil ||
		!strings.HasPrefix(out, "65532:65532 ") || !strings.Contains(out, "9092/tcp") || !strings.Contains(out, "/data") {
		t.Fatalf("the image's user, ports and volume: %v %s", err, out)
	} else {
		t.Logf("image: user, ports, volume, bytes: %s", strings.TrimSpace(out))
	}

	data := t.TempDir()
	limits := hostLimits(t)
	runArgs := append([]string{"run", "--network", "host", "-v", data + ":/data:U"}, limits...)
	if out, err := podmanCmd(t, podman, time.Minute, append(append([]string{}, runArgs...), "--rm", "--entrypoint", "flower-certs", tag)...); err != nil {
		t.Fatalf("flower-certs in the image: %v\n%s", err, out)
	}
	fleet, driver, control, metrics := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	args := append(append([]string{}, runArgs...), "-d", "--name", name, tag,
		"--certificates", slCA, slCert, slKey, "--database", "/data/state.db",
		"--grpc-rere-fleet-api-address", fleet, "--driver-api-address", driver, "--control-api-address", control, "--metrics-address", metrics)
	if out, err := podmanCmd(t, podman, time.Minute, args...); err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	logs := func() string {
		out, _ := podmanCmd(t, podman, time.Minute, "logs", name)
		return out
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- the SuperLink in the container ----\n%s", logs())
		}
		podmanCmd(t, podman, time.Minute, "rm", "-f", "-t", "0", name)
	})
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs(), "msg=serving"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the SuperLink in the container did not serve within 30 s:\n%s", logs())
		}
	}
	pid, err := podmanCmd(t, podman, time.Minute, "inspect", "--format", "{{.State.Pid}}", name)
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(filepath.Join("/proc", strings.TrimSpace(pid), "status"))
	if err != nil || !regexp.MustCompile(`(?m)^Uid:\s+65532\s`).Match(status) {
		t.Fatalf("the SuperLink's user in the container: %v\n%s", err, status)
	}

	// A FedAvg run of Sepal's apps, trusting the CA made in the volume.
	for range 2 {
		start(t, data, nil, "flower-client-app", "client:app", "--root-certificates", slCA, "--server", fleet, "--poll-interval", "200ms")
	}
	server := start(t, data, nil, "flower-server-app", "server:app", "--root-certificates", slCA, "--server", driver, "--rounds", "2", "--min-nodes", "2")
	if code := server.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("the server app exited %d:\n%s", code, server.out.String())
	}
	if rs := parseRounds(t, server.out.String()); len(rs) != 2 || rs[0].nodes != 2 || rs[1].nodes != 2 {
		t.Fatalf("the FedAvg run on the container: %+v\n%s", rs, server.out.String())
	}
	resp, err := http.Get("http://" + metrics + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %v %v", resp, err)
	}
	resp.Body.Close()

	stopped := time.Now()
	if out, err := podmanCmd(t, podman, time.Minute, "stop", name); err != nil {
		t.Fatalf("podman stop: %v\n%s", err, out)
	}
	took := time.Since(stopped)
	code, err := podmanCmd(t, podman, time.Minute, "inspect", "--format", "{{.State.ExitCode}}", name)
	if err != nil || strings.TrimSpace(code) != "0" || !strings.Contains(logs(), "msg=stopped") || took > 10*time.Second {
		t.Fatalf("podman stop: exit %s (%v) after %v, want 0 within 10 s:\n%s", code, err, took, logs())
	}
	st, err := os.Stat(filepath.Join(data, "state.db"))
	if err != nil || st.Sys().(*syscall.Stat_t).Uid != 65532 {
		t.Fatalf("the state in the volume: %v %+v", err, st)
	}
	t.Logf("the image served a 2-round FedAvg; podman stop took %v, exit 0", took.Round(time.Millisecond))
}

// systemdImage is the image the unit test boots: the build base with
// systemd as its init.
const systemdImage = "localhost/sepal-test/systemd:bookworm"

// TestSystemdUnitsInContainer boots systemd in a container (its own
// network namespace, so the units' fixed ports are its own) and runs
// deploy/flower-superlink.service with its socket units, as installed
// by the README, the ACME flags replaced by certificate files in a
// drop-in: the sockets reach the service by name, and neither
// `systemctl restart` nor a kill -9 that Restart=always answers refuses a
// connection to any of the four ports.
func TestSystemdUnitsInContainer(t *testing.T) {
	needE2E(t)
	t.Parallel()
	podman := needTool(t, "podman", "podman")
	needTool(t, "runc", "runc", "/usr/sbin/runc")
	buildBase(t, podman)
	if exec.Command(podman, "image", "exists", systemdImage).Run() != nil {
		dir := t.TempDir()
		cf := "FROM " + imageBase + "\nRUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-sysv && rm -rf /var/lib/apt/lists/*\n"
		if err := os.WriteFile(filepath.Join(dir, "Containerfile"), []byte(cf), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := podmanCmd(t, podman, 10*time.Minute, "build", "--network", "host", "-t", systemdImage, dir); err != nil {
			t.Fatalf("building %s: %v\n%s", systemdImage, err, out)
		}
	}
	var id [6]byte
	rand.Read(id[:])
	name := "sepal-test-systemd-" + hex.EncodeToString(id[:])
	args := append([]string{"run", "-d", "--name", name, "--privileged", "--network", "none", "--systemd", "always"}, hostLimits(t)...)
	if out, err := podmanCmd(t, podman, time.Minute, append(args, systemdImage, "/sbin/init")...); err != nil {
		t.Fatalf("booting systemd in a container: %v\n%s", err, out)
	}
	exec1 := func(script string) string {
		t.Helper()
		out, err := podmanCmd(t, podman, 2*time.Minute, "exec", name, "bash", "-c", script)
		if err != nil {
			t.Fatalf("in the container: %s: %v\n%s", script, err, out)
		}
		return out
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := podmanCmd(t, podman, time.Minute, "exec", name, "journalctl", "--no-pager", "-u", "flower-superlink*")
			t.Logf("---- the journal ----\n%s", out)
		}
		podmanCmd(t, podman, time.Minute, "rm", "-f", "-t", "0", name)
	})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(200 * time.Millisecond) {
		out, _ := podmanCmd(t, podman, time.Minute, "exec", name, "systemctl", "is-system-running")
		if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd did not boot in the container: %s", out)
		}
	}
	for _, b := range []string{"flower-superlink", "flower-certs", "flower-client-app", "flower-server-app"} {
		if out, err := podmanCmd(t, podman, time.Minute, "cp", bin(t, b), name+":/usr/local/bin/"+b); err != nil {
			t.Fatalf("podman cp %s: %v\n%s", b, err, out)
		}
	}
	units, err := filepath.Glob(filepath.Join(moduleRoot(), "deploy", "flower-superlink*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range units {
		if strings.HasSuffix(u, ".service") || strings.HasSuffix(u, ".socket") {
			if out, err := podmanCmd(t, podman, time.Minute, "cp", u, name+":/etc/systemd/system/"); err != nil {
				t.Fatalf("podman cp %s: %v\n%s", u, err, out)
			}
		}
	}
	exec1(`set -e
mkdir -p /etc/sepal /etc/systemd/system/flower-superlink.service.d
flower-certs --dir /etc/sepal >/dev/null
chmod 0644 /etc/sepal/server.key   # read by the service's dynamic user
cat > /etc/systemd/system/flower-superlink.service.d/files.conf <<'UNIT'
[Service]
ExecStart=
ExecStart=/usr/local/bin/flower-superlink --certificates /etc/sepal/ca.crt /etc/sepal/server.pem /etc/sepal/server.key \
    --database /var/lib/flower-superlink/state.db --grpc-rere-fleet-api-address 0.0.0.0:443 \
    --driver-api-address 127.0.0.1:9091 --control-api-address 127.0.0.1:9093 --metrics-address 127.0.0.1:9100 --log-format json
UNIT
systemctl daemon-reload
systemctl enable --now flower-superlink`)
	waitServing := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			out := exec1(`journalctl -u flower-superlink -o cat | grep -c '"msg":"serving"' || true`)
			if c, _ := strconv.Atoi(strings.TrimSpace(out)); c >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the service did not serve (%d) within 30 s", n)
			}
		}
	}
	waitServing(1)
	if out := exec1(`journalctl -u flower-superlink -o cat | grep '"msg":"serving"'`); !strings.Contains(out, `"systemd_sockets":"control,driver,fleet,metrics"`) {
		t.Fatalf("the service did not take its four sockets:\n%s", out)
	}
	// Connect to every port every 20 ms for 4 s around a restart.
	const probe = `probe() { ok=0; bad=0; end=$((SECONDS+4)); while [ $SECONDS -lt $end ]; do for p in 443 9091 9093 9100; do if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then ok=$((ok+1)); else bad=$((bad+1)); fi; done; sleep 0.02; done; echo "ok=$ok refused=$bad"; }; `
	probes := regexp.MustCompile(`ok=(\d+) refused=(\d+)`)
	for i, restart := range []string{
		`systemctl restart flower-superlink`,
		`kill -9 $(systemctl show -p MainPID --value flower-superlink)`,
	} {
		out := exec1(probe + `probe & sleep 0.5; ` + restart + `; wait`)
		m := probes.FindStringSubmatch(out)
		if m == nil || m[2] != "0" || m[1] == "0" {
			t.Fatalf("%s: connections to the ports: %s", restart, out)
		}
		waitServing(2 + i)
		t.Logf("%s: %s connections, %s refused", restart, m[1], m[2])
	}
	out := exec1(`systemctl show -p NRestarts --value flower-superlink; journalctl -u flower-superlink -o cat | grep -c '"msg":"stopped"'`)
	if f := strings.Fields(out); len(f) != 2 || f[0] != "1" || f[1] != "1" {
		t.Fatalf("restarts by systemd, graceful stops: %q, want 1 and 1 (the kill, the restart)", out)
	}
	// The restarted service serves a FedAvg run.
	out = exec1(`cd /tmp && (flower-client-app client:app --root-certificates /etc/sepal/ca.crt --server 127.0.0.1:443 --poll-interval 200ms >/dev/null 2>&1 &) &&
flower-server-app server:app --root-certificates /etc/sepal/ca.crt --server 127.0.0.1:9091 --rounds 1 --min-nodes 1 2>&1`)
	if rs := parseRounds(t, out); len(rs) != 1 || rs[0].nodes != 1 {
		t.Fatalf("a FedAvg run on the restarted service: %+v\n%s", rs, out)
	}
}
