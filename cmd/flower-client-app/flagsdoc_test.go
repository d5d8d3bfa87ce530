package main

import (
	"testing"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// TestFlagsDoc: docs/flags.md shows what --help prints (go test ./cmd/...
// -run TestFlagsDoc -update rewrites it).
func TestFlagsDoc(t *testing.T) {
	testkit.CheckFlagsDoc(t, run, name)
}
