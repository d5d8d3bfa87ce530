package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"
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
