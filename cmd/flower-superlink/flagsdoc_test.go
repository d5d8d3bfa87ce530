package main

import (
	"testing"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// TestFlagsDoc: docs/flags.md shows what --help prints (go test ./cmd/...
// -run TestFlagsDoc -update rewrites it). The default of --acme-storage
// is the user's: the page shows it as ~/.local/share/sepal/acme.
func TestFlagsDoc(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "~/.local/share")
	testkit.CheckFlagsDoc(t, run, name)
}
