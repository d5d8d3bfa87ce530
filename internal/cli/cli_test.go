package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestParseAndReport(t *testing.T) {
	var out bytes.Buffer
	fs := NewFlagSet(Command{Name: "flower-x", Synopsis: "does x", Usage: "[flags]", Examples: []string{"flower-x --n 3"}}, &out)
	n := fs.Int("n", 1, "how many")

	err := Parse(fs, []string{"--bogus"})
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("unknown flag: got %v, want a UsageError naming it", err)
	}
	var w bytes.Buffer
	if code := report(&w, "flower-x", err); code != ExitUsage || !strings.Contains(w.String(), "flower-x: unknown flag: --bogus (see flower-x --help)") {
		t.Fatalf("report = %d %q", code, w.String())
	}
	if out.Len() != 0 {
		t.Fatalf("a flag error printed the whole usage: %q", out.String())
	}

	if err := Parse(fs, []string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if u := out.String(); !strings.HasPrefix(u, "flower-x: does x\n\nExamples:\n  flower-x --n 3\n") || !strings.Contains(u, "--n int") {
		t.Fatalf("usage does not open with the examples:\n%s", u)
	}
	if err := Parse(fs, []string{"--n", "3"}); err != nil || *n != 3 {
		t.Fatalf("--n 3: %v %d", err, *n)
	}
	if code := report(&w, "flower-x", errors.New("boom")); code != ExitError {
		t.Fatalf("plain error exit %d", code)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	fs := NewFlagSet(Command{Name: "flower-x", Synopsis: "does x", Usage: "[flags]"}, &out)
	fs.Bool("verbose", false, "log more")
	if err := Parse(fs, []string{"--verbose"}); err != nil || out.Len() != 0 {
		t.Fatalf("without --version: %v, printed %q", err, out.String())
	}
	err := Parse(fs, []string{"--version"})
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("--version: %v, want ErrVersion", err)
	}
	if got, want := out.String(), "flower-x "+Version+"\n"; got != want {
		t.Fatalf("--version printed %q, want %q", got, want)
	}
	var w bytes.Buffer
	if code := report(&w, "flower-x", err); code != ExitOK || w.Len() != 0 {
		t.Fatalf("report(ErrVersion) = %d %q, want 0 and nothing", code, w.String())
	}
	if err := Parse(fs, []string{"--version", "--bogus"}); !errors.As(err, new(*UsageError)) {
		t.Fatalf("--version --bogus: %v, want the usage error", err)
	}
	out.Reset()
	if err := Parse(fs, []string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	u := out.String()
	if v, l := strings.Index(u, "--version"), strings.Index(u, "--verbose"); v < 0 || v < l {
		t.Fatalf("usage does not list --version after the command's flags:\n%s", u)
	}
}

// TestBoolUsage: bool flags show as plain --name, aligned with the others,
// and still parse as bools; a bool that defaults to true says so.
func TestBoolUsage(t *testing.T) {
	var out bytes.Buffer
	fs := NewFlagSet(Command{Name: "flower-x", Usage: "[flags]"}, &out)
	insecure := fs.Bool("insecure", false, "plaintext")
	verbose := fs.BoolP("verbose", "v", false, "log more")
	color := fs.Bool("color", true, "colour the output")
	fs.Int("n", 1, "how many")
	if err := Parse(fs, []string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	u := out.String()
	if strings.Contains(u, "[=") {
		t.Fatalf("usage shows a bool flag with its value:\n%s", u)
	}
	// Column widths follow the widest flag (--log-format): compare with
	// runs of spaces folded.
	fold := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	for _, want := range []string{
		"      --insecure   plaintext\n",
		"  -v, --verbose    log more\n",
		"      --color      colour the output (default true)\n",
		"      --n int      how many (default 1)\n",
		"      --log-format format   how log lines are written",
		"      --version    print the version and exit\n",
	} {
		if !strings.Contains(fold(u), fold(want)) {
			t.Errorf("usage lacks %q:\n%s", want, u)
		}
	}
	if err := Parse(fs, []string{"--insecure", "-v", "--color=false"}); err != nil || !*insecure || !*verbose || *color {
		t.Fatalf("bools after --help: %v insecure=%v verbose=%v color=%v", err, *insecure, *verbose, *color)
	}
}

func TestArgs(t *testing.T) {
	parse := func(t *testing.T, args ...string) *pflag.FlagSet {
		t.Helper()
		fs := NewFlagSet(Command{Name: "flower-x"}, io.Discard)
		if err := Parse(fs, args); err != nil {
			t.Fatal(err)
		}
		return fs
	}
	usage := func(t *testing.T, err error, want string) {
		t.Helper()
		var ue *UsageError
		if !errors.As(err, &ue) || ue.Msg != want {
			t.Fatalf("err = %v, want a UsageError %q", err, want)
		}
	}
	if err := NoArgs(parse(t), "hint"); err != nil {
		t.Fatalf("NoArgs without arguments: %v", err)
	}
	usage(t, NoArgs(parse(t, "a", "b"), ""), `unexpected argument "a": flower-x takes flags only`)
	usage(t, NoArgs(parse(t, "a"), "a host goes after --host"), `unexpected argument "a": flower-x takes flags only (a host goes after --host)`)

	if app, err := OneApp(parse(t, "client:app"), "name one"); err != nil || app != "client:app" {
		t.Fatalf("OneApp(client:app) = %q, %v", app, err)
	}
	_, err := OneApp(parse(t), "name the app, such as client:app")
	usage(t, err, "missing APP: name the app, such as client:app")
	_, err = OneApp(parse(t, "client:app", "extra"), "")
	usage(t, err, `unexpected argument "extra": flower-x runs one APP`)
}

// TestLogFormat: a command that logs takes --log-format text|json (listed
// just before --version); json writes one JSON object per line.
func TestLogFormat(t *testing.T) {
	fs := NewFlagSet(Command{Name: "flower-x"}, io.Discard)
	if err := Parse(fs, nil); err != nil || LogFormat(fs) != LogText {
		t.Fatalf("default: %v %q", err, LogFormat(fs))
	}
	err := Parse(fs, []string{"--log-format", "xml"})
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--log-format") || !strings.Contains(err.Error(), "use text or json") {
		t.Fatalf("--log-format xml: %v, want a usage error naming the flag and the choices", err)
	}
	if err := Parse(fs, []string{"--log-format", "json"}); err != nil || LogFormat(fs) != LogJSON {
		t.Fatalf("--log-format json: %v %q", err, LogFormat(fs))
	}
	var b bytes.Buffer
	NewFormatLogger(&b, slog.LevelInfo, LogFormat(fs)).Info("serving", "fleet_api_address", "127.0.0.1:9092")
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil || rec["msg"] != "serving" || rec["fleet_api_address"] != "127.0.0.1:9092" || rec["level"] != "INFO" {
		t.Fatalf("json log line %q: %v %v", b.String(), rec, err)
	}
	b.Reset()
	NewLogger(&b, slog.LevelInfo).Info("serving", "fleet_api_address", "127.0.0.1:9092")
	if !strings.Contains(b.String(), "msg=serving fleet_api_address=127.0.0.1:9092") {
		t.Fatalf("text log line %q", b.String())
	}
}

// TestNoLogFormat: a command with NoLogFormat (flower-certs, sepal-load)
// neither shows --log-format in --help nor accepts it, and LogFormat is
// text.
func TestNoLogFormat(t *testing.T) {
	var out bytes.Buffer
	fs := NewFlagSet(Command{Name: "flower-x", Usage: "[flags]", NoLogFormat: true}, &out)
	fs.Bool("force", false, "overwrite")
	if err := Parse(fs, []string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	if u := out.String(); strings.Contains(u, "log-format") || !strings.Contains(u, "--force") || !strings.Contains(u, "--version") {
		t.Fatalf("usage of a command without --log-format:\n%s", u)
	}
	err := Parse(fs, []string{"--log-format", "json"})
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "log-format") {
		t.Fatalf("--log-format json: %v, want a usage error naming the unknown flag", err)
	}
	if err := Parse(fs, nil); err != nil || LogFormat(fs) != LogText {
		t.Fatalf("LogFormat without the flag: %v %q", err, LogFormat(fs))
	}
}
