// Package flowerenv gives tests a real Flower (1.29.0 or 1.8.0) prepared
// from ../shared beside the checkout by its prepare.sh, once per test
// binary. Tests that need it skip, saying why, when ../shared is absent,
// except in CI (CI set), where they fail. Prepare gives it to programs
// (the load harness).
package flowerenv

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	f, err := Prepare(release)
	var missing *MissingError
	switch {
	case errors.As(err, &missing) && os.Getenv("CI") != "":
		t.Fatalf("%s not found in CI (%v): ../shared/%s must be beside the checkout", release, missing.Err, release)
	case errors.As(err, &missing):
		t.Skipf("%s not found (%v): it lives in ../shared/%s beside the checkout; this test runs the real Flower", release, missing.Err, release)
	case err != nil:
		t.Fatal(err)
	}
	return f
}

// MissingError is Prepare's error when ../shared/RELEASE/prepare.sh is not
// beside the checkout.
type MissingError struct{ Err error }

func (e *MissingError) Error() string {
	return fmt.Sprintf("no prepare.sh in ../shared beside the checkout: %v", e.Err)
}

// Prepare prepares a release, "flower-1.29" or "flower-1.8", from
// ../shared/RELEASE/prepare.sh beside the module that holds the working
// directory, once per process, into the user's cache, and returns it. A
// *MissingError says that ../shared has no such release.
func Prepare(release string) (Flower, error) {
	shared, err := sharedDir()
	if err == nil {
		_, err = os.Stat(filepath.Join(shared, release, "prepare.sh"))
	}
	if err != nil {
		return Flower{}, &MissingError{Err: err}
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
		return Flower{}, fmt.Errorf("preparing %s: %w", release, r.err)
	}
	return r.f, nil
}

// PrepareIn runs ../shared/RELEASE/prepare.sh into dest (made when
// missing; what prepare.sh puts there is replaced) and returns that
// Flower: one that no other process prepares again while it runs, for a
// program that must not be disturbed by the tests of other checkouts.
func PrepareIn(release, dest string) (Flower, error) {
	shared, err := sharedDir()
	if err == nil {
		_, err = os.Stat(filepath.Join(shared, release, "prepare.sh"))
	}
	if err != nil {
		return Flower{}, &MissingError{Err: err}
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return Flower{}, err
	}
	return prepareInto(filepath.Join(shared, release), dest)
}

// prepare prepares dir (../shared/RELEASE) into a folder of the user's
// cache, kept between runs, under a lock, since test binaries of several
// packages run at once. A folder prepared from the same prepare.sh and
// sources (its stamp says so) is used as it is: running prepare.sh again
// would replace files under the Python processes of a test binary that
// uses it now.
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
	want, err := stamp(dir)
	if err != nil {
		return Flower{}, err
	}
	stampFile := filepath.Join(dest, ".sepal-prepared")
	if got, err := os.ReadFile(stampFile); err == nil && string(got) == want {
		if _, err := os.Stat(filepath.Join(dest, "bin", "flower-superlink")); err == nil {
			return flowerIn(dir, dest), nil
		}
	}
	os.Remove(stampFile)
	f, err := prepareInto(dir, dest)
	if err != nil {
		return Flower{}, err
	}
	return f, os.WriteFile(stampFile, []byte(want), 0o644)
}

// prepareInto runs dir/prepare.sh into dest.
func prepareInto(dir, dest string) (Flower, error) {
	out, err := exec.Command("bash", filepath.Join(dir, "prepare.sh"), dest).CombinedOutput()
	if err != nil {
		return Flower{}, fmt.Errorf("%s %s: %v\n%s", filepath.Join(dir, "prepare.sh"), dest, err, out)
	}
	return flowerIn(dir, dest), nil
}

// flowerIn is the Flower that dir/prepare.sh prepared into dest.
func flowerIn(dir, dest string) Flower {
	f := Flower{Bin: filepath.Join(dest, "bin"), Source: filepath.Join(dir, "source"), Python: "/usr/bin/python3"}
	if filepath.Base(dir) == "flower-1.29" {
		f.PythonPath = filepath.Join(dest, "shim") + string(os.PathListSeparator) + filepath.Join(dest, "flower", "framework", "py")
	} else {
		f.PythonPath = filepath.Join(dest, "shim") + string(os.PathListSeparator) + filepath.Join(dest, "flower", "src", "py")
	}
	return f
}

// stamp names what prepare.sh makes from dir: the script's SHA-256 and
// the path, size and modification time of every file under dir.
func stamp(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d %d\n", path, info.Size(), info.ModTime().UnixNano())
		if d.Name() == "prepare.sh" {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
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
