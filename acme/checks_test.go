package acme

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// A domain that holds what no domain holds is refused with the reason that
// fits: a URL, a port, an e-mail address, a space.
func TestValidateDomainReasons(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"superlink.example.org", ""},
		{"SuperLink.Example.org.", ""},
		{"xn--bcher-kva.example", ""},
		{"foo bar.example.org", "contains a space"},
		{"foo bar", "contains a space"},
		{"foo\tbar.example.org", "contains a space"},
		{"https://superlink.example.org", "it is a URL"},
		{"superlink.example.org:443", "it has a port"},
		{"superlink.example.org/fleet", "it has a path"},
		{"ops@example.org", "e-mail address"},
		{"a_b.example.org", "underscore"},
		{"bücher.example", "punycode"},
		{"a!b.example.org", `the character '!'`},
		{"192.0.2.1", "IP address"},
		{"2001:db8::1", "IP address"},
		{"*.example.org", "DNS-01"},
		{"localhost", "single label"},
		{"-a.example.org", "not a valid DNS label"},
	} {
		err := ValidateDomain(tc.in)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ValidateDomain(%q) = %v, want valid", tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ValidateDomain(%q) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestValidateEmail(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"ops@example.org", ""},
		{"first.last+sepal@mail.example.org", ""},
		{"notanaddress", "has no @"},
		{"mailto:ops@example.org", "without mailto:"},
		{"Ops <ops@example.org>", "bare address"},
		{"ops@", "not an e-mail address"},
		{"ops@@example.org", "not an e-mail address"},
		{"ops@localhost", "single label"},
		{"ops@exa mple.org", "not an e-mail address"},
	} {
		err := ValidateEmail(tc.in)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ValidateEmail(%q) = %v, want valid", tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ValidateEmail(%q) = %v, want %q", tc.in, err, tc.want)
		}
	}
	if _, err := (Options{Domains: []string{"a.test"}, Email: "notanaddress"}).withDefaults(); err == nil {
		t.Error("Options with a bad Email validated")
	}
}

// A storage folder others can write, or that another user owns, is
// refused with the command that fixes it; Prepare refuses it too.
func TestCheckStorage(t *testing.T) {
	dir := t.TempDir()
	if err := CheckStorage(dir); err != nil {
		t.Fatalf("a 0700 folder of ours: %v", err)
	}
	for _, mode := range []os.FileMode{0o777, 0o770, 0o702} {
		os.Chmod(dir, mode)
		err := CheckStorage(dir)
		if err == nil || !strings.Contains(err.Error(), "can be written by other users") || !strings.Contains(err.Error(), "chmod 700 "+dir) {
			t.Errorf("mode %04o: %v", mode, err)
		}
	}
	os.Chmod(dir, 0o755)
	if err := CheckStorage(dir); err != nil {
		t.Errorf("mode 0755 (readable, not writable, by others): %v", err)
	}
	if s, err := Prepare(Options{Domains: []string{"a.test"}, Storage: dir, CA: "https://127.0.0.1:1/dir"}); err != nil {
		t.Errorf("Prepare with a good folder: %v", err)
	} else {
		s.Close()
	}
	os.Chmod(dir, 0o777)
	if _, err := Prepare(Options{Domains: []string{"a.test"}, Storage: dir}); err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Errorf("Prepare with a 0777 folder: %v", err)
	}

	// Another user's folder: as root, one given to nobody; otherwise /,
	// which root owns.
	other := "/"
	if os.Geteuid() == 0 {
		other = filepath.Join(t.TempDir(), "nobody")
		if err := os.Mkdir(other, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	err := CheckStorage(other)
	if err == nil || !strings.Contains(err.Error(), "belongs to another user") || !strings.Contains(err.Error(), "chown -R") {
		t.Errorf("a folder of another user: %v", err)
	}
	if err := CheckStorage(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing folder passed")
	}
}

// Without HOME the default storage is a documented absolute place, never
// the current folder.
func TestDefaultStorageWithoutHome(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "")
	home := t.TempDir()
	t.Setenv("HOME", home)
	if got := DefaultStorage(); got != filepath.Join(home, ".local/share/sepal/acme") {
		t.Errorf("with HOME: %q", got)
	}
	// systemd's HOME for DynamicUser= and nobody's are no homes.
	for _, h := range []string{"/", filepath.Join(home, "nonexistent")} {
		t.Setenv("HOME", h)
		if got := DefaultStorage(); strings.HasPrefix(got, filepath.Join(h, ".local")) {
			t.Errorf("with HOME=%s: %q, want the user database's home or the system place", h, got)
		}
	}
	t.Setenv("HOME", "")
	got := DefaultStorage()
	if !filepath.IsAbs(got) {
		t.Errorf("without HOME: %q, want an absolute path", got)
	}
	if home := userHome(); home != "" && got != filepath.Join(home, ".local", "share", "sepal", "acme") {
		t.Errorf("without HOME: %q, want under the user's home %s from the user database", got, home)
	} else if home == "" && got != systemStorage() {
		t.Errorf("without HOME or a home folder: %q, want %q", got, systemStorage())
	}
	t.Setenv("STATE_DIRECTORY", "/var/lib/sepal-superlink")
	if got := systemStorage(); got != "/var/lib/sepal-superlink/acme" {
		t.Errorf("under StateDirectory=: %q", got)
	}
	t.Setenv("STATE_DIRECTORY", "")
	if got := systemStorage(); got != "/var/lib/sepal/acme" {
		t.Errorf("system default: %q", got)
	}
}

