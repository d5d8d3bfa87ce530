// Package flowerenv gives tests a real Flower (1.29.0 or 1.8.0) prepared
// from ../shared beside the checkout by its prepare.sh, once per test
// binary. Tests that need it skip, saying why, when ../shared is absent,
// except in CI (CI set), where they fail.
package flowerenv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// Flower is a prepared Flower release.
type Flower struct {
	// Bin is the folder of its commands (flower-superlink, flwr, ...):
	// put it first on PATH.
	Bin string
	// Source is its source tree in ../shared (Flower's framework/ and
	// examples/).
	Source string
	// PythonPath is the PYTHONPATH under which its Python package imports
	// (shims first), for tests that run Python against it.
	PythonPath string
	// Python is the interpreter its commands run on (Debian's, whose
	// packages prepare.sh installs).
	Python string
}

// Env returns the environment of the current process with Bin first on
// PATH and extra added.
func (f Flower) Env(extra ...string) []string {
	env := append(os.Environ(), "PATH="+f.Bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	return append(env, extra...)
}

var (
	mu       sync.Mutex
	prepared = map[string]*result{}
)

type result struct {
	f   Flower
	err error
}

// Flower129 prepares Flower 1.29.0 (once per process) and returns it.
func Flower129(t testing.TB) Flower { return get(t, "flower-1.29") }

// Flower18 prepares Flower 1.8.0 (once per process) and returns it.
func Flower18(t testing.TB) Flower { return get(t, "flower-1.8") }

func get(t testing.TB, release string) Flower {
	t.Helper()
	shared, err := sharedDir()
	if err == nil {
		_, err = os.Stat(filepath.Join(shared, release, "prepare.sh"))
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not found in CI (%v): ../shared/%s must be beside the checkout", release, err, release)
		}
		t.Skipf("%s not found (%v): it lives in ../shared/%s beside the checkout; this test runs the real Flower", release, err, release)
	}
	mu.Lock()
	defer mu.Unlock()
	r, ok := prepared[release]
	if !ok {
		r = &result{}
		r.f, r.err = prepare(filepath.Join(shared, release))
		prepared[release] = r
	}
	if r.err != nil {
		t.Fatalf("preparing %s: %v", release, r.err)
	}
	return r.f
}

// prepare runs dir/prepare.sh into a folder of the user's cache (kept
// between runs, and prepared again only when dir changed), under a lock,
// since test binaries of several packages run at once.
func prepare(dir string) (Flower, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dest := filepath.Join(cache, "sepal-test", filepath.Base(dir))
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return Flower{}, err
	}
	lock, err := os.OpenFile(dest+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return Flower{}, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Flower{}, err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	// prepare.sh replaces the copy it made before, under the feet of the
	// Flower processes of any test binary running from it: it runs only
	// when the release changed since it last ran to its end.
	sum, err := releaseSum(dir)
	if err != nil {
		return Flower{}, err
	}
	stamp := filepath.Join(dest, ".prepared")
	if b, err := os.ReadFile(stamp); err != nil || string(b) != sum {
		os.Remove(stamp)
		out, err := exec.Command("bash", filepath.Join(dir, "prepare.sh"), dest).CombinedOutput()
		if err != nil {
			return Flower{}, fmt.Errorf("%s %s: %v\n%s", filepath.Join(dir, "prepare.sh"), dest, err, out)
		}
		if err := os.WriteFile(stamp, []byte(sum), 0o644); err != nil {
			return Flower{}, err
		}
	}
	f := Flower{Bin: filepath.Join(dest, "bin"), Source: filepath.Join(dir, "source"), Python: "/usr/bin/python3"}
	if filepath.Base(dir) == "flower-1.29" {
		f.PythonPath = filepath.Join(dest, "shim") + string(os.PathListSeparator) + filepath.Join(dest, "flower", "framework", "py")
	} else {
		f.PythonPath = filepath.Join(dest, "shim") + string(os.PathListSeparator) + filepath.Join(dest, "flower", "src", "py")
	}
	return f, nil
}

// releaseSum is a digest of the names, sizes and times of the files of
// a release's folder in ../shared (its prepare.sh, source and shims).
func releaseSum(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d %d\n", path, info.Size(), info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// sharedDir finds ../shared beside the module root above the working
// directory.
func sharedDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			s := filepath.Join(filepath.Dir(d), "shared")
			if _, err := os.Stat(s); err != nil {
				return "", fmt.Errorf("no %s", s)
			}
			return s, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", wd)
		}
	}
}
