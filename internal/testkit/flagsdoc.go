package testkit

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sepal-fl/sepal/internal/cli"
)

// FlagsDoc is the page, relative to the module root, that shows every
// command's --help; CheckFlagsDoc keeps it true.
const FlagsDoc = "docs/flags.md"

// FlagsDocUpdate is the command that rewrites FlagsDoc from the commands.
const FlagsDocUpdate = "go test ./cmd/... -run TestFlagsDoc -update"

var updateFlagsDoc = flag.Bool("update", false, "rewrite "+FlagsDoc+" from the commands' --help (TestFlagsDoc)")

// CheckFlagsDoc asserts that FlagsDoc shows, in the first fenced block
// under the heading "## "+cmdline, exactly what run prints for
// cmdline's arguments followed by --help (cmdline is the command's name,
// then any subcommand: "flower-certs node"). Run with -update, it writes
// that block instead (and the section, at the end of the page, when it
// has none); the commands' tests may update the page at once, so the
// page is rewritten under a lock file beside it.
func CheckFlagsDoc(t *testing.T, run RunFunc, cmdline string) {
	t.Helper()
	args := append(strings.Fields(cmdline)[1:], "--help")
	var out, errOut bytes.Buffer
	if err := run(context.Background(), args, &out, &errOut); !errors.Is(err, cli.ErrHelp) || errOut.Len() != 0 {
		t.Fatalf("%s --help: %v, want the usage on stdout only; stderr:\n%s", cmdline, err, errOut.String())
	}
	help := out.String()
	path := filepath.Join(moduleRoot(t), FlagsDoc)
	if *updateFlagsDoc {
		unlock := lockFile(t, path+".lock")
		defer unlock()
	}
	page, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (%s writes it)", err, FlagsDocUpdate)
	}
	before, shown, after, found := helpBlock(string(page), cmdline)
	if !*updateFlagsDoc {
		switch {
		case !found:
			t.Errorf("%s has no section %q with a fenced block: run %s", FlagsDoc, "## "+cmdline, FlagsDocUpdate)
		case shown != help:
			t.Errorf("%s --help differs from %s (run %s):\n%s", cmdline, FlagsDoc, FlagsDocUpdate, lineDiff(shown, help))
		}
		return
	}
	if found && shown == help {
		return
	}
	var updated string
	if found {
		updated = before + help + after
	} else {
		updated = strings.TrimRight(string(page), "\n") + "\n\n## " + cmdline + "\n\n```text\n" + help + "```\n"
	}
	if err := os.WriteFile(path, []byte(updated), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("updated the %q section of %s", cmdline, FlagsDoc)
}

// helpBlock splits page around the text of the first fenced block under
// the heading "## "+cmdline, before the next heading of that level.
func helpBlock(page, cmdline string) (before, block, after string, ok bool) {
	heading := "\n## " + cmdline + "\n"
	i := strings.Index(page, heading)
	if i < 0 {
		return "", "", "", false
	}
	i += len(heading)
	section := page[i:]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end+1]
	}
	open := strings.Index(section, "```")
	if open < 0 {
		return "", "", "", false
	}
	nl := strings.IndexByte(section[open:], '\n')
	if nl < 0 {
		return "", "", "", false
	}
	start := open + nl + 1
	var end int
	if strings.HasPrefix(section[start:], "```\n") {
		end = start // an empty block
	} else if end = strings.Index(section[start:], "\n```\n"); end < 0 {
		return "", "", "", false
	} else {
		end += start + 1
	}
	return page[:i+start], section[start:end], page[i+end:], true
}

// lineDiff shows the lines of page and help that differ, by number, with
// "-" for the page's and "+" for the command's.
func lineDiff(page, help string) string {
	a, b := strings.Split(page, "\n"), strings.Split(help, "\n")
	var d strings.Builder
	for i := 0; i < len(a) || i < len(b); i++ {
		var x, y string
		if i < len(a) {
			x = a[i]
		}
		if i < len(b) {
			y = b[i]
		}
		if x != y {
			fmt.Fprintf(&d, "line %d:\n- %s\n+ %s\n", i+1, x, y)
		}
	}
	return d.String()
}

// lockFile takes the lock file path (made with O_EXCL), waiting up to a
// minute for another test to let it go, and returns its release.
func lockFile(t *testing.T, path string) func() {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			return func() { os.Remove(path) }
		}
		if !errors.Is(err, os.ErrExist) || time.Now().After(deadline) {
			t.Fatalf("cannot take the lock %s: %v (remove it if no test is running)", path, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// moduleRoot is the folder of the go.mod above the test's folder.
func moduleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's folder")
		}
		dir = parent
	}
}
