package e2e

// A harness for end-to-end ACME tests against pebble, Let's Encrypt's test
// CA, in the manner of golang.org/x/crypto/acme's pebble_test.go: pebble and
// pebble-challtestsrv are built once per test binary from the module version
// pinned in go.mod (never a downloaded binary), started on loopback with
// ports chosen at run time, challtestsrv as pebble's DNS server so that
// every test name resolves to 127.0.0.1, PEBBLE_VA_NOSLEEP=1, and both
// stopped in cleanup with their logs printed when the test failed.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const pebbleModule = "github.com/letsencrypt/pebble/v2"

var pebbleBuild struct {
	once   sync.Once
	dir    string // binaries
	modDir string // the module in the module cache: test/certs
	err    error
}

// pebbleBinaries builds pebble and pebble-challtestsrv once per test binary
// into the harness's binary folder (removed by TestMain) and returns that
// folder and the pebble module's folder.
func pebbleBinaries(t testing.TB) (bins, modDir string) {
	t.Helper()
	b := &pebbleBuild
	b.once.Do(func() {
		b.dir = filepath.Join(binDir, "pebble-bin")
		cmd := exec.Command("go", "build", "-o", b.dir+string(os.PathSeparator),
			pebbleModule+"/cmd/pebble", pebbleModule+"/cmd/pebble-challtestsrv")
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building pebble from %s (pinned in go.mod): %v\n%s", pebbleModule, err, out)
			return
		}
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", pebbleModule).Output()
		if err != nil {
			b.err = fmt.Errorf("finding the pebble module folder: %v", err)
			return
		}
		b.modDir = strings.TrimSpace(string(out))
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.dir, b.modDir
}

// pebbleOptions configures one pebble instance. Pebble's validation ports
// are global to the instance, so each SuperLink under test gets its own.
type pebbleOptions struct {
	TLSPort     int           // where pebble's VA connects for TLS-ALPN-01 (the Fleet API port)
	HTTPPort    int           // where it connects for HTTP-01 (the responder's port)
	Validity    time.Duration // certificate lifetime; default 90 days
	NonceReject int           // PEBBLE_WFE_NONCEREJECT percentage; 0 means pebble's default (5)
	AuthzReuse  int           // PEBBLE_AUTHZREUSE percentage; 0 means pebble's default (50), -1 none
}

// pebbleCA is a running pebble with its challenge test server.
type pebbleCA struct {
	DirURL     string // ACME directory
	MinicaFile string // PEM that pebble's own HTTPS chains to: --acme-ca-root
	RootFile   string // PEM of the root that issues the certificates: SSL_CERT_FILE for clients
	pebble     *proc
	chall      *proc
	challMgmt  string
}

// startPebble starts challtestsrv and pebble on loopback and waits until
// the ACME directory answers.
func startPebble(t testing.TB, o pebbleOptions) *pebbleCA {
	t.Helper()
	bins, mod := pebbleBinaries(t)
	dir := t.TempDir()
	certs := filepath.Join(mod, "test", "certs")

	dnsAddr := freeAddr(t)
	challMgmt := freeAddr(t)
	chall := start(t, dir, nil, filepath.Join(bins, "pebble-challtestsrv"),
		"-dnsserver", dnsAddr, "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
		"-management", challMgmt, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")

	validity := o.Validity
	if validity == 0 {
		validity = 90 * 24 * time.Hour
	}
	listen, mgmt := freeAddr(t), freeAddr(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  listen,
		"managementListenAddress":        mgmt,
		"certificate":                    filepath.Join(certs, "localhost", "cert.pem"),
		"privateKey":                     filepath.Join(certs, "localhost", "key.pem"),
		"httpPort":                       o.HTTPPort,
		"tlsPort":                        o.TLSPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"keyAlgorithm":                   "ecdsa",
		"retryAfter":                     map[string]int{"authz": 0, "order": 0},
		"profiles": map[string]any{"default": map[string]any{
			"description":    "the only profile, so every order gets it",
			"validityPeriod": int(validity / time.Second),
		}},
	}}
	cfgData, _ := json.MarshalIndent(cfg, "", "  ")
	cfgFile := filepath.Join(dir, "pebble-config.json")
	if err := os.WriteFile(cfgFile, cfgData, 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PEBBLE_VA_NOSLEEP=1"}
	if o.NonceReject != 0 {
		env = append(env, "PEBBLE_WFE_NONCEREJECT="+strconv.Itoa(o.NonceReject))
	}
	switch {
	case o.AuthzReuse < 0:
		env = append(env, "PEBBLE_AUTHZREUSE=0")
	case o.AuthzReuse > 0:
		env = append(env, "PEBBLE_AUTHZREUSE="+strconv.Itoa(o.AuthzReuse))
	}
	peb := start(t, dir, env, filepath.Join(bins, "pebble"), "-config", cfgFile, "-dnsserver", dnsAddr)

	p := &pebbleCA{
		DirURL:     "https://" + listen + "/dir",
		MinicaFile: filepath.Join(certs, "pebble.minica.pem"),
		RootFile:   filepath.Join(dir, "pebble-root.pem"),
		pebble:     peb,
		chall:      chall,
		challMgmt:  challMgmt,
	}
	client := p.httpsClient(t)
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := client.Get(p.DirURL)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble's directory %s did not answer within 20s: %v", p.DirURL, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The management interface starts in its own goroutine; poll it too.
	var root []byte
	for {
		res, err := client.Get("https://" + mgmt + "/roots/0")
		if err == nil {
			root, err = io.ReadAll(res.Body)
			res.Body.Close()
			if err == nil && res.StatusCode == http.StatusOK && bytes.Contains(root, []byte("BEGIN CERTIFICATE")) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble's /roots/0 on %s did not answer within 20s: %v", mgmt, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.WriteFile(p.RootFile, root, 0o600); err != nil {
		t.Fatal(err)
	}
	// challtestsrv must answer DNS before pebble validates anything.
	for !p.challReady() {
		if time.Now().After(deadline) {
			t.Fatalf("pebble-challtestsrv's management on %s did not answer within 20s", challMgmt)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// httpsClient trusts pebble's own HTTPS certificate (pebble.minica.pem).
func (p *pebbleCA) httpsClient(t testing.TB) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(p.MinicaFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func (p *pebbleCA) challReady() bool {
	c, err := net.DialTimeout("tcp", p.challMgmt, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// addA makes challtestsrv answer A queries for host with addrs.
func (p *pebbleCA) addA(t testing.TB, host string, addrs ...string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"host": host, "addresses": addrs})
	res, err := http.Post("http://"+p.challMgmt+"/add-a", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("challtestsrv /add-a %s: HTTP %d", host, res.StatusCode)
	}
}

// stop ends pebble (and its DNS server) early, as when the CA is down.
func (p *pebbleCA) stop() {
	p.pebble.stop()
	p.chall.stop()
}

// issuingRoots reads the root that pebble issues under.
func (p *pebbleCA) issuingRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(p.RootFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", p.RootFile)
	}
	return pool
}
