package clientflags

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
	"github.com/sepal-fl/sepal/transport"
)

func parse(t *testing.T, args ...string) (*Flags, error) {
	t.Helper()
	fs := cli.NewFlagSet(cli.Command{Name: "x"}, io.Discard)
	f := Register(fs, "0.0.0.0:9092", "Fleet API")
	if err := cli.Parse(fs, args); err != nil {
		t.Fatal(err)
	}
	return f, nil
}

func TestDefaults(t *testing.T) {
	f, _ := parse(t)
	o, err := f.TLS()
	if err != nil || o != (transport.ClientOptions{Role: transport.RoleNode}) || f.Server != "0.0.0.0:9092" {
		t.Errorf("defaults: %+v %+v %v (want TLS with system roots on 0.0.0.0:9092)", f, o, err)
	}
	if n, w, err := f.Retry(); n != 0 || w != 0 || err != nil {
		t.Errorf("retry defaults: %d %s %v, want unlimited", n, w, err)
	}
	if !strings.Contains(f.Describe(), "system roots") {
		t.Errorf("Describe = %q", f.Describe())
	}
}

func TestValues(t *testing.T) {
	f, _ := parse(t, "--server", "localhost:1", "--root-certificates", "ca.crt", "--tls-server-name", "sl.lan", "--max-retries", "4", "--max-wait-time", "2.5")
	o, err := f.TLS()
	if err != nil || o != (transport.ClientOptions{RootCertificates: "ca.crt", ServerName: "sl.lan", Role: transport.RoleNode}) {
		t.Errorf("TLS = %+v %v", o, err)
	}
	if n, w, err := f.Retry(); n != 4 || w != 2500*time.Millisecond || err != nil {
		t.Errorf("Retry = %d %s %v", n, w, err)
	}
}

// An explicit 0 means no retry, as in Flower 1.8.0; no flag means no limit.
func TestExplicitZero(t *testing.T) {
	f, _ := parse(t, "--max-retries", "0", "--max-wait-time", "0")
	if n, w, err := f.Retry(); n != -1 || w != -1 || err != nil {
		t.Errorf("Retry = %d %s %v, want -1 -1 (no retry)", n, w, err)
	}
}

func TestConflicts(t *testing.T) {
	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"--insecure", "--root-certificates", "ca.crt"}, []string{"--insecure", "--root-certificates ca.crt", "conflict"}},
		{[]string{"--insecure", "--tls-server-name", "x"}, []string{"--insecure", "--tls-server-name"}},
		{[]string{"--server", ""}, []string{"--server"}},
		{[]string{"--server", "localhost"}, []string{`--server "localhost"`, "HOST:PORT", "127.0.0.1:9092"}},
		{[]string{"--server", ":9092"}, []string{"HOST:PORT"}},
		// Impossible addresses are refused at once, never retried.
		{[]string{"--server", "127.0.0.1:99999"}, []string{`--server "127.0.0.1:99999"`, "port 99999 is out of range"}},
		{[]string{"--server", ":abc"}, []string{`port "abc" is not a number`}},
		{[]string{"--server", "host:-1"}, []string{"port -1 is out of range"}},
		{[]string{"--server", "localhost:"}, []string{"the port is empty"}},
		{[]string{"--server", "127.0.0.1:0"}, []string{"port 0 is out of range"}},
	}
	for _, c := range cases {
		f, _ := parse(t, c.args...)
		_, err := f.TLS()
		var ue *cli.UsageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", c.args, err)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %q does not name %q", c.args, err, w)
			}
		}
	}
	for _, args := range [][]string{{"--max-retries", "-1"}, {"--max-wait-time", "-3"}, {"--max-wait-time", "NaN"}} {
		f, _ := parse(t, args...)
		var ue *cli.UsageError
		_, _, err := f.Retry()
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want a usage error naming the flag", args, err)
			continue
		}
		// The message says what 0 and no flag mean, as Retry treats them:
		// an explicit 0 is no retry, no flag is no limit.
		for _, w := range []string{"0 for no", "leave the flag out for no limit"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %q lacks %q", args, err, w)
			}
		}
		if strings.Contains(err.Error(), "0 for no limit") {
			t.Errorf("%v: %q says 0 means no limit, but an explicit 0 means no retry", args, err)
		}
	}
}

func TestLogStart(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
		warn bool
	}{
		{[]string{"--server", "127.0.0.1:9092", "--root-certificates", "ca.crt"},
			[]string{`msg="starting SuperNode" app=client:app server=127.0.0.1:9092 transport="TLS, trusting ca.crt" rounds=3`}, false},
		{[]string{"--server", "127.0.0.1:9092", "--insecure"},
			[]string{`transport="plaintext (--insecure)"`, `level=WARN msg="--insecure: tasks and model parameters travel in plaintext"`}, true},
	} {
		f, _ := parse(t, c.args...)
		var b strings.Builder
		f.LogStart(cli.NewLogger(&b, slog.LevelInfo), "starting SuperNode", "client:app", "rounds", 3)
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%v: log lacks %q:\n%s", c.args, w, b.String())
			}
		}
		if got := strings.Contains(b.String(), "WARN"); got != c.warn {
			t.Errorf("%v: warned %v, want %v:\n%s", c.args, got, c.warn, b.String())
		}
	}
}