// A CA whose HTTPS certificate is not trusted is a CA that cannot be
// reached, with the reason (ErrCAUntrusted); start-up gives up at once,
// not at its timeout, and certmagic's "will retry" is not logged, since no
// retry follows.
func TestNewUntrustedCA(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	for _, client := range []string{ClientAutocert, ClientCertmagic} {
		t.Run(client, func(t *testing.T) {
			var log testkit.SyncBuffer
			start := time.Now()
			_, err := New(context.Background(), Options{Domains: []string{"a.test"}, Storage: t.TempDir(), Client: client,
				CA: srv.URL + "/dir", TLSALPNAddress: "127.0.0.1:0", StartupTimeout: time.Minute,
				Logger: slog.New(slog.NewTextHandler(&log, nil))})
			took := time.Since(start)
			if !errors.Is(err, ErrCAUnreachable) || !errors.Is(err, ErrCAUntrusted) || !strings.Contains(err.Error(), "HTTPS certificate (issued by") ||
				!strings.Contains(err.Error(), "is not trusted here") || !strings.Contains(err.Error(), "CA root file") {
				t.Errorf("err = %v", err)
			}
			if took >= time.Minute {
				t.Errorf("start-up took %v: it waited for its timeout", took)
			}
			if strings.Contains(log.String(), "will retry") {
				t.Errorf("the log promises a retry that never comes:\n%s", log.String())
			}
		})
	}
}

// A CA that refuses connections, with a start-up timeout shorter than
// certmagic's first wait (1 min): start-up ends after the first attempt
// instead of waiting out its timeout, without a "will retry" line.
func TestNewNoRetryBeforeTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var log testkit.SyncBuffer
	start := time.Now()
	_, err = New(context.Background(), Options{Domains: []string{"a.test"}, Storage: t.TempDir(), Client: ClientCertmagic,
		CA: "https://" + addr + "/dir", TLSALPNAddress: "127.0.0.1:0", StartupTimeout: 40 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&log, nil))})
	took := time.Since(start)
	if !errors.Is(err, ErrCAUnreachable) || errors.Is(err, ErrCAUntrusted) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v", err)
	}
	if took >= 40*time.Second {
		t.Errorf("start-up took %v: it waited for its timeout", took)
	}
	if strings.Contains(log.String(), "will retry") {
		t.Errorf("the log promises a retry after the start-up timeout:\n%s", log.String())
	}
	t.Logf("gave up after %v", took.Round(time.Millisecond))
}
