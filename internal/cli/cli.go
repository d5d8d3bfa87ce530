// Package cli holds what every Sepal command shares: flag parsing with a
// usage that opens with examples, one-line errors with the right exit code,
// the slog logger, and a context that ends on SIGINT or SIGTERM.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// Version is the version every command prints with --version. Release
// builds set it with -ldflags "-X github.com/sepal-fl/sepal/internal/cli.Version=v1.2.3".
var Version = "v0.1.0-dev"

// Exit codes shared by the commands.
const (
	ExitOK    = 0
	ExitError = 1 // the command ran and failed
	ExitUsage = 2 // bad flags or arguments
)

// Command describes a command for its usage text.
type Command struct {
	Name     string   // "flower-superlink"
	Synopsis string   // one line: what it does
	Usage    string   // "[flags] APP", after the name
	Examples []string // command lines, printed first
}

// UsageError is a mistake in the command line; Exit prints it with a pointer
// to --help and exits 2.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Msg: fmt.Sprintf(format, args...)}
}

// NewFlagSet returns a flag set whose usage opens with the command's
// examples, and which returns errors instead of exiting.
func NewFlagSet(c Command, out io.Writer) *pflag.FlagSet {
	fs := pflag.NewFlagSet(c.Name, pflag.ContinueOnError)
	fs.SetOutput(out)
	fs.SortFlags = false
	fs.Usage = func() {
		var b strings.Builder
		fmt.Fprintf(&b, "%s: %s\n\nExamples:\n", c.Name, c.Synopsis)
		for _, e := range c.Examples {
			fmt.Fprintf(&b, "  %s\n", e)
		}
		fmt.Fprintf(&b, "\nUsage:\n  %s %s\n\nFlags:\n%s", c.Name, c.Usage, fs.FlagUsages())
		fmt.Fprint(out, b.String())
	}
	return fs
}

// ErrHelp is returned by Parse when the user asked for --help; the usage has
// been printed and the command should exit 0.
var ErrHelp = pflag.ErrHelp

// Parse parses args (without the program name). A flag error comes back as a
// *UsageError naming the flag; --help prints the usage and returns ErrHelp.
func Parse(fs *pflag.FlagSet, args []string) error {
	// pflag prints the usage on every error; we print one line instead.
	usage := fs.Usage
	fs.Usage = func() {}
	defer func() { fs.Usage = usage }()
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, pflag.ErrHelp) {
		usage()
		return ErrHelp
	}
	if err != nil {
		return &UsageError{Msg: err.Error()}
	}
	return nil
}

// Exit ends the command: nil exits 0, ErrHelp exits 0, a *UsageError prints
// "name: msg (see name --help)" and exits 2, any other error prints
// "name: msg" and exits 1.
func Exit(name string, err error) {
	os.Exit(report(os.Stderr, name, err))
}

func report(w io.Writer, name string, err error) int {
	var ue *UsageError
	switch {
	case err == nil, errors.Is(err, ErrHelp):
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(w, "%s: %s (see %s --help)\n", name, ue.Msg, name)
		return ExitUsage
	default:
		fmt.Fprintf(w, "%s: %s\n", name, err)
		return ExitError
	}
}

// NewLogger returns the text slog logger every command logs with. Keys are
// snake_case; keys and key material never go through it.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// SignalContext returns a context that ends on SIGINT or SIGTERM. A second
// signal is left to the default handler, so it ends the process at once.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		cancel() // restores default handling for the next signal
	}()
	return ctx, cancel
}
