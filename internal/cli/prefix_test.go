package cli

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// notMessages are string literals that start like a package-prefixed
// message but are not Sepal's messages, by file (relative to the module
// root, slash-separated) and literal, with the reason.
var notMessages = map[[2]string]string{
	{"transport/errors.go", "transport: "}: `grpc-go's own prefix (its internal "transport" package), stripped from the errors it returns`,
}

// TestNoPackagePrefixes fails when a message starts with the name of one
// of the module's Go packages, such as "selfsigned: ..." or "acme storage:
// ...": a user reads such messages as a command's exit line (cli.Exit puts
// the command's name in front), a log line, a gRPC status a peer receives
// or the status page, and a Go package name says nothing to them. It reads
// every string literal of every non-test, non-generated .go file of the
// module, whatever it is used for, so a prefix cannot come back through a
// log call, a status, a sentinel or a prefix built with +. The package
// names are those the files declare, so a new package is covered at once.
func TestNoPackagePrefixes(t *testing.T) {
	m := readModule(t)
	lits, names := m.lits, m.names
	// Enough of the module was read for the check to mean something.
	for _, want := range []string{"superlink", "selfsigned", "transport", "acme", "app", "cli"} {
		if !names[want] {
			t.Fatalf("package %s not found: the walk missed the module", want)
		}
	}
	list := slices.Sorted(func(yield func(string) bool) {
		for n := range names {
			if !yield(n) {
				return
			}
		}
	})
	prefix := prefixPattern(list)
	used := map[[2]string]bool{}
	for _, l := range lits {
		if !prefix.MatchString(l.text) {
			continue
		}
		key := [2]string{l.file, l.text}
		if _, ok := notMessages[key]; ok {
			used[key] = true
			continue
		}
		t.Errorf("%s: %q starts with a Go package name: say what happened instead (the command's name is added by cli.Exit; callers add context by wrapping)", l.pos, l.text)
	}
	for key, why := range notMessages {
		if !used[key] {
			t.Errorf("notMessages lists %q in %s (%s), which is no longer there: drop it", key[1], key[0], why)
		}
	}
}

// goLit is a string literal of a non-test Go file of the module.
type goLit struct {
	file, text string // file relative to the module root, slash-separated
	pos        token.Position
}

// module is what readModule read: the string literals of every non-test,
// non-generated .go file; the names its packages declare (but main); and
// for each package (its folder, relative and slash-separated) whether it
// is a command (package main) and the module's packages its non-test files
// import (as folders).
type module struct {
	lits    []goLit
	names   map[string]bool
	main    map[string]bool
	imports map[string]map[string]bool
}

// readModule reads the module the test runs in.
func readModule(t *testing.T) *module {
	t.Helper()
	root := moduleRoot(t)
	modPath := modulePath(t, root)
	m := &module{names: map[string]bool{}, main: map[string]bool{}, imports: map[string]map[string]bool{}}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "vendor" || d.Name() == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		if ast.IsGenerated(f) {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		dir := filepath.ToSlash(filepath.Dir(rel))
		if f.Name.Name == "main" {
			m.main[dir] = true
		} else {
			m.names[f.Name.Name] = true
		}
		if m.imports[dir] == nil {
			m.imports[dir] = map[string]bool{}
		}
		for _, imp := range f.Imports {
			if p, err := strconv.Unquote(imp.Path.Value); err == nil && strings.HasPrefix(p, modPath+"/") {
				m.imports[dir][strings.TrimPrefix(p, modPath+"/")] = true
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if b, ok := n.(*ast.BasicLit); ok && b.Kind == token.STRING {
				if s, err := strconv.Unquote(b.Value); err == nil {
					m.lits = append(m.lits, goLit{rel, s, fset.Position(b.Pos())})
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// modulePath is the module path that root's go.mod declares.
func modulePath(t *testing.T, root string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(l), "module "); ok {
			return strings.TrimSpace(p)
		}
	}
	t.Fatal("go.mod declares no module")
	return ""
}

// prefixPattern matches a text that starts with one of the package names
// and a colon: "pkg: ...", "pkg word: ..." ("acme storage: ..."), or the
// bare prefix "pkg: " that a message is built on.
func prefixPattern(names []string) *regexp.Regexp {
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = regexp.QuoteMeta(n)
	}
	return regexp.MustCompile(`^(` + strings.Join(quoted, "|") + `)( [A-Za-z]+)?: `)
}

// TestPrefixPattern: the check above catches what it is meant to and lets
// ordinary messages through.
func TestPrefixPattern(t *testing.T) {
	prefix := prefixPattern([]string{"acme", "selfsigned", "state"})
	for s, want := range map[string]bool{
		"selfsigned: writing %s: %w":           true,
		"acme: ":                               true,
		"acme storage: key %q: %w":             true,
		"state database %s: the disk is full":  false,
		"ACME storage key %q: %w":              false,
		"writing %s: %w":                       false,
		"no certificate for %s from %s":        false,
		"PushTaskIns: task_ins_list[%d]: %v":   false,
		"acmex: not a package of this module":  false,
		"statement: not a package either, too": false,
	} {
		if got := prefix.MatchString(s); got != want {
			t.Errorf("%q: flagged %v, want %v", s, got, want)
		}
	}
}

// moduleRoot is the folder of the go.mod above the test's folder.
func moduleRoot(t *testing.T) string {
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
