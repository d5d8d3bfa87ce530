package testkit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/sepal-fl/sepal/internal/cli"
)

// RunFunc is a command's run function: its arguments without the program
// name, and where it writes.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// UsageCase is a command line that must be refused as a *cli.UsageError
// whose text holds Want.
type UsageCase struct {
	Args []string
	Want string
}

// CheckCommandLine asserts the command-line manners every command shares:
// each case is refused as a usage error naming what is wrong, --version
// prints "name version" and returns cli.ErrVersion, and --help prints a
// usage holding helpWant on stdout only and returns cli.ErrHelp.
func CheckCommandLine(t *testing.T, run RunFunc, name string, cases []UsageCase, helpWant string) {
	t.Helper()
	ctx := context.Background()
	for _, c := range cases {
		var out, errOut bytes.Buffer
		err := run(ctx, c.Args, &out, &errOut)
		var ue *cli.UsageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.Want) {
			t.Errorf("%s %v: %v, want a usage error with %q", name, c.Args, err, c.Want)
		}
	}
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"--version"}, &out, &errOut); !errors.Is(err, cli.ErrVersion) || out.String() != name+" "+cli.Version+"\n" {
		t.Errorf("%s --version: %v %q", name, err, out.String())
	}
	out.Reset()
	errOut.Reset()
	if err := run(ctx, []string{"--help"}, &out, &errOut); !errors.Is(err, cli.ErrHelp) || !strings.Contains(out.String(), helpWant) || errOut.Len() != 0 {
		t.Errorf("%s --help: %v, want the usage (with %q) on stdout only\nstdout:\n%s\nstderr:\n%s", name, err, helpWant, out.String(), errOut.String())
	}
}
