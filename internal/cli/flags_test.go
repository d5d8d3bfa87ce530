package cli

import (
	"regexp"
	"slices"
	"strings"
	"testing"
)

// flagsKept are the flags that library packages may still name, by folder
// (the files under it, its internal packages too) and flag, with the
// reason. Each is owed a fix: drop it with the last literal that names it.
var flagsKept = map[[2]string]string{}

// flagPattern matches a command-line flag in a text: two dashes and a
// lower-case word, at the start or after a space, a bracket or a quote
// (not "a--b", not the "-----BEGIN" of PEM).
var flagPattern = regexp.MustCompile(`(^|[\s("'=])--[a-z][a-z0-9]*(-[a-z0-9]+)*`)

// TestNoFlagsInLibraryMessages fails when a library package names a
// command-line flag in a string literal: a Go program that imports it
// (transport, app, certfile, ...) has no flags, and is told to pass one it
// does not have. The library says which field, file or fact is at fault;
// the commands' message layer (cmd/, and the internal packages only
// commands import, such as clientflags) turns that into the flag and the
// command that fixes it. A package is a command's when it is package main,
// or an internal package whose importers are all commands' (so that
// superlink/internal/... is a library's, internal/clientflags a command's);
// test helpers (statetest, pgtest, testkit) count as commands', since no
// program ships them.
func TestNoFlagsInLibraryMessages(t *testing.T) {
	m := readModule(t)
	commands := commandPackages(m)
	for _, want := range []string{"transport", "app", "certfile", "selfsigned"} {
		if _, ok := m.imports[want]; !ok || commands[want] {
			t.Fatalf("library package %s not found, or counted as a command's: the walk missed the module", want)
		}
	}
	for _, want := range []string{"cmd/flower-superlink", "internal/clientflags", "internal/cli"} {
		if !commands[want] {
			t.Fatalf("%s is not counted as a command's package", want)
		}
	}
	used := map[[2]string]bool{}
	for _, l := range m.lits {
		dir := dirOf(l.file)
		if commands[dir] {
			continue
		}
	flags:
		for _, f := range flagPattern.FindAllString(l.text, -1) {
			flag := strings.TrimLeft(f, " \t\n(\"'=")
			for key := range flagsKept {
				if key[1] == flag && (dir == key[0] || strings.HasPrefix(dir, key[0]+"/")) {
					used[key] = true
					continue flags
				}
			}
			t.Errorf("%s: %q names the command-line flag %q in library package %s: name the field, file or fact instead, and let the command that has the flag word it (cmd/, internal/clientflags)",
				l.pos, l.text, flag, dir)
		}
	}
	for key, why := range flagsKept {
		if !used[key] {
			t.Errorf("flagsKept lists %s in %s/ (%s), which no longer names it: drop it", key[1], key[0], why)
		}
	}
}

// commandPackages returns the packages (folders) of m that only commands
// use: package main, test helpers (a folder named *test or testkit), and
// internal packages every non-test importer of which is one of them (an
// internal package that only tests import counts too).
func commandPackages(m *module) map[string]bool {
	cmd := map[string]bool{}
	for dir := range m.imports {
		base := dir[strings.LastIndex(dir, "/")+1:]
		if m.main[dir] || strings.HasSuffix(base, "test") || base == "testkit" {
			cmd[dir] = true
		}
	}
	for changed := true; changed; {
		changed = false
		for dir := range m.imports {
			if cmd[dir] || !isInternal(dir) {
				continue
			}
			all := true
			for from, imps := range m.imports {
				if imps[dir] {
					all = all && cmd[from]
				}
			}
			if all {
				cmd[dir] = true
				changed = true
			}
		}
	}
	return cmd
}

func isInternal(dir string) bool {
	return dir == "internal" || strings.HasPrefix(dir, "internal/") || strings.Contains(dir, "/internal/") || strings.HasSuffix(dir, "/internal")
}

func dirOf(file string) string {
	if i := strings.LastIndex(file, "/"); i >= 0 {
		return file[:i]
	}
	return "."
}

// TestFlagPattern: the check above catches flags and lets other dashes
// through.
func TestFlagPattern(t *testing.T) {
	for s, want := range map[string]string{
		"pass --root-certificates with the CA":        "--root-certificates",
		"--insecure and --root-certificates conflict": "--insecure",
		`run "flower-certs --force"`:                  "--force",
		"(--max-inflight-bytes) is full":              "--max-inflight-bytes",
		"-----BEGIN CERTIFICATE-----":                 "",
		"openssl x509 -inform der -in ca.der":         "",
		"a--b and x --":                               "",
		"set ClientOptions.Insecure":                  "",
	} {
		got := strings.TrimLeft(flagPattern.FindString(s), " \t\n(\"'=")
		if got != want {
			t.Errorf("%q: found %q, want %q", s, got, want)
		}
	}
	if !slices.Contains([]string{"internal/cli"}, dirOf("internal/cli/cli.go")) || dirOf("go.go") != "." {
		t.Error("dirOf")
	}
}
