package flowerenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPrepareOnce: a release is prepared again only when its folder
// changed, so that a test binary starting never rewrites a copy the
// Flower processes of another are running from.
func TestPrepareOnce(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	rel := filepath.Join(t.TempDir(), "fake-release")
	if err := os.MkdirAll(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(rel, "prepare.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nmkdir -p \"$1/bin\" && touch \"$1/bin/flower-superlink\"\necho ran >> \"$1/runs\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	runs := func() int {
		t.Helper()
		f, err := prepare(rel)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(filepath.Dir(f.Bin), "runs"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "ran")
	}
	if n := runs(); n != 1 {
		t.Fatalf("prepare.sh ran %d times for the first preparation", n)
	}
	if n := runs(); n != 1 {
		t.Fatalf("prepare.sh ran %d times: again for an unchanged release", n)
	}
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(script, later, later); err != nil {
		t.Fatal(err)
	}
	if n := runs(); n != 2 {
		t.Fatalf("prepare.sh ran %d times, want 2: a changed release is prepared again", n)
	}
}
