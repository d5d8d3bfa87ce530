package acme

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
)

func TestSnakeCase(t *testing.T) {
	for in, want := range map[string]string{
		"identifier":  "identifier",
		"lockKey":     "lock_key",
		"retrying_in": "retrying_in",
		"Account-ID":  "account_id",
		"remote.addr": "remote_addr",
		"certKey2x":   "cert_key2x",
		"HTTPPort":    "httpport",
	} {
		if got := snakeCase(in); got != want {
			t.Errorf("snakeCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestZapBridge(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	zl := newZapLogger(log).Named("obtain").With(zap.String("lockKey", "x"))
	zl.Debug("hidden")
	zl.Info("obtaining certificate", zap.String("identifier", "a.test"), zap.Error(errors.New("boom")), zap.Duration("retryingIn", time.Second))
	zl.Error("failed")
	zl.Info("acquiring lock") // certmagic bookkeeping: Debug
	out := buf.String()
	for _, want := range []string{
		`level=INFO msg="obtaining certificate" logger=obtain lock_key=x identifier=a.test`,
		`error=boom`, `retrying_in=1s`, `level=ERROR msg=failed`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") || strings.Contains(out, "acquiring lock") {
		t.Errorf("debug entry passed an info logger:\n%s", out)
	}
}

func TestOptionsDefaults(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "/data")
	o, err := Options{Domains: []string{"SuperLink.Example.org.", "superlink.example.org"}}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.Domains, ","); got != "superlink.example.org" {
		t.Errorf("domains = %q", got)
	}
	if o.CA != LetsEncryptProduction || o.Challenge != ChallengeTLSALPN01 || o.Client != ClientCertmagic ||
		o.TLSALPNAddress != ":443" || o.HTTPAddress != ":80" || o.StartupTimeout != DefaultStartupTimeout ||
		o.Storage != filepath.Join("/data", "sepal", "acme") || o.Logger == nil {
		t.Errorf("defaults not filled in: %+v", o)
	}
	if o, _ := (Options{Domains: []string{"a.test"}, CA: "staging"}).withDefaults(); o.CA != LetsEncryptStaging {
		t.Errorf("staging shorthand gave %q", o.CA)
	}
}

func TestOptionsInvalid(t *testing.T) {
	for _, c := range []struct {
		name string
		o    Options
		want string
	}{
		{"no domain", Options{}, "no ACME domain"},
		{"ip", Options{Domains: []string{"192.0.2.1"}}, "IP address"},
		{"wildcard", Options{Domains: []string{"*.example.org"}}, "DNS-01"},
		{"single label", Options{Domains: []string{"localhost"}}, "single label"},
		{"bad char", Options{Domains: []string{"a_b.example.org"}}, "underscore"},
		{"http ca", Options{Domains: []string{"a.test"}, CA: "http://ca/dir"}, "https://"},
		{"challenge", Options{Domains: []string{"a.test"}, Challenge: "dns-01"}, "dns-01"},
		{"client", Options{Domains: []string{"a.test"}, Client: "lego"}, "lego"},
		{"address", Options{Domains: []string{"a.test"}, HTTPAddress: "80"}, "HTTP address"},
		{"ratio", Options{Domains: []string{"a.test"}, RenewalWindowRatio: 1}, "RenewalWindowRatio"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.o.withDefaults()
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.HasPrefix(err.Error(), "acme") {
				t.Errorf("err = %v, want one with %q", err, c.want)
			}
		})
	}
}

func TestNewRefusesBadRootFile(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "root.pem")
	if err := os.WriteFile(bad, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := New(context.Background(), Options{Domains: []string{"a.test"}, Storage: filepath.Join(dir, "s"), CARootFile: bad})
	if err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("err = %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "s"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("storage folder: %v %v, want mode 0700", fi, err)
	}
}

// A CA that cannot be reached (nothing listens at its address, or its
// host name does not resolve) ends New within the start-up timeout, with an
// *ObtainError that says the CA cannot be reached, not that the domain's
// DNS or ports may be wrong.
func TestNewUnreachableCA(t *testing.T) {
	for _, tc := range []struct{ client, ca, why string }{
		{ClientCertmagic, "https://127.0.0.1:1/dir", "nothing answers at 127.0.0.1:1 (connection refused)"},
		{ClientAutocert, "https://127.0.0.1:1/dir", "nothing answers at 127.0.0.1:1 (connection refused)"},
		{ClientCertmagic, "https://no-such-ca.invalid/dir", "its host name no-such-ca.invalid does not resolve"},
		{ClientAutocert, "https://no-such-ca.invalid/dir", "its host name no-such-ca.invalid does not resolve"},
	} {
		t.Run(tc.client+" "+tc.ca, func(t *testing.T) {
			start := time.Now()
			_, err := New(context.Background(), Options{
				Domains: []string{"a.test"}, Storage: t.TempDir(), Client: tc.client,
				CA: tc.ca, TLSALPNAddress: "127.0.0.1:0",
				StartupTimeout: 3 * time.Second,
			})
			var oe *ObtainError
			if !errors.As(err, &oe) || !errors.Is(err, ErrCAUnreachable) {
				t.Fatalf("err = %v, want *ObtainError matching ErrCAUnreachable", err)
			}
			for _, want := range []string{"a.test", "cannot reach the ACME CA at " + tc.ca, tc.why, "directory URL"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
			for _, wrong := range []string{"DNS for a.test", "port 443"} {
				if strings.Contains(err.Error(), wrong) {
					t.Errorf("error blames the domain (%q): %v", wrong, err)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("New took %v with a 3s timeout", d)
			}
		})
	}
}
