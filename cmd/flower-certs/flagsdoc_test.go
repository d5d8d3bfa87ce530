package main

import (
	"context"
	"io"
	"testing"

	"github.com/sepal-fl/sepal/internal/testkit"
)

// TestFlagsDoc: docs/flags.md shows what --help prints, for the command and
// each subcommand (go test ./cmd/... -run TestFlagsDoc -update rewrites it).
func TestFlagsDoc(t *testing.T) {
	runCtx := func(_ context.Context, args []string, stdout, stderr io.Writer) error {
		return run(args, stdout, stderr)
	}
	for _, cmdline := range []string{name, name + " node", name + " serverapp", name + " revoke"} {
		testkit.CheckFlagsDoc(t, runCtx, cmdline)
	}
}
